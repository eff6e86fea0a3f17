"""Samples/s of the real pre-training loop (host data + transfer + on-device deformation +
step) against the step alone, same model, batch and device, in one run.

    python -m benchmarks.end_to_end --batch 32 --width 32 --dtype bfloat16 --json out.json

Data: cubes cut on the fly (VolumeBatches, foreground filter) from a synthetic in-memory
volume, so no file readers are needed. "step alone" trains on one fixed, pre-corrupted
batch already on the device; "deform + step" adds genesis_batch inside the jitted step;
"full loop" also fetches each step's batch on the host and transfers it, exactly as
genesis_jax.trainer does (dispatch is asynchronous: the host prepares batch s + 1 while
the device runs step s). Overheads are relative to the step alone.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import add_size_arguments, timed, write_json  # noqa: E402

from genesis_jax import sharding
from genesis_jax.data import SamplerConfig, VolumeBatches
from genesis_jax.deform import DeformConfig, genesis_batch
from genesis_jax.models import UNet3D
from genesis_jax.configs.base import base_config
from genesis_jax.optim import recipe_sgd
from genesis_jax.step import init_train_state, make_model_step, make_train_step
from genesis_jax.tasks import PretrainTask, restoration_loss


def synthetic_volume(shape=(256, 256, 160), seed=0) -> np.ndarray:
    """Smooth blobs in [0, 1] with an air background: enough structure for the filter."""
    rng = np.random.default_rng(seed)
    coarse = rng.random(tuple(s // 16 for s in shape)).astype(np.float32)
    volume = coarse.repeat(16, 0).repeat(16, 1).repeat(16, 2)
    return np.clip(volume + 0.05 * rng.standard_normal(shape, dtype=np.float32), 0.0, 1.0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser, batch=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    mesh = sharding.make_mesh()
    deform_cfg = DeformConfig()
    model = UNet3D(width=args.width, dtype=jnp.dtype(args.dtype), rngs=nnx.Rngs(0))
    tx = recipe_sgd(learning_rate=0.1)
    graphdef, state0 = init_train_state(model, tx)
    source = VolumeBatches([synthetic_volume()], SamplerConfig(crop=shape, filter="foreground", min_foreground=0.3))
    root = jax.random.key(0)

    clean = sharding.global_batch(source.batch(0, args.batch), mesh)
    corrupted, target = genesis_batch(root, clean, deform_cfg)
    plain_step = make_model_step(graphdef, tx, restoration_loss)
    task = PretrainTask(base_config())
    task.check_config()
    pretrain_step = make_train_step(graphdef, tx, task, root, mesh)
    holder = {}

    def step_alone(i):
        holder["s"], loss = plain_step(holder["s"], corrupted, target)
        return loss

    def deform_and_step(i):
        holder["s"], metrics = pretrain_step(holder["s"], clean, i)
        return metrics["loss"]

    def full_loop(i):
        cubes = sharding.global_batch(source.batch(i, args.batch), mesh)
        holder["s"], metrics = pretrain_step(holder["s"], cubes, i)
        return metrics["loss"]

    rows = {}
    for name, fn in (("step alone", step_alone), ("deform + step", deform_and_step), ("full loop", full_loop)):
        holder["s"] = sharding.replicate(jax.tree.map(jnp.copy, state0), mesh)
        seconds = statistics.median(timed(fn, args.steps, args.warmup))
        rows[name] = {"median_step_s": seconds, "samples_per_s": args.batch / seconds}
    base = rows["step alone"]["median_step_s"]
    for row in rows.values():
        row["overhead_vs_step"] = row["median_step_s"] / base - 1.0
    device = jax.devices()[0]
    result = {"benchmark": "end_to_end", "backend": jax.default_backend(),
              "device": getattr(device, "device_kind", str(device)), "devices": jax.device_count(),
              "batch": args.batch, "width": args.width, "dtype": args.dtype, "shape": shape, "rows": rows}
    print(f"pre-training loop on {result['backend']} ({result['device']} x{result['devices']}), batch {args.batch}, "
          f"width {args.width}, {args.dtype}, cubes {shape}")
    print("| what | samples/s | ms/step | overhead vs step alone |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['samples_per_s']:.1f} | {1e3 * row['median_step_s']:.1f} | "
              f"{100 * row['overhead_vs_step']:+.1f}% |")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
