"""Every benchmark in one run: one table, one JSON.

    python -m benchmarks.run [--quick] [--json PATH] [--markdown PATH]

Sections, all measured in this one process on this machine (the compile times in two
child processes that share one fresh cache folder):
- deformations: the NumPy reference (one cube at a time, as the official code) against
  `genesis_batch`, the pipeline and each deformation alone;
- train step: samples/s, ms/step, MFU (where the device's bf16 peak is known) and peak
  memory by width, batch and dtype, the same step in PyTorch beside it (fp32; on a GPU
  also bf16 autocast with channels_last_3d);
- end to end: the step alone, deformation + step, and host data + transfer +
  deformation + step;
- end to end also: `python -m genesis_jax.train` itself from a cube store (samples/s from
  its own log) and, where PyTorch is importable, the official-style loop (NumPy
  reference deformations in the main process feeding the PyTorch step, batch 6);
- profile: a jax.profiler trace of a few restoration steps, time per kind of operation;
- compile: the first compile of the pre-training step, cold and through the train CLI's
  persistent compilation cache, with XLA's peak memory per device for that step.

--quick runs the same sections at toy sizes (a minute or two on 2 CPU cores) and is
what CI runs (tests/test_benchmarks.py checks the table is complete and well-formed,
never the timings). The full mode takes about 10 minutes on the 2-core CPU. Timings are
medians after warm-up calls, each call ending in block_until_ready.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

from benchmarks import deform_throughput, end_to_end, official_pipeline, profile_step, train_cli, train_step
from benchmarks.common import write_json, write_markdown

SECTIONS = ("deformations", "train step", "end to end", "profile", "compile")
COLUMNS = ("section", "what", "setting", "value", "unit", "compared")


def plan(quick: bool, backend: str) -> dict:
    """Sizes per section: toy ones for --quick, the README's on CPU, the issue's on GPU/TPU."""
    if quick:
        return {"deform": dict(shape=(32, 32, 16), batches=[4], repeats=2, reference_cubes=2),
                "step": [dict(width=4, batch=2, shape=(32, 32, 16), dtype="float32")], "steps": 2, "warmup": 1,
                "e2e": dict(width=4, batch=2, shape=(32, 32, 16), dtype="float32", steps=2, warmup=1),
                "compile": dict(width=4, batch=2, shape=(32, 32, 16), dtype="float32")}
    if backend == "cpu":
        return {"deform": dict(shape=(64, 64, 32), batches=[6, 64, 256], repeats=5, reference_cubes=20),
                "step": [dict(width=8, batch=2, shape=(64, 64, 32), dtype="float32"),
                         dict(width=32, batch=2, shape=(64, 64, 32), dtype="float32")], "steps": 3, "warmup": 1,
                "e2e": dict(width=4, batch=8, shape=(32, 32, 16), dtype="float32", steps=5, warmup=2),
                "compile": dict(width=8, batch=2, shape=(64, 64, 32), dtype="float32")}
    return {"deform": dict(shape=(64, 64, 32), batches=[64, 256, 1024, 4096], repeats=5, reference_cubes=10),
            "step": [dict(width=32, batch=32, shape=(64, 64, 32), dtype="bfloat16")], "steps": 10, "warmup": 3,
            "e2e": dict(width=32, batch=32, shape=(64, 64, 32), dtype="bfloat16", steps=5, warmup=2),
            "compile": dict(width=32, batch=32, shape=(64, 64, 32), dtype="bfloat16")}


def environment() -> dict:
    device = jax.devices()[0]
    versions = {"jax": jax.__version__, "python": platform.python_version()}
    for name in ("jaxlib", "flax", "optax", "numpy", "torch"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {"backend": jax.default_backend(), "device": getattr(device, "device_kind", str(device)),
            "devices": jax.device_count(), "cpu_cores": os.cpu_count(), "machine": platform.machine(),
            "versions": versions, "date": datetime.date.today().isoformat()}


def row(section, what, setting, value, unit, compared="-") -> dict:
    return {"section": section, "what": what, "setting": setting, "value": float(value), "unit": unit,
            "compared": compared}


def shape_text(shape) -> str:
    return "x".join(map(str, shape))


def deformation_rows(p: dict) -> list[dict]:
    d = p["deform"]
    ref = deform_throughput.bench_reference(d["reference_cubes"], d["shape"])
    where = f"{shape_text(d['shape'])} cubes"
    rows = [row("deformations", "NumPy reference pipeline", f"{where}, one at a time", ref["cubes_per_s"], "cubes/s",
                "1.0x")]
    for batch in d["batches"]:
        run = deform_throughput.bench_jax(batch, d["shape"], d["repeats"], deform_throughput.DeformConfig())
        rows.append(row("deformations", "genesis_batch pipeline", f"{where}, batch {batch}", run["cubes_per_s"],
                        "cubes/s", f"{run['cubes_per_s'] / ref['cubes_per_s']:.1f}x reference"))
    batch = max(d["batches"])
    jax_stages = deform_throughput.bench_stages(batch, d["shape"], d["repeats"])
    ref_stages = deform_throughput.bench_reference_stages(min(d["reference_cubes"], 10), d["shape"])
    for name, ms in jax_stages.items():
        rows.append(row("deformations", f"{name} alone", f"{where}, batch {batch}, on every cube", ms, "ms/cube",
                        f"{ref_stages[name] / ms:.1f}x reference ({ref_stages[name]:.3f} ms/cube)"))
    return rows


def train_step_rows(p: dict, peak_tflops: float | None, with_torch: bool) -> list[dict]:
    rows = []
    for s in p["step"]:
        dtype = jax.numpy.dtype(s["dtype"])
        setting = f"width {s['width']}, batch {s['batch']}, {shape_text(s['shape'])}, {dtype.name}"
        j = train_step.bench_jax_step(s["batch"], s["width"], s["shape"], dtype, p["steps"], p["warmup"])
        conv = train_step.resolve_conv_mode("auto")
        torch_rows = []
        if with_torch:
            precisions = [jax.numpy.float32] + ([jax.numpy.bfloat16] if jax.default_backend() != "cpu" else [])
            torch_rows = [train_step.bench_torch_step(s["batch"], s["width"], s["shape"], t, p["steps"], p["warmup"])
                          for t in precisions]
        same = next((t for t in torch_rows if t["autocast_bf16"] == (dtype == jax.numpy.bfloat16)), None)
        vs = f"{j['samples_per_s'] / same['samples_per_s']:.2f}x PyTorch" if same else "-"
        rows.append(row("train step", f"JAX step ({conv} conv)", setting, j["samples_per_s"], "samples/s", vs))
        rows.append(row("train step", "JAX step time", setting, 1e3 * j["median_step_s"], "ms/step"))
        if peak_tflops:
            mfu = j["samples_per_s"] * j["flops_per_sample"] / (peak_tflops * 1e12)
            rows.append(row("train step", "JAX MFU", setting, 100 * mfu, "%",
                            f"{j['flops_per_sample'] / 1e9:.1f} GFLOP/sample, peak {peak_tflops:.0f} TFLOP/s"))
        rows.append(row("train step", "JAX peak memory per device (XLA)", setting, j["peak_bytes"] / 2**20, "MiB"))
        for t in torch_rows:
            kind = "bf16 autocast, channels_last_3d" if t["autocast_bf16"] else "fp32, channels_last_3d"
            rows.append(row("train step", f"PyTorch {t['torch']} step ({kind})",
                            f"width {s['width']}, batch {s['batch']}, {shape_text(s['shape'])}",
                            t["samples_per_s"], "samples/s"))
    return rows


def size_args(s: dict) -> list[str]:
    return ["--batch", str(s["batch"]), "--width", str(s["width"]), "--shape", *map(str, s["shape"]),
            "--dtype", s["dtype"]]


def end_to_end_rows(p: dict) -> list[dict]:
    e = p["e2e"]
    result = end_to_end.main(size_args(e) + ["--steps", str(e["steps"]), "--warmup", str(e["warmup"])])
    setting = f"width {e['width']}, batch {e['batch']}, {shape_text(e['shape'])}, {e['dtype']}"
    names = {"step alone": "step alone (corrupted batch given)", "deform + step": "deformation + step",
             "full loop": "host data + transfer + deformation + step"}
    return [row("end to end", names[name], setting, r["samples_per_s"], "samples/s",
                f"{100 * r['overhead_vs_step']:+.1f}% time vs step alone") for name, r in result["rows"].items()]


def train_cli_rows(p: dict) -> list[dict]:
    e = p["e2e"]
    result = train_cli.main(size_args(e) + ["--steps", str(max(e["steps"], 3)), "--windows", "2"])
    setting = f"width {e['width']}, batch {e['batch']}, {shape_text(e['shape'])}, {e['dtype']}, from a cube store"
    return [row("end to end", "python -m genesis_jax.train", setting, result["samples_per_s"], "samples/s",
                f"its own log, median of {len(result['windows_samples_per_s']) - 1} windows after the compile")]


def official_rows(p: dict) -> list[dict]:
    e = dict(p["e2e"], batch=6)
    result = official_pipeline.main(size_args(e) + ["--steps", str(e["steps"]), "--warmup", str(e["warmup"])])
    setting = f"width {e['width']}, batch 6, {shape_text(e['shape'])}, {e['dtype']}"
    return [row("end to end", "official-style loop (NumPy reference deformations + PyTorch step)", setting,
                result["samples_per_s"], "samples/s",
                f"deformations {100 * result['deform_share']:.0f}% of its time")]


def profile_rows(p: dict) -> list[dict]:
    s = p["step"][-1]
    result = profile_step.main(size_args(s) + ["--steps", str(p["steps"]), "--warmup", str(p["warmup"])])
    setting = f"width {s['width']}, batch {s['batch']}, {shape_text(s['shape'])}, {s['dtype']}"
    return [row("profile", kind, setting, k["ms_per_step"], "ms/step", f"{100 * k['share']:.1f}% of profiled time")
            for kind, k in result["kinds"].items() if k["ms_per_step"] > 0]


def compile_rows(p: dict) -> list[dict]:
    """Two child processes, one cache folder: a cold compile, then one that loads it."""
    c = p["compile"]
    args = size_args(c)
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="genesis_jax_cache_") as cache:
        runs = []
        for _ in range(2):
            proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_time", "--cache", cache, *args],
                                  cwd=root, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"benchmarks.compile_time failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cold, cached = runs
    setting = f"pre-training step, width {c['width']}, batch {c['batch']}, {shape_text(c['shape'])}, {c['dtype']}"
    return [row("compile", "first compile, empty cache", setting, cold["compile_s"], "s"),
            row("compile", "first compile, persistent cache", setting, cached["compile_s"], "s",
                f"{cold['compile_s'] / cached['compile_s']:.1f}x faster"),
            row("compile", "peak memory per device (XLA)", setting, cold["peak_bytes"] / 2**20, "MiB")]


def format_value(value: float) -> str:
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


def markdown(result: dict) -> str:
    env = result["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [f"Device: {env['device']} ({env['backend']}, {env['devices']} device(s), {env['cpu_cores']} CPU cores, "
             f"{env['machine']}); {versions}; {env['date']}; mode: {result['mode']}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|---|---|---|---:|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['section']} | {r['what']} | {r['setting']} | {format_value(r['value'])} | {r['unit']} | "
                     f"{r['compared']} |")
    return "\n".join(lines)


def problems(result: dict) -> list[str]:
    """What makes a result incomplete or malformed (empty list: none). No timing is judged."""
    found = []
    env = result.get("environment", {})
    for key in ("backend", "device", "versions", "date"):
        if not env.get(key):
            found.append(f"environment lacks {key}")
    if "jax" not in env.get("versions", {}):
        found.append("no jax version")
    rows = result.get("rows", [])
    for section in SECTIONS:
        if not any(r.get("section") == section for r in rows):
            found.append(f"no rows for section {section!r}")
    for i, r in enumerate(rows):
        if set(r) != {*COLUMNS, "device", "versions"}:
            found.append(f"row {i} has fields {sorted(r)}")
        elif not (isinstance(r["value"], float) and math.isfinite(r["value"]) and r["value"] > 0):
            found.append(f"row {i} ({r['what']}, {r['setting']}) has value {r['value']!r}")
        elif any("|" in str(r[c]) or not str(r[c]) for c in COLUMNS):
            found.append(f"row {i} has an empty cell or a '|' in one")
    expected = ["NumPy reference pipeline", "genesis_batch pipeline", "local_pixel_shuffle alone",
                "nonlinear_intensity alone", "inpaint alone", "outpaint alone", "flip alone",
                "JAX step time", "JAX peak memory per device (XLA)", "deformation + step",
                "host data + transfer + deformation + step", "python -m genesis_jax.train",
                "convolution forward", "convolution backward", "first compile, empty cache",
                "first compile, persistent cache"]
    whats = {r.get("what") for r in rows}
    found += [f"no row {w!r}" for w in expected if w not in whats]
    if result.get("torch") and not any(str(r.get("what", "")).startswith("PyTorch") for r in rows):
        found.append("torch importable but no PyTorch row")
    if result.get("torch") and not any(str(r.get("what", "")).startswith("official-style") for r in rows):
        found.append("torch importable but no official-style loop row")
    return found


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks that everything runs (CI)")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    env = environment()
    p = plan(args.quick, env["backend"])
    with_torch = "torch" in env["versions"]
    peak = train_step.peak_tflops(jax.devices()[0])
    result = {"benchmark": "suite", "mode": "quick" if args.quick else "full", "environment": env,
              "torch": with_torch, "plan": p, "rows": []}
    for name, make in (("deformations", lambda: deformation_rows(p)),
                       ("train step", lambda: train_step_rows(p, peak, with_torch)),
                       ("end to end", lambda: end_to_end_rows(p) + train_cli_rows(p)
                        + (official_rows(p) if with_torch else [])),
                       ("profile", lambda: profile_rows(p)), ("compile", lambda: compile_rows(p))):
        print(f"== {name}", flush=True)
        # Each JSON row names its device and versions, so rows pasted elsewhere keep them.
        result["rows"] += [dict(r, device=env["device"], versions=env["versions"]) for r in make()]
    table = markdown(result)
    print("\n" + table)
    issues = problems(result)
    if issues:
        print("\nincomplete: " + "; ".join(issues), file=sys.stderr)
    write_markdown(args.markdown, table)
    write_json(args.json, result)
    if issues:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
