"""The transfer experiment: does Genesis pre-training help a real segmentation task?

    python -m benchmarks.transfer [--out runs/transfer] [--seeds 0,1,2] [--steps 200]
                                  [--json P] [--markdown P]

The task: the aorta in ../shared/data/chest_ct_cropped.nii.gz (120 x 126 x 164 voxels,
1.5 mm) with its mask chest_ct_cropped_aorta.nii.gz. The volume is cut along z (file
slice index, 0 = inferior) into
    test   z   0 ..  59   (60 slices, 90 mm: the descending aorta)
    gap    z  60 ..  75   (16 slices, 24 mm, never read)
    val    z  76 ..  99   (24 slices: model selection and early stopping only)
    train  z 100 .. 163   (64 slices, 96 mm: arch, ascending and descending aorta, heart)
so no test voxel is seen in fine-tuning, and the gap keeps validation patches (16 slices
deep) away from the test slab. Training takes the upper part because it holds every
kind of aorta section and the bright look-alikes (contrast-filled heart chambers and
pulmonary arteries); a model trained on the lower part alone has never seen them and
marks them all as aorta (first try, 1 seed: test Dice 0.07, 6x more voxels predicted
than true).

Pre-training: `python -m genesis_jax.train` on ../shared/data/chest_ct.nii.gz, the whole
scan of the same patient (the cropped volume is a crop of it, so pre-training has seen
the test region's image, never its labels: what the paper's setting allows, a target
task's unlabelled images in the pre-training data). Width 8, 32x32x16 cubes (CPU-sized;
the paper's model is width 32 on 64x64x32), the paper's SGD lr 1.0 with StepLR and its four
deformations (the flags name them: the demo config trains otherwise). Fine-tuning: the same width and patch shape,
Adam 1e-3 with the plateau schedule, Dice + BCE, `--steps` steps of batch 8, from scratch
and from the pre-trained run, at each seed; then `python -m genesis_jax.predict` on the
test slab (best checkpoint by validation loss, overlap 0.5, Gaussian blending) gives the
test Dice. Every stage is a CLI run, printed before it runs; finished stages are reused
(a run directory that reached its last step resumes as done). --pretrained=RUN skips the
pre-training stage and fine-tunes from that run instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.common import ROOT, run_cli

DATA = ROOT / ".." / "shared" / "data"  # spelled as the pre-training command was (the path is in its identity)
SPLITS = {"test": (0, 60), "val": (76, 100), "train": (100, 164)}
WIDTH, CUBE = 8, "(32, 32, 16)"


def split_volumes(out: Path) -> dict:
    """Write the image and mask slabs of each split as NIfTI (affine kept, so each slab
    sits where it was); {split: (image path, mask path)}."""
    import nibabel as nib
    image, mask = nib.load(DATA / "chest_ct_cropped.nii.gz"), nib.load(DATA / "chest_ct_cropped_aorta.nii.gz")
    paths = {}
    for split, (lo, hi) in SPLITS.items():
        pair = (out / f"{split}_ct.nii.gz", out / f"{split}_aorta.nii.gz")
        for source, path in zip((image, mask), pair):
            if not path.exists():
                nib.save(source.slicer[:, :, lo:hi], str(path))
        paths[split] = pair
    return paths


def pretrain(out: Path, steps: int) -> tuple[Path, float]:
    workdir = out / "pretrain"
    seconds, _ = run_cli(["-m", "genesis_jax.train", "--config=demo", f"--workdir={workdir}",
                          f"--config.model.width={WIDTH}", f"--config.total_steps={steps}", "--config.steps_per_epoch=50",
                          "--config.eval_every=100", "--config.checkpoint_every=100", "--config.schedule.step_epochs=5",
                          "--config.data.val_cubes=32", "--config.data.source=volumes",
                          "--config.optimizer.name=sgd", "--config.optimizer.learning_rate=1.0",
                          "--config.schedule.kind=step", "--config.deform.nonlinear_rate=0.9",
                          f"--config.data.volumes={DATA / 'chest_ct.nii.gz'}", "--config.data.filter=lung"])
    return workdir, seconds


def finetune(out: Path, paths: dict, init: str, seed: int, steps: int) -> tuple[Path, float]:
    name = "scratch" if init == "scratch" else "genesis"
    workdir = out / f"{name}_seed{seed}"
    seconds, _ = run_cli(["-m", "genesis_jax.finetune", "--config=segmentation", f"--workdir={workdir}",
                          f"--config.init={init}", f"--config.seed={seed}", f"--config.model.width={WIDTH}",
                          f"--config.data.patch_shape={CUBE}", "--config.batch_size=8", f"--config.total_steps={steps}",
                          "--config.steps_per_epoch=25", "--config.eval_every=25", "--config.checkpoint_every=50",
                          "--config.data.val_patches=16", "--config.log_every=5",
                          f"--config.data.train_images={paths['train'][0]}", f"--config.data.train_labels={paths['train'][1]}",
                          f"--config.data.val_images={paths['val'][0]}", f"--config.data.val_labels={paths['val'][1]}"])
    return workdir, seconds


def test_dice(workdir: Path, paths: dict) -> float:
    _, stdout = run_cli(["-m", "genesis_jax.predict", f"--workdir={workdir}", f"--input={paths['test'][0]}",
                         f"--out={workdir / 'test_prediction.nii.gz'}", f"--labels={paths['test'][1]}"])
    scores = json.loads(stdout.strip().splitlines()[-1])  # {"dice": {"1.0": ...}, "iou": ...}: one class
    return float(next(iter(scores["dice"].values())))


def summarize(rows: list[dict]) -> dict:
    out = {}
    for init in ("scratch", "genesis"):
        dice = [r["test_dice"] for r in rows if r["init"] == init]
        out[init] = {"mean": statistics.mean(dice), "stdev": statistics.stdev(dice) if len(dice) > 1 else 0.0,
                     "min": min(dice), "max": max(dice), "n": len(dice)}
    return out


def experiment_arguments(parser) -> None:
    """The options every experiment on the aorta split takes."""
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps per run")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)


def prepared_splits(out: Path) -> dict:
    """The split volumes under out (written once); exit with one line without the shared data."""
    for name in ("chest_ct.nii.gz", "chest_ct_cropped.nii.gz", "chest_ct_cropped_aorta.nii.gz"):
        if not (DATA / name).is_file():
            sys.exit(f"error: {DATA / name} not found: the experiment needs the project's shared data")
    out.mkdir(parents=True, exist_ok=True)
    return split_volumes(out)


def seeded_runs(args, pretrained, finetune_run, **fields) -> list[dict]:
    """From scratch and from `pretrained` at each seed: finetune_run(init, seed) -> (run
    directory, seconds), then the test Dice; one row each (with `fields`), printed as it ends."""
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for init in ("scratch", str(pretrained)):
            workdir, seconds = finetune_run(init, seed)
            rows.append({**fields, "init": "scratch" if init == "scratch" else "genesis", "seed": seed,
                         "seconds": seconds, "test_dice": test_dice(workdir, args.paths), "workdir": str(workdir)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def report(result: dict, table: str, args) -> dict:
    """Print the table; write the JSON and the table where asked."""
    print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(table)
    return result


def markdown(result: dict) -> str:
    lines = ["| init | seed | test Dice (aorta) | fine-tune wall time |", "|---|---:|---:|---:|"]
    lines += [f"| {r['init']} | {r['seed']} | {r['test_dice']:.4f} | {r['seconds'] / 60:.1f} min |"
              for r in result["runs"]]
    lines += ["", "| init | test Dice mean | stdev | min .. max | runs |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {init} | {s['mean']:.4f} | {s['stdev']:.4f} | {s['min']:.4f} .. {s['max']:.4f} | {s['n']} |"
              for init, s in result["summary"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/transfer"))
    parser.add_argument("--pretrained", type=Path, help="an existing pre-training run (width 8) to fine-tune from "
                        "instead of running the pre-training stage")
    experiment_arguments(parser)
    args = parser.parse_args(argv)
    args.paths = prepared_splits(args.out)
    if args.pretrained:
        pretrained, pretrain_seconds = args.pretrained, None
    else:
        pretrained, pretrain_seconds = pretrain(args.out, args.pretrain_steps)
    rows = seeded_runs(args, pretrained, lambda init, seed: finetune(args.out, args.paths, init, seed, args.steps))
    import jax
    result = {"splits_z": SPLITS, "width": WIDTH, "cube": CUBE, "finetune_steps": args.steps,
              "pretrain_steps": args.pretrain_steps, "pretrained": str(pretrained),
              "pretrain_seconds": pretrain_seconds,
              "runs": rows, "summary": summarize(rows), "jax": jax.__version__, "device": str(jax.devices()[0])}
    return report(result, markdown(result), args)


if __name__ == "__main__":
    main()
