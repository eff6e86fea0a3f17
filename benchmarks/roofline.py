"""The roofline of recorded dry runs: each step's least time per device from its own
FLOP and byte counts and the target's data sheet (genesis_jax.dryrun.roofline).

    python -m benchmarks.roofline benchmarks/results/dry_run_*.json

For dry runs recorded before the report had its roofline (they carry a 40% MFU "paper"
line instead); a new dry run prints its roofline itself. HBM is charged the
device-memory buffers where a run recorded them beside on-chip ones (TPU dry runs since
2026-12-08), else XLA's bytes accessed (genesis_jax.hlo_cost.roofline_bytes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genesis_jax.dryrun import data_sheet_ceilings, roofline
from genesis_jax.hlo_cost import roofline_bytes


def bound_of(result: dict) -> dict:
    model = result.get("model_flops_per_device") or result["flops_per_sample"] * result["per_device_batch"]
    memory_bytes, source = roofline_bytes(result["per_device"])
    bound = roofline(result["per_device"]["flops"], memory_bytes, model, *data_sheet_ceilings(result["device_kind"]))
    return {**bound, "samples_per_s_per_device": bound["steps_per_s"] * result["per_device_batch"],
            "hbm_bytes": memory_bytes, "hbm_bytes_source": source}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="dry-run JSON files (--json of train --dry_run)")
    args = parser.parse_args(argv)
    print("| dry run | device | per device: TFLOP (XLA / model) | GiB accessed (XLA) | GiB charged to HBM | "
          "FLOPs at peak | HBM at data sheet | bound | at most | MFU at most |\n|---|---|---:|---:|---:|---:|---:|---|---:|---:|")
    rows = []
    for path in args.results:
        result = json.loads(path.read_text())
        bound = bound_of(result)
        model = result.get("model_flops_per_device")
        model_text = f"{model / 1e12:.2f}" if model else "- (not recorded: XLA's count used)"
        print(f"| {path.name} | {result['device_kind']} | {result['per_device']['flops'] / 1e12:.2f} / "
              f"{model_text} | {result['per_device']['bytes_accessed'] / 2**30:.1f} | "
              f"{bound['hbm_bytes'] / 2**30:.1f} ({bound['hbm_bytes_source']}) | "
              f"{bound['compute_s'] * 1e3:.1f} ms | {bound['memory_s'] * 1e3:.1f} ms | {bound['bound']} | "
              f"{bound['steps_per_s']:.1f} steps/s, {bound['samples_per_s_per_device']:.0f} samples/s | "
              f"{bound['mfu_ceiling']:.0%} |")
        rows.append({"file": str(path), **bound})
    return rows


if __name__ == "__main__":
    main()
