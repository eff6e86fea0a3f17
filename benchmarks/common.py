"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, steps: int, warmup: int) -> list[float]:
    """Seconds of fn(i) for `steps` calls after `warmup` untimed ones; each ends in block_until_ready."""
    for i in range(warmup):
        jax.block_until_ready(fn(i))
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(i))
        times.append(time.perf_counter() - start)
    return times


def write_json(path: Path | None, result: dict) -> None:
    """Write the results next to the printed table (no-op without --json)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")


def write_markdown(path: Path | None, table: str) -> None:
    """Write the printed table as a Markdown file (no-op without --markdown)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")


def add_size_arguments(parser, batch: int) -> None:
    """--batch, --width, --shape, --dtype: the U-Net step a benchmark runs."""
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")


def run_cli(argv: list[str], env: dict | None = None, with_stderr: bool = False) -> tuple[float, str]:
    """(seconds, stdout) of one `python ARGV` run from the repository root (env: its whole
    environment, default this one's); its stderr (the progress bar) streams to this
    terminal, or with_stderr is read with stdout. A failed run exits with its last output."""
    print("$ python " + " ".join(argv), file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                          stderr=subprocess.STDOUT if with_stderr else None)
    if proc.returncode:
        sys.exit(f"error: {' '.join(argv[:2])} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    return time.perf_counter() - start, proc.stdout
