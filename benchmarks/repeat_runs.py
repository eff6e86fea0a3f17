"""What a run of the test suite's tiny config costs: cold, again in the same process, in a new process.

    python -m benchmarks.repeat_runs [--runs 2] [--json P]

Times `train()` of tests/runs.py's tiny config (width 4, 16^3 cubes, 3 steps) on 8
simulated CPU devices: `--runs` times in one process that starts with an empty
persistent compilation cache, then once in a new process that finds the cache the
first one filled. The first is compile-bound (the suite pays it once per distinct
config); the second is what every later in-process run of the same programs costs;
the third what a command-line test of them costs. docs/design.md gives the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, run_cli, write_json


def timed_runs(runs: int) -> list[dict]:
    """`runs` timed tiny runs in this process (the child's side of `child`)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from genesis_jax.trainer import train
    from runs import tiny_config
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            summary = train(tiny_config(), Path(d) / "run")
        out.append({"seconds": time.perf_counter() - start, "val_losses": summary["val_losses"]})
    return out


def child(cache: str, runs: int) -> list[dict]:
    """timed_runs(runs) in a fresh interpreter on 8 simulated devices with this persistent cache."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    _, stdout = run_cli(["-m", "benchmarks.repeat_runs", f"--child={runs}"], env=env)
    return json.loads(stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="runs in the first process (default 2)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # the timed process: N runs, JSON on stdout
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(timed_runs(args.child)))
        return {}
    with tempfile.TemporaryDirectory(prefix="genesis_jax_cache_") as cache:
        start = time.perf_counter()
        first = child(cache, args.runs)
        later = child(cache, 1)
        wall = time.perf_counter() - start
    rows = [("cold, empty cache", first[0])] + [(f"run {i + 1} in the same process", r) for i, r in
                                               enumerate(first[1:], 1)] + [("new process, warm cache", later[0])]
    print("| tiny run | seconds | validation losses |\n|---|---:|---|")
    for name, r in rows:
        print(f"| {name} | {r['seconds']:.1f} | {', '.join(f'{loss:.5f}' for _, loss in r['val_losses'])} |")
    result = {"benchmark": "repeat_runs", "wall_s": wall, "runs": [{"what": n, **r} for n, r in rows]}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
