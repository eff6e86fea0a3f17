"""python -m genesis_jax.train --dry_run: compiles the configured step without data or
training and reports per-device memory, FLOPs, collectives and the largest batch."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genesis_jax.configs.demo import get_config
import math

from genesis_jax.dryrun import dry_run, largest_batch, search_largest_batch

# What the compiled programs do is the point here: XLA's optimisations on (conftest.py).
pytestmark = pytest.mark.optimized

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config.batch_size=16", "--config.data.cube_shape=(16, 16, 16)", "--config.deform.local_blocks=300"]


def tiny(**top):
    c = get_config()
    c.batch_size, c.data.cube_shape, c.deform.local_blocks = 16, (16, 16, 16), 300
    for key, value in top.items():
        c[key] = value
    return c


def run_cli(args, cwd):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "genesis_jax.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_dry_run_prints_the_table_and_writes_json_without_touching_a_workdir(tmp_path):
    out = tmp_path / "report.json"
    proc = run_cli(["--dry_run", *TINY, "--device_memory_gb=1", f"--json={out}", f"--workdir={tmp_path / 'run'}"],
                   ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("memory: arguments", "memory: temporaries", "memory: outputs", "memory: peak", "model FLOPs per step",
                "XLA's FLOPs per step", "collective: all-reduce", "compile time", "largest batch that fits"):
        assert row in proc.stdout, (row, proc.stdout)
    assert "global 16 = 2 per device" in proc.stdout
    report = json.loads(out.read_text())
    assert report["devices"] == 8 and report["per_device_batch"] == 2
    assert set(report["per_device"]["collectives"]) == {"all-reduce"}
    fit = report["fit"]
    assert fit["largest_per_device_batch"] > 2
    # The answer was compiled and fits the 1 GiB; every larger batch compiled did not.
    peaks = {c["per_device_batch"]: c["peak_bytes"] for c in fit["checked"]}
    assert peaks[fit["largest_per_device_batch"]] <= 2**30
    assert all(p > 2**30 for b, p in peaks.items() if b > fit["largest_per_device_batch"])
    assert not (tmp_path / "run").exists()


def test_dry_run_flops_are_per_device_and_split(monkeypatch):
    """The same global batch on 1 and 8 devices: each of 8 does an eighth of the work.
    With a data sheet for this CPU (1 TFLOP/s, 10 GB/s), the roofline is read from the
    compiled program's own counts. A memory too small for one example says so."""
    import genesis_jax.dryrun as dryrun
    monkeypatch.setitem(dryrun.DEVICE_SPECS, "cpu", (2, 1, 10))
    one = dry_run(tiny(num_devices=1), fit=False)
    eight = dry_run(tiny(num_devices=8), device_memory_gb=0.001)
    assert eight["fit"]["largest_per_device_batch"] is None
    assert "even one example per device does not fit" in dryrun.format_report(eight)
    assert eight["per_device"]["flops"] <= 1.1 * one["per_device"]["flops"] / 8
    assert one["per_device"]["collectives"] == {}
    assert eight["per_device"]["peak_bytes"] < one["per_device"]["peak_bytes"]
    bound = one["roofline"]
    flops = max(one["per_device"]["flops"], one["model_flops_per_device"])
    assert bound["compute_s"] == pytest.approx(flops / 1e12) and bound["memory_s"] == pytest.approx(
        one["per_device"]["bytes_accessed"] / 1e10)
    assert bound["step_s"] == max(bound["compute_s"], bound["memory_s"])
    assert bound["samples_per_s_per_device"] == pytest.approx(16 / bound["step_s"])
    assert eight["roofline"]["step_s"] < bound["step_s"] / 4  # each of 8 devices: an eighth of the counts
    assert "roofline (data sheet)  at most" in dryrun.format_report(one)


def test_the_roofline_takes_the_slower_of_compute_and_hbm():
    """v5e's recorded pre-training step (benchmarks/results/dry_run_v5e_2x2_compute.json):
    5.47 TFLOP (XLA) / 5.86 (the model) and 32.83 GiB per chip: HBM-bound on v5e's 819 GB/s,
    compute-bound with 4x the bandwidth."""
    from genesis_jax.dryrun import roofline
    v5e = roofline(5.47e12, 32.83 * 2**30, 5.859e12, 197e12, 819e9)
    assert v5e["bound"] == "memory (HBM)"
    assert v5e["compute_s"] == pytest.approx(5.859e12 / 197e12) and v5e["memory_s"] == pytest.approx(0.04304, 1e-3)
    assert v5e["mfu_ceiling"] == pytest.approx(0.691, abs=1e-3)
    fast = roofline(5.47e12, 32.83 * 2**30, 5.859e12, 197e12, 4 * 819e9)
    assert fast["bound"] == "compute" and fast["mfu_ceiling"] == pytest.approx(1.0)
    gpu = roofline(0.79e12, 1e9, 5.86e12, 989e12, 3350e9)  # XLA's count leaves out cuDNN: the model's counts
    assert gpu["compute_s"] == pytest.approx(5.86e12 / 989e12)


def test_the_roofline_charges_hbm_with_device_memory_where_the_module_keeps_buffers_on_chip():
    """The v5e step of benchmarks/results/dry_run_v5e_2x2_shuffle_points.json: XLA counts
    32.20 GiB accessed, 8.75 of them reads and writes of on-chip (VMEM) buffers; the
    roofline charges HBM the 25.05 GiB of device-memory buffers. A module without
    memory spaces (CPU, GPU, older records) keeps XLA's count."""
    import json
    from pathlib import Path
    from genesis_jax.hlo_cost import roofline_bytes
    v5e = json.loads((Path(__file__).parents[1] / "benchmarks/results/dry_run_v5e_2x2_shuffle_points.json").read_text())
    charged, source = roofline_bytes(v5e["per_device"])
    assert source == "device-memory buffers" and charged == v5e["per_device"]["hlo"]["bytes_by_space"]["device memory"]
    assert 0.7 < charged / v5e["per_device"]["bytes_accessed"] < 0.85
    assert v5e["roofline"]["hbm_bytes"] == charged
    cpu = {"bytes_accessed": 1e9, "hlo": {"bytes_by_space": {"device memory": 3e8}}}
    assert roofline_bytes(cpu) == (1e9, "XLA's bytes accessed")
    offloaded = {"bytes_accessed": 1e9, "hlo": {"bytes_by_space": {"device memory": 3e8, "host memory": 2e8}}}
    assert roofline_bytes(offloaded) == (1e9, "XLA's bytes accessed")
    v4 = {"bytes_accessed": 1e9, "hlo": {"bytes_by_space": {"device memory": 3e8, "memory space 3": 2e8}}}
    assert roofline_bytes(v4) == (3e8, "device-memory buffers")
    assert roofline_bytes({"bytes_accessed": 2e9}) == (2e9, "XLA's bytes accessed")


def test_largest_batch_is_the_linear_fit():
    # 100 MiB fixed + 10 MiB per example, 1 GiB device: (1024 - 100) / 10 -> 92.
    mib = 2**20
    fits, per_example, fixed = largest_batch(2, 120 * mib, 4, 140 * mib, 1024 * mib)
    assert (fits, per_example, fixed) == (92, 10 * mib, 100 * mib)


GIB = 2**30


@pytest.mark.parametrize("name,peak,expected", [
    # linear: 1 GiB + 0.5 GiB per example in 16 GiB -> 30
    ("linear", lambda b: GIB + b * GIB / 2, 30),
    # TPU-like: linear until the compiler starts rematerialising at 12 GiB, flat up to 80
    # examples, out of memory beyond: the answer is found past the flat part.
    ("saturating", lambda b: (min(GIB + b * GIB / 2, 12 * GIB) if b <= 80 else math.inf), 80),
    # nothing fits
    ("too big", lambda b: 20 * GIB * b, None),
])
def test_batch_search(name, peak, expected):
    calls = []

    def peak_at(b):
        calls.append(b)
        return peak(b)

    fit = search_largest_batch(peak_at, 2, peak(2), 16 * GIB, max_checks=8)
    assert fit["largest_per_device_batch"] == expected, (name, calls, fit)
    assert len(calls) <= 9
    if expected:
        assert peak(expected) <= 16 * GIB


def test_dry_run_needs_no_store_but_still_validates(tmp_path):
    proc = run_cli(["--dry_run", "--config=genesis_chest_ct", "--config.model.dtype=float16"], ROOT)
    assert proc.returncode == 2 and "model.dtype" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,words", [(["--dry_run", "--topology=v99:1x1"], "v99:1x1"),
                                        (["--topology=v5e:2x2"], "go with --dry_run")])
def test_bad_dry_run_requests_get_one_line(tmp_path, args, words):
    proc = run_cli([*args, *TINY], tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and words in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu: pip install 'genesis-jax[tpu]'")
def test_tpu_ahead_of_time_compile_splits_the_batch():
    """v5e: 1 chip vs a 2x2 slice at the same global batch: per-chip FLOPs are 1/4 and the
    only collectives are all-reduces (before the fix: the whole batch on every chip).
    Batch 32 at width 16: the TPU cost model is not linear at 1-2 examples per chip
    (seen: width 16, one chip, 53.1 GFLOP at batch 2 and 159.4 at batch 8), so a tiny
    batch would blur the 1/4 that holds exactly at 8 per chip (637.4 -> 159.4)."""
    cfg = tiny(batch_size=32, num_devices=1)
    cfg.data.cube_shape, cfg.model.width = (32, 32, 16), 16
    one = dry_run(cfg, topology="v5e:2x2", fit=False)
    cfg.num_devices = 4
    four = dry_run(cfg, topology="v5e:2x2", fit=False)
    assert (one["devices"], four["devices"]) == (1, 4)
    assert four["per_device"]["flops"] <= 1.1 * one["per_device"]["flops"] / 4
    assert set(four["per_device"]["collectives"]) == {"all-reduce"}


def test_the_dry_run_builds_the_deformations_of_its_target_not_of_this_host():
    """A TPU slice compiled from a CPU host gets the TPU's deformation path: vmapped, and
    lookups recomputed per voxel (no table gathers); `auto` only, an explicit choice stays."""
    from genesis_jax.tasks import PretrainTask
    resolved = {}
    for platform in ("tpu", "gpu", "cpu"):
        task = PretrainTask(get_config(), platform=platform)
        task.check_config()
        resolved[platform] = (task.deform.batch_mode, task.deform.lookups)
    assert resolved == {"tpu": ("vmap", "compute"), "gpu": ("vmap", "table"), "cpu": ("map", "table")}
    cfg = get_config()
    cfg.deform.lookups = "table"
    task = PretrainTask(cfg, platform="tpu")
    task.check_config()
    assert task.deform.lookups == "table"


def segmentation_dry_config(space, batch, devices=0, patch=(32, 16, 16)):
    from genesis_jax.configs.segmentation import get_config as segmentation_config
    cfg = segmentation_config()
    cfg.data.patch_shape, cfg.model.width, cfg.mesh.space, cfg.batch_size = patch, 4, space, batch
    cfg.num_devices = devices
    return cfg


def test_the_segmentation_dry_run_splits_each_patch_over_the_space_axis():
    """--config.mesh.space=4 on 8 devices: mesh (data 2, space 4), a patch's FLOPs a
    quarter per device, halos as collective-permutes, the same FLOPs per sample."""
    one = dry_run(segmentation_dry_config(1, 2, devices=1), fit=False)
    split = dry_run(segmentation_dry_config(4, 2), fit=False)
    assert split["mesh"] == {"data": 2, "space": 4} and split["per_device_batch"] == 1
    assert split["per_device"]["flops"] <= 1.15 * one["per_device"]["flops"] / 2 / 4
    assert set(split["per_device"]["collectives"]) == {"all-reduce", "collective-permute"}
    assert split["model_flops_per_sample"] == pytest.approx(one["model_flops_per_sample"])
    assert split["halo"]["permuted_bytes"] == pytest.approx(split["halo"]["predicted_bytes"], rel=0.5)
    assert one["halo"] is None


def test_finetune_dry_run_cli_reports_the_space_axis(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "seg.json"
    proc = subprocess.run([sys.executable, "-m", "genesis_jax.finetune", "--dry_run", "--config.mesh.space=4",
                           "--config.batch_size=2", "--config.model.width=4", "--config.data.patch_shape=(32, 16, 16)",
                           f"--json={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "mesh ('data': 2, 'space': 4)" in proc.stdout and "X split over 4 devices (8 per device)" in proc.stdout
    assert json.loads(out.read_text())["mesh"] == {"data": 2, "space": 4}
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu: pip install 'genesis-jax[tpu]'")
def test_tpu_ahead_of_time_compile_splits_a_patch():
    """v5e: one 64x32x32 patch on 1 chip vs split over 4: per-chip FLOPs at most 1.15 x 1/4,
    halos as collective-permutes (no more than predicted), no all-gather."""
    one = dry_run(segmentation_dry_config(1, 1, devices=1, patch=(64, 32, 32)), topology="v5e:2x2", fit=False)
    four = dry_run(segmentation_dry_config(4, 1, devices=4, patch=(64, 32, 32)), topology="v5e:2x2", fit=False)
    assert four["per_device"]["flops"] <= 1.15 * one["per_device"]["flops"] / 4
    assert "collective-permute" in four["per_device"]["collectives"]
    assert "all-gather" not in four["per_device"]["collectives"]
    # the TPU compiler moves less than the CPU's halo (it reuses the forward's halo for the
    # kernel gradient, and more at this width: 0.39 of the prediction), never more
    assert 0 < four["halo"]["permuted_bytes"] <= four["halo"]["predicted_bytes"]
