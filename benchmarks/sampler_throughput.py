"""Cubes/s and yield of the Genesis cube sampler per filter on one volume.

    python -m benchmarks.sampler_throughput ../shared/data/chest_ct.nii.gz --seeds 5 --json out.json

Reading and windowing are timed once; each filter then samples with the default
SamplerConfig (32 cubes per volume, 50 tries per cube, auto borders) for each seed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_json  # noqa: E402

from genesis_jax.data import SamplerConfig, hu_window, read_volume, sample_cubes
from genesis_jax.data.sampler import FILTERS, borders_for


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("volume", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    unit = hu_window(read_volume(args.volume).array)
    read_s = time.perf_counter() - start
    result = {"volume": str(args.volume), "shape": list(unit.shape), "read_and_window_s": read_s, "filters": {}}
    print(f"{args.volume}: {unit.shape}, read + window {read_s:.2f} s, "
          f"auto borders {borders_for(unit.shape, SamplerConfig())}")
    print("| filter | cubes per volume (mean over seeds) | tries | sampling s | cubes/s |")
    print("|---|---:|---:|---:|---:|")
    for name in FILTERS:
        cfg = SamplerConfig(filter=name)
        runs = []
        for seed in range(args.seeds):
            t = time.perf_counter()
            cubes, tries = sample_cubes(unit, cfg, np.random.default_rng(seed))
            runs.append((len(cubes), tries, time.perf_counter() - t))
        cubes = statistics.mean(r[0] for r in runs)
        seconds = statistics.median(r[2] for r in runs)
        row = {"cubes": [r[0] for r in runs], "tries": [r[1] for r in runs], "median_s": seconds,
               "cubes_per_s": cubes / seconds}
        result["filters"][name] = row
        print(f"| {name} | {cubes:.1f} ({min(row['cubes'])}-{max(row['cubes'])}) | "
              f"{statistics.mean(row['tries']):.0f} | {seconds:.3f} | {row['cubes_per_s']:.0f} |")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
