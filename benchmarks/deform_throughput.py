"""Cubes/s of the jitted genesis_batch versus the per-cube NumPy reference, in one run.

    python -m benchmarks.deform_throughput --batch-sizes 6 64 256 --json results.json
    python -m benchmarks.deform_throughput --channels 1 4 --batch-sizes 6 --reference-cubes 0

--channels times cubes of C channels (X, Y, Z, C), deform.channels "shared" (default 1:
the one-channel (X, Y, Z) cubes); cubes/s counts C-channel cubes.
--shape H W times Models Genesis 2D: images, DeformConfig(dims=2) with the shuffle's blocks
scaled to the image (shuffle.blocks_for_shape; the reference uses as many), images/s:

    python -m benchmarks.deform_throughput --shape 128 128 --batch-sizes 6 64 256

Both sides corrupt the same random 64x64x32 cubes with the default DeformConfig on
this machine, one after the other. JAX: compiled and warmed up first, then `repeats`
timed calls with fresh keys, each ending in block_until_ready; the median is reported.
Reference: `reference_cubes` cubes through genesis_jax/reference/numpy_genesis.py one at a time,
three passes with the same draws, median pass.
With --stages it also times each deformation alone (applied to every cube; per cube
with lax.map on CPU, vmapped elsewhere, as genesis_batch does), and each reference
deformation alone on up to 10 cubes, to show where the time goes.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import write_json  # noqa: E402
from genesis_jax.models.init import flat_draw  # noqa: E402
from genesis_jax.reference.numpy_genesis import ReferencePipeline  # noqa: E402

from genesis_jax.deform import (  # noqa: E402
    DeformConfig, flip, genesis_batch, inpaint, local_pixel_shuffle, nonlinear_intensity, outpaint)
from genesis_jax.deform.shuffle import blocks_for_shape  # noqa: E402


def time_calls(fn, make_args, repeats: int) -> list[float]:
    jax.block_until_ready(fn(*make_args(-1)))  # compile + warm up
    jax.block_until_ready(fn(*make_args(-2)))
    times = []
    for i in range(repeats):
        args = make_args(i)
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def bench_jax(batch: int, shape, repeats: int, cfg: DeformConfig, channels: int = 0) -> dict:
    """channels 0: (batch, X, Y, Z) cubes; C: (batch, X, Y, Z, C)."""
    cubes = flat_draw(jax.random.uniform, jax.random.key(0), (batch, *shape, *([channels] if channels else [])),
                      dtype=jnp.float32)
    times = time_calls(lambda k, c: genesis_batch(k, c, cfg), lambda i: (jax.random.key(1000 + i), cubes), repeats)
    median = statistics.median(times)
    return {"batch": batch, "channels": channels or 1, "median_s": median, "cubes_per_s": batch / median,
            "ms_per_cube": 1e3 * median / batch}


def config_for(shape) -> DeformConfig:
    """The default deformations for cubes, or for images (dims=2, blocks scaled to them)."""
    if len(shape) == 3:
        return DeformConfig()
    return DeformConfig(dims=2, local_blocks=blocks_for_shape(shape))


def bench_stages(batch: int, shape, repeats: int) -> dict:
    cubes = flat_draw(jax.random.uniform, jax.random.key(0), (batch, *shape), dtype=jnp.float32)
    cfg = config_for(shape)
    stages = {
        "flip": lambda k, x: flip(k, x, x, dims=cfg.dims)[0],
        "local_pixel_shuffle": functools.partial(local_pixel_shuffle, n_blocks=cfg.local_blocks, dims=cfg.dims),
        "nonlinear_intensity": nonlinear_intensity,
        "inpaint": functools.partial(inpaint, dims=cfg.dims),
        "outpaint": functools.partial(outpaint, dims=cfg.dims),
    }
    out = {}
    for name, fn in stages.items():
        if jax.default_backend() == "cpu":  # as genesis_batch runs on CPU: cube by cube
            batched = jax.jit(lambda keys, x, fn=fn: jax.lax.map(lambda kx: fn(*kx), (keys, x)))
        else:
            batched = jax.jit(jax.vmap(fn))
        times = time_calls(batched, lambda i: (jax.random.split(jax.random.key(2000 + i), batch), cubes), repeats)
        out[name] = 1e3 * statistics.median(times) / batch
    return out


def bench_reference(n_cubes: int, shape, repeats: int = 3) -> dict:
    """The same cubes and draws (same seed) `repeats` times; the median pass is reported
    (single passes on the 2-core CI machine varied by up to 1.5x)."""
    cubes = np.random.default_rng(0).random((n_cubes, *shape), dtype=np.float32)
    passes = []
    for _ in range(repeats):
        pipeline = ReferencePipeline(seed=0, local_blocks=config_for(shape).local_blocks)
        start = time.perf_counter()
        for cube in cubes:
            pipeline.pair(cube)
        passes.append(time.perf_counter() - start)
    elapsed = statistics.median(passes)
    return {"cubes": n_cubes, "passes_s": passes, "seconds": elapsed, "cubes_per_s": n_cubes / elapsed,
            "ms_per_cube": 1e3 * elapsed / n_cubes}


def bench_reference_stages(n_cubes: int, shape) -> dict:
    """ms/cube of each reference deformation applied to every cube (as bench_stages does)."""
    cubes = np.random.default_rng(0).random((n_cubes, *shape), dtype=np.float32)
    pipeline = ReferencePipeline(seed=0, local_blocks=config_for(shape).local_blocks)
    stages = {
        "flip": lambda x: pipeline.flip(x, x)[0],
        "local_pixel_shuffle": pipeline.local_pixel_shuffle,
        "nonlinear_intensity": pipeline.nonlinear_intensity,
        "inpaint": pipeline.inpaint,
        "outpaint": pipeline.outpaint,
    }
    out = {}
    for name, fn in stages.items():
        start = time.perf_counter()
        for cube in cubes:
            np.ascontiguousarray(fn(cube))
        out[name] = 1e3 * (time.perf_counter() - start) / n_cubes
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[6, 64, 256])
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 64, 32], help="X Y Z (cubes) or H W (2D images)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-cubes", type=int, default=40, help="0 skips the reference")
    parser.add_argument("--stages", action="store_true", help="also time each deformation alone")
    parser.add_argument("--channels", type=int, nargs="+", default=[0], help="channels per cube (0: the one-channel "
                        "(X, Y, Z) form; C: (X, Y, Z, C))")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    if len(shape) not in (2, 3):
        parser.error(f"--shape takes X Y Z or H W, got {' '.join(map(str, shape))}")

    device = jax.devices()[0]
    result = {
        "benchmark": "deform_throughput",
        "shape": shape,
        "local_blocks": config_for(shape).local_blocks,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "jax": jax.__version__,
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "jax_runs": [],
    }
    unit = "cubes" if len(shape) == 3 else "images"
    print(f"genesis_batch on {result['backend']} ({result['device']}), {unit} {shape}, jax {jax.__version__}", flush=True)
    if args.reference_cubes:
        result["reference"] = bench_reference(args.reference_cubes, shape)
        ref = result["reference"]
        print(f"reference NumPy loop: {ref['cubes_per_s']:.1f} {unit}/s ({ref['ms_per_cube']:.1f} ms each, "
              f"{ref['cubes']} {unit})", flush=True)
    for channels in args.channels:
        for batch in args.batch_sizes:
            run = bench_jax(batch, shape, args.repeats, config_for(shape), channels)
            if "reference" in result and run["channels"] == 1:
                run["speedup_vs_reference"] = run["cubes_per_s"] / result["reference"]["cubes_per_s"]
            result["jax_runs"].append(run)
            print(f"  batch {batch}, {run['channels']} channel(s): {run['cubes_per_s']:.1f} {unit}/s "
                  f"({run['ms_per_cube']:.2f} ms each)", flush=True)
    if args.stages:
        result["stage_ms_per_cube"] = bench_stages(max(args.batch_sizes), shape, args.repeats)
        if args.reference_cubes:
            result["reference_stage_ms_per_cube"] = bench_reference_stages(min(args.reference_cubes, 10), shape)

    print()
    print(f"| implementation | batch | channels | {unit}/s | ms each | vs reference |")
    print("|---|---:|---:|---:|---:|---:|")
    if "reference" in result:
        ref = result["reference"]
        print(f"| NumPy reference (one at a time) | 1 | 1 | {ref['cubes_per_s']:.1f} | {ref['ms_per_cube']:.2f} | 1.0x |")
    for run in result["jax_runs"]:
        speedup = f"{run['speedup_vs_reference']:.1f}x" if "speedup_vs_reference" in run else "-"
        print(f"| genesis_batch ({result['backend']}) | {run['batch']} | {run['channels']} | {run['cubes_per_s']:.1f} | "
              f"{run['ms_per_cube']:.3f} | {speedup} |")
    if "stage_ms_per_cube" in result:
        print(f"\nper stage, applied to every one of the {unit} (ms each): " +
              ", ".join(f"{k} {v:.3f}" for k, v in result["stage_ms_per_cube"].items()))
    if "reference_stage_ms_per_cube" in result:
        print("NumPy reference, each on every one (ms each): " +
              ", ".join(f"{k} {v:.3f}" for k, v in result["reference_stage_ms_per_cube"].items()))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
