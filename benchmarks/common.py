"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax


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
