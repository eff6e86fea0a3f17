"""Samples/s of the official-style pre-training loop: the NumPy reference deformations in
the main process, one cube at a time, feeding the PyTorch U-Net step (what a user would
run instead of genesis-jax), at the official batch of 6.

    python -m benchmarks.official_pipeline --batch 6 --width 32 --dtype bfloat16 --json out.json

Each step: cut the batch's clean cubes (the same sampler and synthetic volume as
benchmarks.end_to_end), corrupt them with genesis_jax.reference (a Python loop over the
10,000 shuffle blocks, np.interp for the Bezier map: the official code's way), copy to
the device, one SGD step of the reference TorchUNet3D on (corrupted, clean) (bf16 autocast
with channels_last_3d on a GPU, as benchmarks.train_step). Nothing overlaps, as in the
official trainer's single process. Reported beside the time split (deform / transfer +
step), so the gap to genesis-jax's full loop (benchmarks.end_to_end) can be read off.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import add_size_arguments, write_json
from benchmarks.end_to_end import synthetic_volume
from benchmarks.train_step import torch_restoration_step
from genesis_jax.data import SamplerConfig, VolumeBatches
from genesis_jax.reference.numpy_genesis import ReferencePipeline


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser, batch=6)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    shape = tuple(args.shape)
    device, torch_step = torch_restoration_step(args.width, args.dtype, learning_rate=0.1)
    source = VolumeBatches([synthetic_volume()], SamplerConfig(crop=shape, filter="foreground", min_foreground=0.3))
    reference = ReferencePipeline(seed=0)

    def to_device(array):
        return torch.from_numpy(np.ascontiguousarray(array[:, None])).to(device).to(
            memory_format=torch.channels_last_3d)

    def step(i):
        start = time.perf_counter()
        corrupted, clean = reference.batch(list(source.batch(i, args.batch)))
        deformed = time.perf_counter()
        torch_step(to_device(corrupted), to_device(clean))
        end = time.perf_counter()
        return end - start, deformed - start

    for i in range(args.warmup):
        step(i)
    times = [step(args.warmup + i) for i in range(args.steps)]
    total = statistics.median(t for t, _ in times)
    deform = statistics.median(d for _, d in times)
    result = {"benchmark": "official_pipeline", "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "batch": args.batch, "width": args.width, "dtype": args.dtype,
              "shape": list(shape), "median_step_s": total, "samples_per_s": args.batch / total,
              "deform_s_per_step": deform, "transfer_and_step_s": total - deform,
              "deform_share": deform / total}
    print(f"official-style loop (NumPy reference deformations in the main process + PyTorch {torch.__version__} "
          f"step{', bf16 autocast' if args.dtype == 'bfloat16' else ''}) on {result['device']}, batch {args.batch}, width "
          f"{args.width}, cubes {shape}")
    print("| samples/s | ms/step | deformations ms/step (share) | transfer + step ms |")
    print("|---:|---:|---:|---:|")
    print(f"| {result['samples_per_s']:.2f} | {1e3 * total:.1f} | {1e3 * deform:.1f} ({100 * deform / total:.0f}%) | "
          f"{1e3 * (total - deform):.1f} |")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
