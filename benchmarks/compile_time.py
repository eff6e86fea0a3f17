"""Seconds to compile the pre-training step (deformations + U-Net + optimizer, the program
`python -m genesis_jax.train` runs), through the train CLI's persistent compilation cache,
and the step's peak memory per device from XLA's memory analysis.

    python -m benchmarks.compile_time --cache DIR [--config.width ...]   # prints one JSON line

Run it twice on the same, initially empty, DIR: the first compile is cold, the second
loads the program the first one stored (benchmarks/run.py does exactly that).
"""

from __future__ import annotations

import argparse
import json
import os


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="persistent compilation cache folder (GENESIS_JAX_CACHE)")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    os.environ["GENESIS_JAX_CACHE"] = args.cache
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

    import jax

    from genesis_jax import sharding
    from genesis_jax.configs.base import base_config
    from genesis_jax.dryrun import compile_step, target_step
    from genesis_jax.train import enable_compilation_cache

    enable_compilation_cache(jax)
    cfg = base_config()
    cfg.model.width, cfg.model.dtype, cfg.batch_size = args.width, args.dtype, args.batch
    cfg.data.cube_shape = tuple(args.shape)
    mesh = sharding.make_mesh(jax.devices()[:1])
    report, _, seconds = compile_step(cfg, mesh, target_step(cfg, mesh, jax.default_backend()), args.batch)
    result = {"compile_s": seconds, "peak_bytes": report.peak_bytes, "width": args.width, "batch": args.batch,
              "shape": list(args.shape), "dtype": args.dtype, "cache_files": len(os.listdir(args.cache))}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
