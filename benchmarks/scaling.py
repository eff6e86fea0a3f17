"""Scaling of the real train steps on 1, 2, 4, 8 devices, in one run.

    python -m benchmarks.scaling --json benchmarks/results/scaling_cpu.json
    python -m benchmarks.scaling --series space --json benchmarks/results/spatial_scaling_cpu.json

For each device count: the compiled program's per-device FLOPs, peak memory and
collectives (genesis_jax.program), and measured samples/s. Two series:
- weak: a fixed batch per device (the global batch grows with the devices). Per-device
  FLOPs must stay flat; that is the split.
- strong: a fixed global batch. Per-device FLOPs must fall as 1/n.
- space (spatial partitioning, config.mesh.space): one segmentation patch (128^3, a
  width-8 U-Net, native convolutions at every count) split along X over n devices.
  Per-device FLOPs must fall as 1/n; the collectives are the halos' collective-permutes
  and the all-reduces.
On a CPU the devices are simulated (XLA_FLAGS=--xla_force_host_platform_device_count=8,
set here when missing) and share the same cores: samples/s shows the cost of the split
(collectives, per-device dispatch), not a speed-up. On n real accelerators weak-scaling
samples/s should grow ~n-fold.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import timed, write_json  # noqa: E402

from genesis_jax import program, sharding  # noqa: E402
from genesis_jax.configs.base import base_config  # noqa: E402
from genesis_jax.deform import genesis_batch  # noqa: E402
from genesis_jax.models import UNet3D  # noqa: E402
from genesis_jax.optim import recipe_sgd  # noqa: E402
from genesis_jax.step import init_train_state, make_train_step  # noqa: E402
from genesis_jax.tasks import PretrainTask, SegmentationTask  # noqa: E402


class ReplicatedDeformation(PretrainTask):
    """The step as it was before the split (genesis_batch on the sharded batch): XLA
    gathers the batch and every device deforms all of it and runs the U-Net on it."""

    def prepare(self, key, cubes, mesh, first_index=0):
        return genesis_batch(key, cubes, self.deform)


TX = recipe_sgd(learning_rate=0.01)
TABLE_HEADER = ("| devices | global batch | per device | GFLOP/device | peak MiB/device | collectives | ms/step | samples/s |\n"
                "|---:|---:|---:|---:|---:|---|---:|---:|")


def compiled_and_timed(step, state, batch, args):
    """(ProgramReport, median seconds per step) of the jitted train step on this batch,
    the state donated from step to step."""
    compiled = step.lower(state, batch, 0).compile()
    holder = {"state": state}

    def run(i):
        holder["state"], metrics = compiled(holder["state"], batch, i)
        return metrics["loss"]

    return program.analyse(compiled), statistics.median(timed(run, args.steps, args.warmup))


def measure(n_devices, global_batch, args, graphdef, host_state, replicated=False) -> dict:
    mesh = sharding.make_mesh(jax.devices()[:n_devices])
    task = (ReplicatedDeformation if replicated else PretrainTask)(base_config())
    task.check_config()
    step = make_train_step(graphdef, TX, task, jax.random.key(0), mesh)
    state = sharding.replicate(jax.tree.map(jnp.asarray, host_state), mesh)
    rng = np.random.default_rng(0)
    cubes = sharding.global_batch(rng.random((global_batch, *args.shape), dtype=np.float32), mesh)
    report, median = compiled_and_timed(step, state, cubes, args)
    return {"devices": n_devices, "global_batch": global_batch, "per_device_batch": global_batch // n_devices,
            "per_device_gflops": report.flops / 1e9, "peak_mib": report.peak_bytes / 2**20,
            "collectives": report.collective_summary(), "step_ms": median * 1e3,
            "samples_per_s": global_batch / median}


def measure_space(space: int, args) -> dict:
    """One patch of args.space_patch split along X over `space` devices: the segmentation
    fine-tuning step (U-Net, Dice + BCE, the benchmark's SGD)."""
    from genesis_jax.configs.segmentation import get_config
    cfg = get_config()
    cfg.data.patch_shape, cfg.model.width, cfg.model.conv, cfg.mesh.space = \
        tuple(args.space_patch), args.space_width, "native", space
    task = SegmentationTask(cfg)
    task.check_config()
    graphdef, state = init_train_state(task.build_model(nnx.Rngs(0)), TX)
    mesh = sharding.make_mesh(jax.devices()[:space], space)
    step = make_train_step(graphdef, TX, task, jax.random.key(0), mesh)
    image = np.random.default_rng(0).random((1, *args.space_patch, 1), dtype=np.float32)
    patch = sharding.global_batch(np.concatenate([image, (image > 0.7).astype(np.float32)], -1), mesh)
    report, median = compiled_and_timed(step, sharding.replicate(state, mesh), patch, args)
    return {"devices": space, "global_batch": 1, "per_device_batch": f"1/{space}",
            "per_device_gflops": report.flops / 1e9, "peak_mib": report.peak_bytes / 2**20,
            "collectives": report.collective_summary(), "step_ms": median * 1e3, "samples_per_s": 1 / median}


def table_row(label, row: dict) -> str:
    return (f"| {label} | {row['global_batch']} | {row['per_device_batch']} | {row['per_device_gflops']:.2f} | "
            f"{row['peak_mib']:.1f} | {collectives_text(row['collectives'])} | {row['step_ms']:.0f} | "
            f"{row['samples_per_s']:.2f} |")


def collectives_text(summary: dict) -> str:
    if not summary:
        return "none"
    return ", ".join(f"{c['count']} {kind} ({program.format_bytes(c['bytes'])})" for kind, c in sorted(summary.items()))


def space_series(args) -> dict:
    """The space series: rows per device count, and n devices against 1."""
    print(f"\nspace: one patch {tuple(args.space_patch)} of a width-{args.space_width} U-Net split along X "
          f"(segmentation step)")
    print(TABLE_HEADER)
    rows = []
    for n in args.devices:
        if args.space_patch[0] % (8 * n):
            print(f"| {n} | patch X {args.space_patch[0]} does not split {n} ways (X / n a multiple of 8) |")
            continue
        rows.append(measure_space(n, args))
        print(table_row(n, rows[-1]), flush=True)
    by_count = {row["devices"]: row for row in rows}
    out = {"patch": list(args.space_patch), "width": args.space_width, "rows": rows}
    if 1 in by_count and max(by_count) > 1:
        n = max(by_count)
        out["ratio"] = {"devices": n, "flops_ratio": by_count[n]["per_device_gflops"] / by_count[1]["per_device_gflops"],
                        "samples_per_s_ratio": by_count[n]["samples_per_s"] / by_count[1]["samples_per_s"]}
        print(f"\nspace, {n} devices vs 1: per-device FLOPs x{out['ratio']['flops_ratio']:.3f} (ideal {1 / n:.3f}), "
              f"samples/s x{out['ratio']['samples_per_s_ratio']:.2f}")
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--per-device-batch", type=int, default=2, help="weak scaling: batch per device")
    parser.add_argument("--global-batch", type=int, default=16, help="strong scaling: global batch")
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 32, 16])
    parser.add_argument("--series", nargs="+", choices=("weak", "strong", "space"), default=["weak", "strong"])
    parser.add_argument("--space-patch", type=int, nargs=3, default=[128, 128, 128], help="space: the one patch")
    parser.add_argument("--space-width", type=int, default=8, help="space: the U-Net's width")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.shape = tuple(args.shape)
    available = jax.device_count()
    if max(args.devices) > available:
        parser.error(f"{max(args.devices)} devices asked, {available} available")
    graphdef, state = init_train_state(UNet3D(width=args.width, rngs=nnx.Rngs(0)), TX)
    host_state = jax.tree.map(np.asarray, state)
    print(f"pre-training step scaling on {jax.default_backend()} ({jax.devices()[0].device_kind}), jax "
          f"{jax.__version__}, width {args.width}, cubes {args.shape}, median of {args.steps} steps", flush=True)
    result = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "jax": jax.__version__,
              "width": args.width, "shape": list(args.shape), "steps": args.steps, "weak": [], "strong": []}
    if "space" in args.series:
        result["space"] = space_series(args)
    series_batches = {"weak": lambda n: args.per_device_batch * n, "strong": lambda n: args.global_batch}
    for series, batch_of in ((name, series_batches[name]) for name in args.series if name != "space"):
        print(f"\n{series} scaling ({'per-device batch ' + str(args.per_device_batch) if series == 'weak' else 'global batch ' + str(args.global_batch)})")
        print(TABLE_HEADER)
        for n in args.devices:
            if batch_of(n) % n:
                continue
            row = measure(n, batch_of(n), args, graphdef, host_state)
            result[series].append(row)
            print(table_row(n, row), flush=True)
    strong = {row["devices"]: row for row in result["strong"]}
    if strong and 1 in strong and max(strong) > 1:
        n = max(strong)
        row = measure(n, args.global_batch, args, graphdef, host_state, replicated=True)
        result["strong_replicated_baseline"] = row
        print(table_row(f"{n}, deformation replicated (before the fix)", row), flush=True)
        result["strong_ratio"] = {"devices": n, "flops_ratio": strong[n]["per_device_gflops"] / strong[1]["per_device_gflops"],
                                  "samples_per_s_ratio": strong[n]["samples_per_s"] / strong[1]["samples_per_s"],
                                  "replicated_samples_per_s_ratio": row["samples_per_s"] / strong[1]["samples_per_s"]}
        r = result["strong_ratio"]
        print(f"\nstrong scaling, {n} devices vs 1 at global batch {args.global_batch}: per-device FLOPs x"
              f"{r['flops_ratio']:.3f} (ideal {1 / n:.3f}), samples/s x{r['samples_per_s_ratio']:.2f} "
              f"(deformation replicated: x{r['replicated_samples_per_s_ratio']:.2f})")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
