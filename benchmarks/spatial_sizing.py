"""What patch fits on how many devices: the sizing table of spatial partitioning.

    python -m benchmarks.spatial_sizing --target v5e --json benchmarks/results/spatial_sizing_v5e.json
    python -m benchmarks.spatial_sizing --target v5p --json benchmarks/results/spatial_sizing_v5p.json
    python -m benchmarks.spatial_sizing --target gpu80 --json benchmarks/results/spatial_sizing_gpu80.json

For each cubic patch (128^3, 160^3, 192^3, 256^3), each count k of devices sharing it
(config.mesh.space = k: 1, 2, 4, 8) and 1 or 2 patches per group, the full-width bf16
segmentation fine-tuning step (the program `python -m genesis_jax.finetune` runs:
U-Net, Dice + BCE, Adam) is compiled as the dry run compiles it
(genesis_jax/dryrun.py) and its peak memory per device is read from the compiled
program. v5e and v5p: ahead of time through libtpu for the first k chips of a v5e:2x4 /
v5p:2x2x2 slice (no TPU needed; memory per chip from the data sheets, 16 and 95 GiB).
gpu80: compiled for this host's CPU devices (8 simulated) against 80 GiB, an H100's or
A100's memory; XLA:GPU's peak differs (cuDNN workspaces, other fusions), so read it as
an estimate. A patch whose X / k is not a multiple of 8 does not split (the U-Net pools
three times); a compile the TPU compiler refuses for memory counts as not fitting.
Results are written after every compile; a rerun skips the entries already there.

A compile near a TPU's memory limit takes minutes (the compiler rematerialises to fit:
128^3 on one v5e chip took 826 s on 2 cores), so `--cells PATCH:DEVICES:BATCH ...`
compiles the cells near the limit first, and the table fills the others by one rule:
on the same number of devices, peak memory grows with the voxels each device holds
(patch^3 x batch / devices), so a cell with at most 90% of the voxels per device of a
compiled one that fits is marked "fits (inferred)", and one with at least the voxels of
one that does not fit "does not fit (inferred)", each naming the compiled cell it rests
on. Across device counts there is no such rule: a split program keeps halo buffers and
collectives live, and the TPU compiler rematerialises a one-chip program harder (seen:
128^3 fits one v5e chip, 160^3 does not fit two).
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.common import write_markdown  # noqa: E402

TARGETS = {  # topology for --topology (None: this host's devices), memory per device in GiB
    "v5e": ("v5e:2x4", 16.0), "v5p": ("v5p:2x2x2", 95.0), "gpu80": (None, 80.0),
}


def unsplittable(patch: int, devices: int) -> str | None:
    """Why a patch cannot split over `devices` (X / devices not a multiple of 8), else None."""
    return f"X / {devices} = {patch / devices:g} is not a multiple of 8" if patch % (8 * devices) else None


def config_for(patch: int, space: int, batch: int, width: int, dtype: str):
    from genesis_jax.configs.segmentation import get_config
    cfg = get_config()
    cfg.data.patch_shape, cfg.model.width, cfg.model.dtype = (patch,) * 3, width, dtype
    cfg.mesh.space, cfg.num_devices, cfg.batch_size = space, space, batch
    return cfg


def size_one(target: str, patch: int, space: int, batch: int, width: int, dtype: str) -> dict:
    """One entry: peak GiB per device and whether it fits, or why not."""
    from genesis_jax.dryrun import dry_run, out_of_memory
    from genesis_jax.errors import UserError
    topology, memory_gib = TARGETS[target]
    entry = {"target": target, "patch": patch, "devices": space, "batch": batch, "memory_gib": memory_gib}
    if unsplittable(patch, space):
        return {**entry, "fits": False, "why": unsplittable(patch, space)}
    start = time.perf_counter()
    try:
        result = dry_run(config_for(patch, space, batch, width, dtype), topology=topology,
                         device_memory_gb=memory_gib, fit=False)
    except UserError:  # a bad request is this script's bug: its message, not a table cell
        raise
    except Exception as e:
        if out_of_memory(e):
            said = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
            return {**entry, "fits": False, "why": "out of memory (the compiler refused it)",
                    "compiler_said": said[:300], "compile_s": round(time.perf_counter() - start, 1)}
        raise
    peak = result["per_device"]["peak_bytes"] / 2**30
    return {**entry, "fits": peak <= memory_gib, "peak_gib": round(peak, 2), "compile_s": result["compile_s"],
            "device_kind": result["device_kind"], "model_flops_per_device": result["model_flops_per_device"],
            "collectives": result["per_device"]["collectives"], "halo": result["halo"],
            "spans_hosts": result["space_spans_hosts"]}


def voxels_per_device(patch: int, devices: int, batch: int) -> float:
    return patch ** 3 * batch / devices


def inferred(target: str, patch: int, devices: int, batch: int, entries: list[dict]) -> str:
    """A cell not compiled, from the compiled cells of the target (see the module doc)."""
    if unsplittable(patch, devices):
        return "no: " + unsplittable(patch, devices)
    mine = voxels_per_device(patch, devices, batch)
    compiled = [e for e in entries if e["target"] == target and e["devices"] == devices
                and ("peak_gib" in e or "out of memory" in e.get("why", ""))]
    fitting = [e for e in compiled if e["fits"] and 0.9 * voxels_per_device(e["patch"], e["devices"], e["batch"]) >= mine]
    failing = [e for e in compiled if not e["fits"] and voxels_per_device(e["patch"], e["devices"], e["batch"]) <= mine]
    name = lambda e: f"{e['patch']}^3 x {e['batch']} on {e['devices']}"  # noqa: E731
    if fitting:
        return f"fits (inferred: <= 90% of the voxels per device of {name(min(fitting, key=lambda e: e['peak_gib']))})"
    if failing:
        return f"does not fit (inferred: as many voxels per device as {name(failing[0])} or more)"
    return "not compiled"


def cell(entry: dict | None) -> str:
    if entry is None:
        return "not compiled"
    needed = re.search(r"temporaries \((\S+)\) exceeds available HBM \((\S+)\)", entry.get("compiler_said", ""))
    if needed:
        return f"**no: needs {needed[1]} of temporaries, {needed[2]} free**"
    if "peak_gib" not in entry:
        return "no: " + entry["why"]
    return f"**{entry['peak_gib']:.1f} GiB, {'fits' if entry['fits'] else 'does not fit'}**"


def table(entries: list[dict], patches, devices, batches) -> str:
    by_key = {(e["target"], e["patch"], e["devices"], e["batch"]): e for e in entries}
    lines = []
    for target in dict.fromkeys(e["target"] for e in entries):
        memory = TARGETS[target][1]
        lines += [f"\n{target} ({memory:g} GiB per device): peak per device, full-width bf16 fine-tuning step "
                  f"(bold: compiled)", "",
                  "| patch | batch | " + " | ".join(f"{k} device{'s' if k > 1 else ''}" for k in devices) + " |",
                  "|---|---:|" + "---|" * len(devices)]
        for patch in patches:
            for batch in batches:
                cells = [cell(by_key[(target, patch, k, batch)]) if (target, patch, k, batch) in by_key
                         else inferred(target, patch, k, batch, entries) for k in devices]
                lines.append(f"| {patch}^3 | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=sorted(TARGETS), action="append", required=True)
    parser.add_argument("--patches", type=int, nargs="+", default=[128, 160, 192, 256])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--cells", nargs="+", default=None, metavar="PATCH:DEVICES:BATCH",
                        help="compile these cells, in this order (default: every cell)")
    parser.add_argument("--json", type=Path, required=True, help="results, written after every compile")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    entries = json.loads(args.json.read_text())["entries"] if args.json.is_file() else []
    done = {(e["target"], e["patch"], e["devices"], e["batch"]) for e in entries}
    cells = [tuple(int(v) for v in c.split(":")) for c in args.cells] if args.cells else \
        [(p, k, b) for b in args.batches for p in args.patches for k in args.devices]
    for target in args.target:
        for patch, space, batch in cells:
            if (target, patch, space, batch) in done:
                continue
            entry = size_one(target, patch, space, batch, args.width, args.dtype)
            took = f" (compiled in {entry['compile_s']} s)" if "compile_s" in entry else ""
            print(f"{target} patch {patch}^3 batch {batch} on {space} device(s): {cell(entry)}{took}", flush=True)
            entries.append(entry)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"width": args.width, "dtype": args.dtype, "entries": entries}, indent=2))
    text = table(entries, args.patches, args.devices, args.batches)
    print(text)
    write_markdown(args.markdown, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
