"""python -m genesis_jax.train: smoke run, device-count invariance, exact resume, restore on
another device count, SIGTERM, NaN handling, config errors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from genesis_jax.configs.demo import get_config
from genesis_jax.trainer import TrainingDiverged, load_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**top):
    c = get_config()
    c.total_steps, c.batch_size, c.steps_per_epoch = 3, 8, 2
    c.eval_every, c.checkpoint_every, c.log_every = 2, 1, 1
    c.data.cube_shape, c.data.val_cubes = (16, 16, 16), 8
    c.deform.local_blocks = 300
    c.images, c.export_pytorch = 2, False
    for key, value in top.items():
        c[key] = value
    return c


def params_of(cfg, workdir):
    from flax import nnx
    model, meta = load_checkpoint(cfg, workdir)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))], meta


def test_two_step_smoke_run_writes_everything(tmp_path):
    cfg = tiny_config(total_steps=2, export_pytorch=True)
    summary = train(cfg, tmp_path)
    assert summary["end_step"] == 2 and len(summary["train_losses"]) == 2
    assert all(np.isfinite(loss) for _, loss in summary["train_losses"])
    for name in ("config.json", "run_info.json", "tensorboard", "checkpoints/latest/2", "checkpoints/best"):
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "images").glob("val_restoration_*.png"))
    if summary.get("pytorch_export"):  # torch present (CI installs it)
        assert Path(summary["pytorch_export"]).exists()


def test_one_and_eight_devices_give_the_same_losses(tmp_path):
    one = train(tiny_config(num_devices=1, total_steps=2, eval_every=0), tmp_path / "one")
    eight = train(tiny_config(num_devices=8, total_steps=2, eval_every=0), tmp_path / "eight")
    np.testing.assert_allclose([l for _, l in one["train_losses"]], [l for _, l in eight["train_losses"]], atol=1e-5)


def test_resume_is_bitwise_exact(tmp_path):
    cfg = tiny_config(total_steps=4)
    train(cfg, tmp_path / "straight")
    train(tiny_config(total_steps=2), tmp_path / "resumed")
    summary = train(cfg, tmp_path / "resumed")
    assert summary["start_step"] == 2
    straight, meta_a = params_of(cfg, tmp_path / "straight")
    resumed, meta_b = params_of(cfg, tmp_path / "resumed")
    assert meta_a == meta_b
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)


def test_resuming_with_another_seed_is_refused(tmp_path):
    train(tiny_config(total_steps=1), tmp_path)
    with pytest.raises(ValueError, match="written with seed 0, the config says 1"):
        train(tiny_config(total_steps=2, seed=1), tmp_path)


def test_restore_onto_fewer_devices(tmp_path):
    train(tiny_config(num_devices=8, total_steps=2), tmp_path)
    summary = train(tiny_config(num_devices=4, total_steps=3), tmp_path)
    assert summary["start_step"] == 2 and summary["end_step"] == 3
    assert np.isfinite(summary["train_losses"][-1][1])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    cfg = tiny_config(total_steps=2)
    train(cfg, tmp_path)
    latest = tmp_path / "checkpoints" / "latest" / "2"
    for f in latest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in str(f):
            f.write_bytes(b"\0" * 16)
    summary = train(tiny_config(total_steps=3), tmp_path)
    assert summary["start_step"] == 1
    assert "checkpoint at step 2 is unreadable" in capsys.readouterr().out


def test_nan_loss_stops_naming_the_step_and_keeps_good_checkpoints(tmp_path, monkeypatch):
    import genesis_jax.trainer as trainer
    real = trainer.load_run_data

    def poisoned(data, seed):
        run_data = real(data, seed)
        clean_batch = run_data.train.batch

        def batch(step, *args, **kwargs):
            cubes = clean_batch(step, *args, **kwargs)
            return cubes * np.nan if step == 2 else cubes

        run_data.train.batch = batch
        return run_data

    monkeypatch.setattr(trainer, "load_run_data", poisoned)
    with pytest.raises(TrainingDiverged, match="at step 3"):
        train(tiny_config(total_steps=5), tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints" / "latest").iterdir() if p.name.isdigit())
    assert steps == [1, 2]


def run_cli(args, workdir, **kwargs):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "genesis_jax.train", f"--workdir={workdir}", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


TINY_FLAGS = ["--config.batch_size=2", "--config.data.cube_shape=(16, 16, 16)", "--config.data.val_cubes=2",
              "--config.deform.local_blocks=300", "--config.export_pytorch=False", "--config.eval_every=1000",
              "--config.checkpoint_every=1000", "--config.images=1"]


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path):
    proc = run_cli([*TINY_FLAGS, "--config.total_steps=100000", "--config.log_every=1"], tmp_path)
    deadline = time.time() + 240
    output = ""
    while time.time() < deadline:  # wait until steps are running
        line = proc.stdout.readline()
        output += line
        if "loss=" in line or (tmp_path / "tensorboard").exists() and "step/s" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=240)
    output += rest
    assert proc.returncode == 0, output
    assert "SIGTERM: saved the checkpoint of step" in output
    saved = int(output.split("SIGTERM: saved the checkpoint of step ")[1].split()[0])
    resumed = run_cli([*TINY_FLAGS, f"--config.total_steps={saved + 1}"], tmp_path)
    out, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out
    assert f"resumed from step {saved}" in out


@pytest.mark.parametrize("flag,words", [("--config.no_such_field=1", "no_such_field"),
                                        ("--config.batch_size=many", "batch_size"),
                                        ("--config.schedule.kind=cosine", "schedule.kind")])
def test_bad_overrides_fail_before_any_work(tmp_path, flag, words):
    proc = run_cli([flag], tmp_path / "run")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], out
    assert "Traceback" not in out
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_two_processes_match_one_process(tmp_path):
    """launch/local_multiprocess.sh: 2 processes x 4 CPU devices (jax.distributed, gloo)
    train exactly like 1 process x 8 devices: same losses to 1e-5, one shared checkpoint."""
    flags = ["--config.total_steps=2", "--config.batch_size=8", "--config.data.cube_shape=(16, 16, 16)",
             "--config.data.val_cubes=8", "--config.deform.local_blocks=300", "--config.export_pytorch=False",
             "--config.eval_every=2", "--config.checkpoint_every=1", "--config.log_every=1"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "LOGS": str(tmp_path / "logs"),
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "launch" / "local_multiprocess.sh"), "2",
                           f"--workdir={tmp_path / 'mp'}", *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    logs = "".join((tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2))
    assert proc.returncode == 0, logs[-3000:]
    single = train(tiny_config(total_steps=2), tmp_path / "single")
    val = float(logs.split("step 2: val loss ")[1].split()[0])
    assert abs(val - single["val_losses"][-1][1]) < 1e-5, (val, single["val_losses"])
    assert (tmp_path / "mp" / "checkpoints" / "latest" / "2").exists()
