"""The paper's 2D-versus-3D comparison at our scale: Models Genesis 2D on the aorta task.

    python -m benchmarks.compare_2d [--out runs/compare_2d] [--seeds 0,1,2] [--steps 200]
                                    [--json P] [--markdown P]

The task and split are the transfer experiment's (benchmarks/transfer.py, docs/finetuning.md):
the aorta in chest_ct_cropped.nii.gz, test z 0..59, validation z 76..99, training z
100..163. A 2D model segments it slice by slice (axial slices, data.slice_axis z): the
U-Net's 2D counterpart at the 3D runs' width (8), from scratch and from a Models
Genesis 2D pre-training on the whole scan's axial slices (chest_ct.nii.gz, as the 3D
pre-training). The training budget equals the 3D runs': the same optimizer steps
(fine-tuning 200, pre-training 1000) over as many voxels per step (3D: batch 8 of
32x32x16 = 131,072 voxels; 2D: batch 32 of 64x64 = 131,072 pixels), the same recipes
(pre-training: SGD lr 1.0, StepLR x0.5 every 250 steps, the four deformations with
dims=2 and the shuffle's blocks scaled to 64x64 (625); fine-tuning: Adam 1e-3, plateau,
Dice + BCE). Test Dice: `genesis_jax.predict` of the best checkpoint (by validation
loss) on the test slab, slice by slice with 0.5 overlap and Gaussian blending, scored
on the 3D label map. The 3D rows come from the transfer experiment's own output
(--transfer-json, from `python -m benchmarks.transfer --json`), never re-typed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import run_cli
from benchmarks.transfer import DATA, SPLITS, experiment_arguments, prepared_splits, report, seeded_runs, summarize

WIDTH, IMAGE, BATCH = 8, "(64, 64)", 32
BLOCKS = 625  # genesis_jax.deform.shuffle.blocks_for_shape((64, 64))


def pretrain_2d(out: Path, steps: int) -> tuple[Path, float]:
    workdir = out / "pretrain_2d"
    seconds, _ = run_cli(["-m", "genesis_jax.train", "--config=genesis_2d", f"--workdir={workdir}",
                          f"--config.model.width={WIDTH}", f"--config.total_steps={steps}",
                          f"--config.batch_size={BATCH}", "--config.steps_per_epoch=50", "--config.eval_every=100",
                          "--config.checkpoint_every=100", "--config.schedule.step_epochs=5",
                          "--config.data.val_cubes=32", "--config.data.source=volumes",
                          f"--config.data.volumes={DATA / 'chest_ct.nii.gz'}", "--config.data.filter=lung",
                          f"--config.data.cube_shape={IMAGE}", f"--config.deform.local_blocks={BLOCKS}"])
    return workdir, seconds


def finetune_2d(out: Path, paths: dict, init: str, seed: int, steps: int) -> tuple[Path, float]:
    name = "scratch_2d" if init == "scratch" else "genesis_2d"
    workdir = out / f"{name}_seed{seed}"
    seconds, _ = run_cli(["-m", "genesis_jax.finetune", "--config=segmentation_2d", f"--workdir={workdir}",
                          f"--config.init={init}", f"--config.seed={seed}", f"--config.model.width={WIDTH}",
                          f"--config.data.patch_shape={IMAGE}", f"--config.batch_size={BATCH}",
                          f"--config.total_steps={steps}", "--config.steps_per_epoch=25", "--config.eval_every=25",
                          "--config.checkpoint_every=50", "--config.data.val_patches=32", "--config.log_every=5",
                          f"--config.data.train_images={paths['train'][0]}", f"--config.data.train_labels={paths['train'][1]}",
                          f"--config.data.val_images={paths['val'][0]}", f"--config.data.val_labels={paths['val'][1]}"])
    return workdir, seconds


def markdown(result: dict) -> str:
    lines = ["| model | init | seed | test Dice (aorta) | fine-tune wall time |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['init']} | {r['seed']} | {r['test_dice']:.4f} | "
              f"{r['seconds'] / 60:.1f} min |" for r in result["runs"]]
    lines += ["", "| model | init | test Dice mean | stdev | min .. max | runs |", "|---|---|---:|---:|---:|---:|"]
    for model, summary in result["summary"].items():
        lines += [f"| {model} | {init} | {s['mean']:.4f} | {s['stdev']:.4f} | {s['min']:.4f} .. {s['max']:.4f} | "
                  f"{s['n']} |" for init, s in summary.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/compare_2d"))
    parser.add_argument("--transfer-json", type=Path, help="the 3D transfer experiment's --json output, for the 3D rows")
    experiment_arguments(parser)
    args = parser.parse_args(argv)
    args.paths = prepared_splits(args.out)
    pretrained, pretrain_seconds = pretrain_2d(args.out, args.pretrain_steps)
    rows = seeded_runs(args, pretrained, lambda init, seed: finetune_2d(args.out, args.paths, init, seed, args.steps),
                       model="2D")
    summary = {"2D": summarize(rows)}
    if args.transfer_json:
        three_d = [{**r, "model": "3D"} for r in json.loads(args.transfer_json.read_text())["runs"]]
        rows, summary = three_d + rows, {"3D": summarize(three_d), **summary}
    result = {"splits_z": SPLITS, "width": WIDTH, "image": IMAGE, "batch": BATCH, "finetune_steps": args.steps,
              "pretrain_steps": args.pretrain_steps, "pretrain_seconds": pretrain_seconds, "runs": rows,
              "summary": summary}
    return report(result, markdown(result), args)


if __name__ == "__main__":
    main()
