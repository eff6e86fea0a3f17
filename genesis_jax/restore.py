"""`python -m genesis_jax.restore`: check a pre-trained model before fine-tuning with it.

    python -m genesis_jax.restore --init=RUN_DIR|MODEL.pt --out=DIR [--input=VOLUME] [--cubes=8]

Samples cubes from a volume (default: the bundled chest CT sample), corrupts them with
each Genesis deformation alone and with the whole pipeline, restores them with the
model, and writes, per deformation, a labelled PNG grid (corrupted / restored /
original) and one table: the restoration's MSE next to two baselines, the corrupted
input itself (identity: doing nothing) and each original cube's own mean (the best any
constant output can do), and the restoration's correlation with the original (the mean
over cubes of the voxel-wise Pearson r; 0 for a constant output). A model that learned
something restores below both baselines and correlates well; one line says so when it
does not ("this model is close to a constant: ...", "this model does not restore:
..."). --init takes a genesis-jax pre-training run directory (its best checkpoint,
with the run's cube shape and CT/MR window) or a PyTorch checkpoint of the official
UNet3D (64x64x32 cubes). A run whose deformations differ from the paper's (its
config's deform fields, e.g. the demo's, which leaves out the intensity map) gets one more
row, run_pipeline: the pipeline it was trained on. Bad input: one line and exit status 1;
nothing is written. Eight cubes make the pictures readable, not the figures precise: for
a figure to compare runs by, score 64 (`python -m benchmarks.demo_learning` does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DEFORMATIONS = ("local_pixel_shuffle", "nonlinear_intensity", "inpaint", "outpaint", "pipeline")
RUN_PIPELINE = "run_pipeline"  # the row of a run trained with other deformations than the paper's


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
    """(model in eval mode, cube shape, modality, a one-line description, the run's
    deformations when they differ from the paper's, else None)."""
    from genesis_jax.errors import UserError
    from genesis_jax.rundir import load_source, read_run_config
    if Path(init).is_dir() and (task := read_run_config(init).task) != "pretrain":
        raise UserError(f"{init} is a {task} fine-tuning run; restore checks what pre-training learned: pass a "
                        f"pre-training run directory or an official-layout .pt")
    model, described, cfg = load_source(init)
    if model.in_channels != 1:
        raise UserError(f"{init}: restore scores one-channel models on one volume (this one takes "
                        f"{model.in_channels} channels); a multi-channel run shows its restorations in the pictures "
                        f"of its run directory (images/) and its validation loss")
    if getattr(model, "dims", 3) != 3:
        raise UserError(f"{init}: a 2D model ({type(model).__name__}); restore scores 3D models on cubes of a "
                        f"volume. A Models Genesis 2D run shows its restorations in the pictures of its run "
                        f"directory (images/) and its validation loss")
    model.eval()
    if cfg is None:  # an official .pt: the paper's cubes, CT window and deformations
        return model, (64, 64, 32), "ct", described, None
    return model, tuple(int(d) for d in cfg.data.cube_shape), cfg.data.modality, described, own_deformations(cfg)


def own_deformations(cfg):
    """The run's DeformConfig if it corrupts otherwise than the paper's defaults (how it
    computes aside: deform.config.HOW_COMPUTED), else None."""
    import dataclasses

    from genesis_jax.deform import DeformConfig
    from genesis_jax.deform.config import HOW_COMPUTED
    deform = DeformConfig(**cfg.deform)
    paper = dataclasses.replace(DeformConfig(), **{name: getattr(deform, name) for name in HOW_COMPUTED})
    return None if deform == paper else deform


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


def corrupt(name: str, key, cubes, run_deform=None):
    """(corrupted, target) float32 (N, X, Y, Z): one deformation on every cube, or the
    pipeline (whose flips move the target too): the paper's, or run_deform for RUN_PIPELINE."""
    import jax

    from genesis_jax.deform import DeformConfig, genesis_batch, inpaint, local_pixel_shuffle, nonlinear_intensity, outpaint
    if name in ("pipeline", RUN_PIPELINE):
        return genesis_batch(key, cubes, run_deform if name == RUN_PIPELINE else DeformConfig())
    stage = {"local_pixel_shuffle": local_pixel_shuffle, "nonlinear_intensity": nonlinear_intensity,
             "inpaint": inpaint, "outpaint": outpaint}[name]
    keys = jax.random.split(key, cubes.shape[0])
    return jax.jit(jax.vmap(stage))(keys, cubes), cubes


# A restoration "beats" a baseline when its MSE is below this share of the baseline's.
BEATS = 0.95


def correlation(restored: np.ndarray, target: np.ndarray) -> float:
    """Mean over cubes of the voxel-wise Pearson r (a cube with a constant restoration or
    target counts 0: a constant follows no structure)."""
    values = []
    for r, t in zip(restored.reshape(len(restored), -1), target.reshape(len(target), -1)):
        r, t = r - r.mean(), t - t.mean()
        norm = np.sqrt(np.sum(r * r) * np.sum(t * t))
        values.append(float(np.sum(r * t) / norm) if norm > 1e-12 else 0.0)
    return float(np.mean(values))


def restoration_table(model, cubes, seed: int, run_deform=None):
    """{deformation: {restored_mse, identity_mse (the corrupted input's), mean_mse (each
    original cube's own mean), correlation, arrays (corrupted, restored, original)}}; with
    run_deform (a DeformConfig) also the RUN_PIPELINE row, the pipeline with those settings."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from genesis_jax.tasks import restoration_mse
    graphdef, state = nnx.split(model)
    restore = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x[..., None])[..., 0])
    cubes = jnp.asarray(cubes)
    rows = {}
    names = DEFORMATIONS + ((RUN_PIPELINE,) if run_deform is not None else ())
    for i, name in enumerate(names):
        key = jax.random.key(seed * 1000 + i)
        corrupted, target = (np.asarray(a, np.float32) for a in corrupt(name, key, cubes, run_deform))
        restored = np.asarray(restore(state, corrupted), np.float32)
        cube_means = np.broadcast_to(target.mean(axis=(1, 2, 3), keepdims=True), target.shape)
        rows[name] = {"restored_mse": float(restoration_mse(restored, target)),
                      "identity_mse": float(restoration_mse(corrupted, target)),
                      "mean_mse": float(restoration_mse(cube_means, target)),
                      "correlation": correlation(restored, target), "arrays": (corrupted, restored, target)}
    return rows


def changed(row: dict) -> bool:
    """Whether the deformation changed the cubes at all (a row with nothing to restore is not judged)."""
    return row["identity_mse"] > 1e-9


def no_better(row: dict, baseline: str) -> bool:
    """Whether the restoration fails to beat the baseline ("identity_mse" or "mean_mse")."""
    return row["restored_mse"] >= BEATS * row[baseline]


def verdict(row: dict) -> str:
    """One row's word: does the restoration beat doing nothing, and a constant?"""
    if not changed(row):
        return "unchanged input"
    worse = [name for name, key in (("its input", "identity_mse"), ("a constant", "mean_mse")) if no_better(row, key)]
    return "restores" if not worse else "no better than " + " or ".join(worse)


# Below this mean correlation with the originals a model's output carries next to no
# structure (a constant's is 0; the demo's collapsed model of issue 21 had 0.13).
CONSTANT_CORRELATION = 0.3


def summary_lines(rows: dict) -> list[str]:
    """The lines that warn about a model that does not restore (none for one that does)."""
    judged = {name: row for name, row in rows.items() if changed(row)}
    constant = [n for n, r in judged.items() if no_better(r, "mean_mse")]
    idle = [n for n, r in judged.items() if no_better(r, "identity_mse")]
    mean_r = float(np.mean([r["correlation"] for r in judged.values()])) if judged else 0.0
    of = f"of {len(judged)} deformations"
    lines = []
    if mean_r < CONSTANT_CORRELATION:
        lines.append(f"this model is close to a constant: its restorations correlate {mean_r:.2f} with the originals "
                     f"on average (a constant: 0), and on {len(constant)} {of} they are no better than each cube's "
                     f"own mean ({', '.join(constant) or 'none'})")
    elif 2 * len(constant) >= len(judged):
        lines.append(f"this model restores no better than a constant on {len(constant)} {of}: each cube's own mean "
                     f"scores as well ({', '.join(constant)})")
    if idle:
        lines.append(f"this model does not restore: on {len(idle)} {of} its output is no closer to the original than "
                     f"the corrupted input ({', '.join(idle)})")
    return lines


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from genesis_jax.errors import UserError
    try:
        if args.cubes < 1:
            raise UserError(f"--cubes must be >= 1, got {args.cubes}")
        model, shape, modality, described, run_deform = load_model(args.init)
        from genesis_jax.data import sample_path
        volume = args.input or sample_path()
        print(f"model: {described}\nvolume: {volume}\ncubes: {args.cubes} of {shape}, {args.filter} filter")
        cubes = sample(volume, shape, args.modality or modality, args.filter, args.cubes, args.seed)
        rows = restoration_table(model, cubes, args.seed, run_deform)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_report(args.out, rows, described, volume)
    return 0


def table_lines(rows: dict) -> list[str]:
    """The report's Markdown table, one row per deformation (rows with or without their arrays)."""
    lines = ["| deformation | restored MSE | identity baseline (corrupted) | mean baseline (each cube's mean) | "
             "restored / identity | restored / mean | correlation | verdict |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, row in rows.items():
        ratio = f"{row['restored_mse'] / row['identity_mse']:.2f}" if changed(row) else "-"
        lines.append(f"| {name} | {row['restored_mse']:.5f} | {row['identity_mse']:.5f} | {row['mean_mse']:.5f} | "
                     f"{ratio} | {row['restored_mse'] / max(row['mean_mse'], 1e-12):.2f} | {row['correlation']:.2f} | "
                     f"{verdict(row)} |")
    return lines


def report_rows(rows: dict) -> dict:
    """restore.json's rows: each row's figures without its arrays, with its verdict."""
    return {name: {**{k: v for k, v in row.items() if k != "arrays"}, "verdict": verdict(row)}
            for name, row in rows.items()}


def write_report(out: Path, rows: dict, described: str, volume) -> None:
    from genesis_jax.metrics import labelled_grid, save_png
    lines = table_lines(rows)
    for name, row in rows.items():
        corrupted, restored_cubes, target = row["arrays"]
        grid = labelled_grid({"corrupted": corrupted, "restored": restored_cubes, "original": target},
                             title=f"{name}: restored MSE {row['restored_mse']:.5f}, corrupted "
                                   f"{row['identity_mse']:.5f}, cube means {row['mean_mse']:.5f}",
                             row_labels=[f"cube {i}" for i in range(len(target))])
        save_png(grid, out / f"restore_{name}.png")
    warnings = summary_lines(rows)
    report = "\n".join(lines) + "".join(f"\n\n{line}" for line in warnings)
    print("\n" + report)
    (out / "restore.md").write_text(f"model: {described}\nvolume: {volume}\n\n{report}\n")
    (out / "restore.json").write_text(json.dumps({
        "model": described, "volume": str(volume), "warnings": warnings,
        "deformations": report_rows(rows)}, indent=2))
    print(f"\nwritten: {out}/restore.md, restore.json, restore_<deformation>.png")


if __name__ == "__main__":
    sys.exit(main())
