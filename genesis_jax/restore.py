"""`python -m genesis_jax.restore`: check a pre-trained model before fine-tuning with it.

    python -m genesis_jax.restore --init=RUN_DIR|MODEL.pt --out=DIR [--input=VOLUME] [--cubes=8]

Samples cubes from a volume (default: the bundled chest CT sample), corrupts them with
each Genesis deformation alone and with the whole pipeline, restores them with the
model, and writes, per deformation, a labelled PNG grid (corrupted / restored /
original) and one table of restoration MSE next to the identity baseline (the MSE of
the corrupted input itself): a model that learned something restores below the
baseline. --init takes a genesis-jax run directory (its best checkpoint, with the
run's cube shape and CT/MR window) or a PyTorch checkpoint of the official UNet3D
(64x64x32 cubes). Bad input: one line and exit status 1; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DEFORMATIONS = ("local_pixel_shuffle", "nonlinear_intensity", "inpaint", "outpaint", "pipeline")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m genesis_jax.restore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="a genesis-jax run directory or an official-layout .pt")
    parser.add_argument("--out", required=True, type=Path, help="folder for the PNGs and restore.json / restore.md")
    parser.add_argument("--input", help="a CT/MR volume (NIfTI, MHD/MHA, DICOM series folder); "
                                        "default: the bundled chest CT sample")
    parser.add_argument("--cubes", type=int, default=8, help="cubes sampled from the volume (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling and the corruptions")
    parser.add_argument("--modality", choices=("ct", "mr"), help="default: the run's, else ct")
    parser.add_argument("--filter", choices=("foreground", "lung", "none"), default="foreground",
                        help="which crops to keep: 'foreground' (mostly body), 'lung' (chest CT), 'none'")
    return parser.parse_args(argv)


def load_model(init: str):
    """(model in eval mode, cube shape, modality, a one-line description)."""
    from genesis_jax.rundir import load_source
    model, described, cfg = load_source(init)
    model.eval()
    if cfg is None:  # an official .pt: the paper's cubes and CT window
        return model, (64, 64, 32), "ct", described
    return model, tuple(int(d) for d in cfg.data.cube_shape), cfg.data.modality, described


def sample(volume_path, shape, modality, filter_name, n, seed):
    from genesis_jax.data import SamplerConfig, read_volume, sample_cubes, to_unit_range
    from genesis_jax.errors import UserError
    volume = to_unit_range(read_volume(volume_path).array, modality)[0]
    cfg = SamplerConfig(crop=shape, filter=filter_name, cubes_per_volume=n)
    try:
        cubes, tries = sample_cubes(volume, cfg, np.random.default_rng(seed))
    except ValueError as e:
        raise UserError(f"{volume_path}: {e}") from None
    if len(cubes) < n:
        raise UserError(f"{volume_path}: the {filter_name} filter kept {len(cubes)} of {tries} crops of {shape}, "
                        f"{n} wanted (try --filter none or fewer --cubes)")
    return cubes


def corrupt(name: str, key, cubes):
    """(corrupted, target) float32 (N, X, Y, Z): one deformation on every cube, or the
    pipeline (whose flips move the target too)."""
    import jax

    from genesis_jax.deform import DeformConfig, genesis_batch, inpaint, local_pixel_shuffle, nonlinear_intensity, outpaint
    if name == "pipeline":
        return genesis_batch(key, cubes, DeformConfig())
    stage = {"local_pixel_shuffle": local_pixel_shuffle, "nonlinear_intensity": nonlinear_intensity,
             "inpaint": inpaint, "outpaint": outpaint}[name]
    keys = jax.random.split(key, cubes.shape[0])
    return jax.jit(jax.vmap(stage))(keys, cubes), cubes


def restoration_table(model, cubes, seed: int):
    """{deformation: (mse of the restoration, mse of the corrupted input, arrays)}."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from genesis_jax.tasks import restoration_mse
    graphdef, state = nnx.split(model)
    restore = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x[..., None])[..., 0])
    cubes = jnp.asarray(cubes)
    rows = {}
    for i, name in enumerate(DEFORMATIONS):
        corrupted, target = corrupt(name, jax.random.key(seed * 1000 + i), cubes)
        restored = restore(state, corrupted)
        rows[name] = (float(restoration_mse(restored, target)), float(restoration_mse(corrupted, target)),
                      tuple(np.asarray(a) for a in (corrupted, restored, target)))
    return rows


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from genesis_jax.errors import UserError
    try:
        if args.cubes < 1:
            raise UserError(f"--cubes must be >= 1, got {args.cubes}")
        model, shape, modality, described = load_model(args.init)
        from genesis_jax.data import sample_path
        volume = args.input or sample_path()
        print(f"model: {described}\nvolume: {volume}\ncubes: {args.cubes} of {shape}, {args.filter} filter")
        cubes = sample(volume, shape, args.modality or modality, args.filter, args.cubes, args.seed)
        rows = restoration_table(model, cubes, args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_report(args.out, rows, described, volume)
    return 0


def write_report(out: Path, rows: dict, described: str, volume) -> None:
    from genesis_jax.metrics import labelled_grid, save_png
    lines = ["| deformation | restored MSE | corrupted MSE (identity baseline) | restored / baseline |",
             "|---|---:|---:|---:|"]
    for name, (restored, baseline, arrays) in rows.items():
        ratio = f"{restored / baseline:.2f}" if baseline > 1e-9 else "- (left the cubes unchanged)"
        lines.append(f"| {name} | {restored:.5f} | {baseline:.5f} | {ratio} |")
        corrupted, restored_cubes, target = arrays
        grid = labelled_grid({"corrupted": corrupted, "restored": restored_cubes, "original": target},
                             title=f"{name}: restored MSE {restored:.5f}, corrupted {baseline:.5f}",
                             row_labels=[f"cube {i}" for i in range(len(target))])
        save_png(grid, out / f"restore_{name}.png")
    table = "\n".join(lines)
    print("\n" + table)
    (out / "restore.md").write_text(f"model: {described}\nvolume: {volume}\n\n{table}\n")
    (out / "restore.json").write_text(json.dumps({
        "model": described, "volume": str(volume),
        "deformations": {name: {"restored_mse": r, "corrupted_mse": b} for name, (r, b, _) in rows.items()}},
        indent=2))
    print(f"\nwritten: {out}/restore.md, restore.json, restore_<deformation>.png")


if __name__ == "__main__":
    sys.exit(main())
