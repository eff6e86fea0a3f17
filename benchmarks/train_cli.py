"""Samples/s of `python -m genesis_jax.train` itself, end to end from a cube store: what a
user's run does (store reads, host batches, transfer, on-device deformations, the step,
logging), against the step alone.

    python -m benchmarks.train_cli --batch 32 --width 32 --dtype bfloat16 --steps 10 \
        --windows 3 --compare end_to_end.json --json out.json

A store of the bundled sample's cubes is prepared (`python -m genesis_jax.prepare @sample`,
the cube shape asked for), then the train CLI runs (1 + --windows) x --steps steps with
`log_every` = --steps. Its own log measures each window of --steps steps (samples over the
wall time between two logs, the host preparing the next batch while the device runs the
step, as in any run); the first window holds the compile, the median of the others is
reported. --compare reads benchmarks.end_to_end's JSON of the same batch and width for
the step alone and the in-process full loop.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import add_size_arguments, run_cli, write_json


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser, batch=4)
    parser.add_argument("--steps", type=int, default=5, help="steps per logged window")
    parser.add_argument("--windows", type=int, default=2, help="windows timed after the first")
    parser.add_argument("--compare", type=Path, help="benchmarks.end_to_end's JSON (same batch and width)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="train_cli_"))
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR", str(work / "jax"))}
    store = work / "cubes.zarr"
    shape = [str(s) for s in args.shape]
    run_cli(["-m", "genesis_jax.prepare", "@sample", "--out", str(store), "--cube-shape", *shape,
             "--cubes-per-volume", str(max(4 * args.batch, 16)), "--workers", "1"], env)
    common = ["-m", "genesis_jax.train", "--config=genesis_chest_ct",
              "--config.data.source=store", f"--config.data.store={store}", f"--config.data.cube_shape=({','.join(shape)})",
              f"--config.batch_size={args.batch}", f"--config.model.width={args.width}",
              f"--config.model.dtype={args.dtype}", "--config.eval_every=100000", "--config.checkpoint_every=100000",
              "--config.export_pytorch=False"]
    windows = 1 + args.windows
    _, output = run_cli([*common, f"--config.total_steps={windows * args.steps}", f"--config.log_every={args.steps}",
                         f"--workdir={work / 'run'}"], env, with_stderr=True)
    # The bar shows "n/total [..., samples_s=X]"; each log sets X at a multiple of --steps
    # (a redraw just before it may show the old X at that n: the last one drawn counts).
    shown = {int(n): float(v) for n, v in re.findall(r"(\d+)/\d+ \[[^\]]*?samples_s=([0-9.]+)\]", output)}
    per_window = [shown[n] for n in range(args.steps, windows * args.steps + 1, args.steps) if n in shown]
    if len(per_window) < windows:
        raise SystemExit(f"error: the train CLI logged {len(per_window)} windows, expected {windows}:\n{output[-2000:]}")
    samples_per_s = statistics.median(per_window[1:])
    step_s = args.batch / samples_per_s
    result = {"benchmark": "train_cli", "batch": args.batch, "width": args.width, "dtype": args.dtype,
              "shape": args.shape, "steps_per_window": args.steps, "windows_samples_per_s": per_window,
              "step_s": step_s, "samples_per_s": samples_per_s}
    rows = [("train CLI from a store", result["samples_per_s"], step_s)]
    if args.compare:
        e2e = json.loads(args.compare.read_text())
        result["compared"] = {name: row["samples_per_s"] for name, row in e2e["rows"].items()}
        rows += [(f"{name} (benchmarks.end_to_end)", row["samples_per_s"], row["median_step_s"])
                 for name, row in e2e["rows"].items()]
        result["vs_step_alone"] = result["samples_per_s"] / e2e["rows"]["step alone"]["samples_per_s"]
    print(f"train CLI end to end, batch {args.batch}, width {args.width}, {args.dtype}, cubes {tuple(args.shape)}: "
          f"samples/s of its logged windows of {args.steps} steps: "
          f"{', '.join(f'{v:.1f}' for v in per_window)} (the first holds the compile)")
    print("| what | samples/s | ms/step |")
    print("|---|---:|---:|")
    for name, samples, step in rows:
        print(f"| {name} | {samples:.1f} | {1e3 * step:.1f} |")
    if "vs_step_alone" in result:
        print(f"the CLI reaches {100 * result['vs_step_alone']:.0f}% of the step alone's samples/s")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
