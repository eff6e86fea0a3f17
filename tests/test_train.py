"""python -m genesis_jax.train: smoke run, device-count invariance, exact resume, restore on
another device count, SIGTERM, NaN handling, config errors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from genesis_jax.errors import UserError
from genesis_jax.trainer import TrainingDiverged, train
from runs import checkpoint_steps, damage, params_of, tiny_config, tiny_flags

ROOT = Path(__file__).resolve().parents[1]


def test_two_step_smoke_run_writes_everything(tmp_path):
    cfg = tiny_config(total_steps=2, export_pytorch=True)
    summary = train(cfg, tmp_path)
    assert summary["end_step"] == 2 and len(summary["train_losses"]) == 2
    assert all(np.isfinite(loss) for _, loss in summary["train_losses"])
    for name in ("config.json", "run_info.json", "tensorboard", "checkpoints/2"):
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
    with pytest.raises(UserError, match="trained with seed=0, the config says 1"):
        train(tiny_config(total_steps=2, seed=1), tmp_path)


def test_restore_onto_fewer_devices(tmp_path):
    train(tiny_config(num_devices=8, total_steps=2), tmp_path)
    summary = train(tiny_config(num_devices=4, total_steps=3), tmp_path)
    assert summary["start_step"] == 2 and summary["end_step"] == 3
    assert np.isfinite(summary["train_losses"][-1][1])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    cfg = tiny_config(total_steps=2)
    train(cfg, tmp_path)
    damage(tmp_path / "checkpoints" / "2")
    summary = train(tiny_config(total_steps=3), tmp_path)
    assert summary["start_step"] == 1
    assert "the checkpoint of step 2 is damaged" in capsys.readouterr().out
    assert list((tmp_path / "checkpoints").glob("2.unreadable-*"))


def test_nan_loss_stops_naming_the_step_and_keeps_good_checkpoints(tmp_path, monkeypatch):
    from genesis_jax.tasks import PretrainTask
    real = PretrainTask.load_data

    def poisoned(self):
        run_data = real(self)
        clean_batch = run_data.train.batch

        def batch(step, *args, **kwargs):
            cubes = clean_batch(step, *args, **kwargs)
            return cubes * np.nan if step == 2 else cubes

        run_data.train.batch = batch
        return run_data

    monkeypatch.setattr(PretrainTask, "load_data", poisoned)
    with pytest.raises(TrainingDiverged, match="at step 3"):
        train(tiny_config(total_steps=5), tmp_path)
    assert checkpoint_steps(tmp_path) == [1, 2]


def run_cli(args, workdir, **kwargs):
    """python -m genesis_jax.train on the suite's 8 simulated devices (conftest.py)."""
    return subprocess.Popen([sys.executable, "-m", "genesis_jax.train", f"--workdir={workdir}", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


TINY_FLAGS = tiny_flags("--config.eval_every=1000", "--config.checkpoint_every=1000")


def test_the_tiny_flags_give_the_tiny_config(tmp_path):
    """So that the command-line runs load the programs the in-process ones compiled (in a
    process of its own: absl's flags are global to the one they are parsed in)."""
    from genesis_jax.configs import describe
    proc = run_cli([*tiny_flags(), "--print_config"], tmp_path / "run")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert out.strip() == describe(tiny_config()).strip()


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path):
    proc = run_cli([*TINY_FLAGS, "--config.total_steps=100000", "--config.log_every=1"], tmp_path)
    output = wait_for_steps(proc, tmp_path)
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
                                        ("--config.schedule.kind=linear", "schedule.kind"),
                                        ("--config.optimizer.name=lamb", "optimizer.name")])
def test_bad_overrides_fail_before_any_work(tmp_path, flag, words):
    proc = run_cli([flag], tmp_path / "run")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], out
    assert "Traceback" not in out
    assert not (tmp_path / "run" / "checkpoints").exists()


def process_logs(logs: Path) -> str:
    """What each process printed last (progress redraws and gloo's connection lines left out)."""
    def shown(path):
        lines = shown_lines(path.read_text()) if path.exists() else ["(no log)"]
        return "\n".join(line for line in lines if line.strip() and not line.startswith("[Gloo]"))[-2500:]
    return "".join(f"\n--- {path.name}:\n{shown(path)}" for path in sorted(logs.glob("process_*.log")))


def test_two_processes_train_like_one_and_stop_together_on_sigterm(tmp_path):
    """launch/local_multiprocess.sh: 2 processes x 4 CPU devices (jax.distributed, gloo)
    train exactly like 1 process x 8 devices (the step-2 validation loss to 1e-5), and agree
    on the stop through JAX's preemption sync point (Orbax's reached_preemption): SIGTERM to
    process 1 alone makes both save the same step, in one shared checkpoint, and exit 0.
    Process 1 builds its model 35 s late (tests/late_process.py), past gloo's 30 s: the
    processes must line up before their first collective (genesis_jax/processes.py)."""
    flags = tiny_flags("--config.total_steps=100000", "--config.checkpoint_every=1000")
    logs = tmp_path / "logs"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "tests" / "late_process.py"}" 35 "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "LOGS": str(logs),
           "PYTHON": str(python)}
    proc = subprocess.Popen(["bash", str(ROOT / "launch" / "local_multiprocess.sh"), "2",
                             f"--workdir={tmp_path / 'mp'}", *flags], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_0, deadline = logs / "process_0.log", time.time() + 600  # two cold compiles sharing 2 CI cores
    while time.time() < deadline and proc.poll() is None and not (log_0.exists() and "val loss" in log_0.read_text()):
        time.sleep(1)
    assert proc.poll() is None and "val loss" in log_0.read_text(), "no validation yet:" + process_logs(logs)
    subprocess.run(["pkill", "-TERM", "-f", f"process_id=1 --workdir={tmp_path / 'mp'}"], check=True)
    proc.communicate(timeout=300)
    assert proc.returncode == 0, process_logs(logs)
    texts = [(logs / f"process_{i}.log").read_text() for i in range(2)]
    saved = [int(text.split("SIGTERM: saved the checkpoint of step ")[1].split()[0]) for text in texts]
    assert saved[0] == saved[1] >= 2, saved
    assert (tmp_path / "mp" / "checkpoints" / str(saved[0])).exists()
    single = train(tiny_config(total_steps=2), tmp_path / "single")
    val = float(texts[0].split("step 2: val loss ")[1].split()[0])
    assert abs(val - single["val_losses"][-1][1]) < 1e-5, (val, single["val_losses"])


def shown_lines(output: str) -> list[str]:
    """The lines a terminal shows: what follows the last carriage return of each line."""
    return [line.split("\r")[-1] for line in output.split("\n")]


def wait_for_steps(proc, workdir, seconds=240) -> str:
    deadline, output = time.time() + seconds, ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        output += line
        if "loss=" in line or (workdir / "tensorboard").exists() and "step/s" in line:
            break
    return output


def wait_for_line(proc, text: str, seconds=240) -> str:
    deadline, output = time.time() + seconds, ""
    while time.time() < deadline and text not in output:
        line = proc.stdout.readline()
        if not line:  # the process ended
            break
        output += line
    return output


def test_ctrl_c_saves_like_sigterm_and_says_so_on_its_own_line(tmp_path):
    proc = run_cli([*TINY_FLAGS, "--config.total_steps=100000", "--config.log_every=1"], tmp_path)
    output = wait_for_steps(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=240)
    output += rest
    assert proc.returncode == 0, output
    shown = shown_lines(output)
    assert any(line.startswith("Ctrl-C: saving a checkpoint at the end of this step, then exiting (Ctrl-C again "
                               "aborts now, without saving)") for line in shown), output
    assert any(line.startswith("Ctrl-C: saved the checkpoint of step") for line in shown), output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output


def test_a_second_ctrl_c_aborts_at_once_in_one_line(tmp_path):
    proc = run_cli([*TINY_FLAGS, "--config.total_steps=100000", "--config.log_every=1"], tmp_path)
    output = wait_for_steps(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    # Python runs a handler once for signals that arrive while XLA runs a step: the second
    # Ctrl-C goes once the first one's handler has spoken.
    output += wait_for_line(proc, "Ctrl-C: saving a checkpoint")
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=240)
    output += rest
    assert proc.returncode == 130, output
    # "aborted: nothing saved since ..." in the loop, "aborted: the checkpoint of step N was saved ..." when the
    # first Ctrl-C's save had already finished; either way one line and no traceback
    assert "\naborted: " in output and "Traceback" not in output and "KeyboardInterrupt" not in output


def test_help_lists_the_configs_flags_and_how_to_see_every_field(tmp_path):
    for program, configs in (("genesis_jax.train", ("demo", "genesis_chest_ct", "multi_device")),
                             ("genesis_jax.finetune", ("segmentation", "classification"))):
        for flag in ("--help", "-h", "--helpfull"):
            proc = subprocess.run([sys.executable, "-m", program, flag], cwd=ROOT, capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
            assert all(f"\n  {name} " in proc.stdout for name in configs), proc.stdout
            assert "--workdir" in proc.stdout and "--print_config" in proc.stdout


def test_print_config_lists_every_field_with_a_meaning_and_the_overrides(tmp_path):
    proc = run_cli(["--config=classification", "--print_config", "--config.batch_size=16"], tmp_path / "run")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "batch_size = 16 " in out and "data.train_csv = ''" in out
    assert not (tmp_path / "run").exists()


def test_every_config_field_has_a_meaning():
    from genesis_jax.configs import describe
    from genesis_jax.configs.base import base_config, classification_base, segmentation_base
    for config in (base_config(), segmentation_base(), classification_base()):
        undocumented = [line for line in describe(config).splitlines() if "  # " not in line]
        assert not undocumented, undocumented


def test_an_unknown_field_is_one_clean_line_with_a_suggestion(tmp_path):
    proc = run_cli(["--config.bach_size=3"], tmp_path / "run")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert out.strip().splitlines()[-1] == ("error: unknown config field 'bach_size' (in --config.bach_size); did you "
                                            "mean 'batch_size'? (--print_config lists every field)")


def test_a_field_given_twice_takes_the_last_value(tmp_path):
    proc = run_cli(["--config.data.cube_shape=(16, 16, 16)", "--config.batch_size=4",
                    "--config.data.cube_shape=(32, 32, 16)", "--config.batch_size=16", "--print_config"], tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "data.cube_shape = (32, 32, 16) " in out and "\nbatch_size = 16 " in out, out


def test_a_run_that_fails_before_starting_names_no_run_directory(tmp_path):
    (tmp_path / "damaged.zarr").mkdir()
    (tmp_path / "damaged.zarr" / "zarr.json").write_text("{}")  # fails when the data is opened, after the checks
    proc = run_cli([*TINY_FLAGS, "--config.data.source=store", f"--config.data.store={tmp_path / 'damaged.zarr'}"],
                   tmp_path / "run")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "damaged.zarr: not a readable cube store" in out and "Traceback" not in out, out
    assert "run directory" not in out and not (tmp_path / "run").exists()


def test_a_failed_run_removes_the_directories_it_created_parents_included(tmp_path):
    (tmp_path / "damaged.zarr").mkdir()
    (tmp_path / "damaged.zarr" / "zarr.json").write_text("{}")
    (tmp_path / "kept").mkdir()
    for workdir in (tmp_path / "runs" / "chest" / "run", tmp_path / "kept" / "new" / "run"):
        with pytest.raises(UserError, match="not a readable cube store"):
            train(tiny_config(**{"data.source": "store", "data.store": str(tmp_path / "damaged.zarr")}), workdir)
    assert not (tmp_path / "runs").exists()
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "new").exists()  # there before: stays


def test_resuming_a_finished_run_says_it_is_done(tmp_path):
    # the finished run in process (its programs are this process's): what the flags below give
    assert train(tiny_config(total_steps=2, eval_every=2, checkpoint_every=1000), tmp_path)["end_step"] == 2
    again = run_cli([*TINY_FLAGS, "--config.total_steps=2", "--config.eval_every=2"], tmp_path)
    out, _ = again.communicate(timeout=240)
    assert again.returncode == 0, out
    assert "done: the run had already finished at step 2 (best validation loss" in out, out
