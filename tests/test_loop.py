"""The loop's pieces: validation in sharded batches pictured from the scored pass, the
epoch of every data source, early stopping and the plateau rule counted in those
epochs, any optimizer plugged in, and user errors told apart from bugs."""

import jax
import numpy as np
import pytest
from flax import nnx

from genesis_jax import sharding
from genesis_jax.data.batches import InMemoryCubes
from genesis_jax.errors import UserError
from genesis_jax.evaluation import FrozenValidation, validation_batches
from genesis_jax.models import UNet3D
from genesis_jax.optim import recipe_sgd
from genesis_jax.step import init_train_state, make_eval_step, model_from_state
from genesis_jax.tasks import PretrainTask
from genesis_jax.trainer import Cadence, train
from runs import tiny_config

CUBE = (16, 16, 16)


# ---------------------------------------------------------------- validation

def test_validation_batches_are_batch_sized_and_split_over_the_devices():
    assert validation_batches(20, 8, 4) == [(0, 8), (8, 16), (16, 20)]
    assert validation_batches(21, 8, 4) == [(0, 8), (8, 16), (16, 20)]   # 1 left out: 21 does not split over 4
    assert validation_batches(8, 8, 8) == [(0, 8)]
    with pytest.raises(UserError, match="3 validation cubes do not split over 8 devices"):
        validation_batches(3, 8, 8)


def test_validation_is_scored_batch_by_batch_and_pictured_from_that_pass():
    """24 cubes, batch 8, 8 devices: three eval calls of 8 (not one of 24); the loss is
    the mean of the three batch losses; the picture's restorations equal a forward pass
    of the first batch alone (BatchNorm in batch mode: a batch of 2, or of 24, would
    normalise differently)."""
    cfg = tiny_config()
    task = PretrainTask(cfg)
    task.check_config()
    mesh = sharding.make_mesh()
    tx = recipe_sgd()
    graphdef, state = init_train_state(UNet3D(width=4, rngs=nnx.Rngs(0)), tx)
    state = sharding.replicate(state, mesh)
    key = jax.random.key(7)
    eval_step = make_eval_step(graphdef, task, key, mesh)
    calls = []

    def spy(state, batch, first_index):
        calls.append((batch.shape[0], first_index))
        return eval_step(state, batch, first_index)

    cubes = np.random.default_rng(0).random((24, *CUBE), dtype=np.float32)
    validation = FrozenValidation(InMemoryCubes(cubes), batch_size=8, mesh=mesh, images=2)
    metrics, (inputs, targets, outputs), _ = validation.evaluate(spy, state)
    assert calls == [(8, 0), (8, 8), (8, 16)]

    @jax.jit
    def one_batch_alone(state, batch, start):
        corrupted, target = task.prepare(key, batch, mesh, start)
        model = model_from_state(graphdef, state)
        model.eval()
        loss, restored = task.loss(model, corrupted, target)
        return loss, corrupted, target, restored

    losses = []
    for start in (0, 8, 16):
        loss, corrupted, target, restored = one_batch_alone(state, sharding.global_batch(cubes[start:start + 8], mesh),
                                                            start)
        losses.append(float(loss))
        if start == 0:
            np.testing.assert_allclose(outputs, np.asarray(restored)[:2], atol=1e-6)
            np.testing.assert_allclose(inputs, np.asarray(corrupted)[:2])
            np.testing.assert_allclose(targets, np.asarray(target)[:2])
    assert metrics["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert outputs.shape == (2, *CUBE)


def test_validation_examples_keep_their_corruption_whatever_the_batch():
    """Example i is corrupted with fold_in(key, i): batch 8 or batch 16, same inputs."""
    cfg = tiny_config()
    task = PretrainTask(cfg)
    task.check_config()
    mesh = sharding.make_mesh()
    cubes = np.random.default_rng(1).random((16, *CUBE), dtype=np.float32)
    key = jax.random.key(3)
    whole, _ = task.prepare(key, sharding.global_batch(cubes, mesh), mesh, 0)
    second, _ = task.prepare(key, sharding.global_batch(cubes[8:], mesh), mesh, 8)
    np.testing.assert_array_equal(np.asarray(whole)[8:], np.asarray(second))


# ---------------------------------------------------------------- epochs

def test_on_the_fly_sources_have_an_epoch_of_volumes_times_cubes_per_volume():
    cfg = tiny_config(steps_per_epoch=0)
    cfg.data.cubes_per_volume = 40
    data = PretrainTask(cfg).load_data()   # the embedded sample: one volume
    assert data.train_cubes == 40
    assert Cadence.from_config(cfg, data.train_cubes).steps_per_epoch == 5   # 40 cubes / batch 8


def test_early_stopping_counts_epochs_of_an_on_the_fly_source(tmp_path):
    """Learning rate 0: the best validation loss is the first (step 2), nothing improves
    after it. An epoch is 32 cubes / batch 8 = 4 steps, so a patience of 1 epoch stops at
    step 6; with the old fallback of one step per epoch it stopped at step 4."""
    cfg = tiny_config(steps_per_epoch=0, total_steps=20, eval_every=2, checkpoint_every=100,
                      early_stopping_patience=1)
    cfg.optimizer.learning_rate = 0.0
    summary = train(cfg, tmp_path)
    assert summary["best_step"] == 2
    assert summary["end_step"] == 6
    assert [s for s, _ in summary["val_losses"]] == [2, 4, 6]


def test_step_schedule_drops_at_epoch_boundaries_of_an_on_the_fly_source(tmp_path):
    """Epoch = 4 steps (32 cubes / batch 8); step_epochs 1, gamma 0.5: steps 0-3 at the
    base rate, 4-7 at half of it."""
    cfg = tiny_config(steps_per_epoch=0, total_steps=6, eval_every=100, checkpoint_every=100)
    cfg.optimizer.learning_rate, cfg.schedule.step_epochs = 0.01, 1
    summary = train(cfg, tmp_path)
    rates = dict(summary["learning_rates"])
    assert [rates[s] for s in range(6)] == pytest.approx([0.01] * 4 + [0.005] * 2)


def test_plateau_lowers_the_rate_in_the_state_and_resumes_with_it(tmp_path):
    """Adam at 1e-12 barely moves: no validation loss is lower by 1e-4 relative after
    the first, so with plateau_epochs 1 (epoch = 2 steps, evaluated every epoch) the rate
    halves at each evaluation from the second on; the rate and the plateau state come
    back on resume."""
    def config(total):
        cfg = tiny_config(total_steps=total, eval_every=2, checkpoint_every=2)
        cfg.optimizer.name, cfg.optimizer.learning_rate = "adam", 1e-12
        cfg.schedule.kind, cfg.schedule.plateau_epochs, cfg.schedule.gamma = "plateau", 1, 0.5
        return cfg

    train(config(4), tmp_path)
    summary = train(config(6), tmp_path)
    rates = dict(summary["learning_rates"])
    assert rates[4] == pytest.approx(0.5e-12) and rates[5] == pytest.approx(0.5e-12)   # set at step 4's evaluation
    straight = train(config(6), tmp_path / "straight")
    assert [dict(straight["learning_rates"])[s] for s in (4, 5)] == pytest.approx([rates[4], rates[5]])
    assert straight["val_losses"][-1] == pytest.approx(summary["val_losses"][-1])


def test_other_optimizers_train_in_the_loop(tmp_path):
    """AdamW with clipping and the cosine warm-up in the loop (a state and schedule other
    than SGD's); Adam's arithmetic, the same state, is tests/test_optim.py's against torch."""
    cfg = tiny_config(total_steps=2)
    cfg.optimizer.name, cfg.optimizer.learning_rate, cfg.optimizer.weight_decay = "adamw", 1e-3, 0.01
    cfg.optimizer.clip_norm = 1.0
    cfg.schedule.kind, cfg.schedule.warmup_epochs = "cosine", 0.5
    summary = train(cfg, tmp_path)
    assert summary["end_step"] == 2 and all(np.isfinite(loss) for _, loss in summary["train_losses"])
    assert summary["learning_rates"][0][1] == 0.0 and summary["learning_rates"][1][1] == pytest.approx(1e-3)


# ---------------------------------------------------------------- one trace per program

def test_the_step_programs_key_holds_what_the_programs_read_and_not_the_loops_fields():
    from genesis_jax.trainer import program_key
    mesh = sharding.make_mesh()
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: UNet3D(width=4, rngs=nnx.Rngs(0))))
    other_graphdef, _ = nnx.split(nnx.eval_shape(lambda: UNet3D(width=8, rngs=nnx.Rngs(0))))

    def key(cfg, steps_per_epoch=2, graph=graphdef, devices=None):
        return program_key(cfg, PretrainTask(cfg), Cadence(cfg.total_steps, steps_per_epoch, 1, 2, 1), graph,
                           sharding.make_mesh(devices) if devices else mesh)

    def changed(**fields):  # optimizer__name: optimizer.name
        return tiny_config(**{name.replace("__", "."): value for name, value in fields.items()})

    base = key(tiny_config())
    for loop_only in (dict(log_every=7), dict(checkpoint_every=5), dict(keep_checkpoints=9), dict(images=1),
                      dict(early_stopping_patience=3), dict(total_steps=99), dict(log_seconds=1.0)):
        assert key(changed(**loop_only)) == base, loop_only
    for read_by_the_programs in (dict(seed=1), dict(batch_size=4), dict(optimizer__learning_rate=0.5),
                                 dict(optimizer__name="adam"), dict(schedule__gamma=0.1), dict(deform__paint_rate=0.5),
                                 dict(deform__local_blocks=30), dict(model__bn_mode="running"),
                                 dict(data__cube_shape=(16, 16, 8))):
        assert key(changed(**read_by_the_programs)) != base, read_by_the_programs
    cosine = changed(schedule__kind="cosine")
    assert key(cosine) != key(changed(schedule__kind="cosine", total_steps=99))   # the cosine schedule reads it
    assert key(tiny_config(), steps_per_epoch=3) != base                          # step schedules read it
    assert key(tiny_config(), graph=other_graphdef) != base
    assert key(tiny_config(), devices=jax.devices()[:4]) != base


def test_a_second_run_of_the_same_programs_in_one_process_traces_nothing(tmp_path, monkeypatch):
    from genesis_jax import step as step_module
    from genesis_jax import trainer
    from genesis_jax.step import RecentSteps
    monkeypatch.setattr(trainer, "RECENT_STEPS", RecentSteps())
    traced = []
    real = step_module.apply_gradients
    monkeypatch.setattr(step_module, "apply_gradients", lambda *a: traced.append(1) or real(*a))  # runs at trace time
    first = train(tiny_config(total_steps=2), tmp_path / "a")
    assert len(traced) == 1
    again = train(tiny_config(total_steps=2, log_every=2), tmp_path / "b")   # a loop-only field differs
    assert len(traced) == 1 and again["val_losses"] == first["val_losses"]
    train(tiny_config(total_steps=2, seed=3), tmp_path / "c")                # the keys the steps close over differ
    assert len(traced) == 2


# ---------------------------------------------------------------- errors

def main_with(monkeypatch, capsys, error):
    """python -m genesis_jax.train's main() with train() raising `error`."""
    from genesis_jax import train as cli
    from genesis_jax import trainer

    def failing(cfg, workdir):
        raise error

    monkeypatch.setattr(trainer, "train", failing)
    code = cli.main(["genesis_jax.train", "--workdir=/nonexistent/run"])
    return code, capsys.readouterr().err


def test_a_user_error_is_one_line_and_exit_1(monkeypatch, capsys):
    code, err = main_with(monkeypatch, capsys, UserError("runs/x was trained with model.width=4, the config says 8"))
    assert code == 1
    assert err.strip() == "error: runs/x was trained with model.width=4, the config says 8"


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """A ValueError from inside JAX, Orbax or our code is not a user error: it propagates."""
    with pytest.raises(ValueError, match="an internal inconsistency"):
        main_with(monkeypatch, capsys, ValueError("an internal inconsistency"))


def test_the_cli_caches_compiled_programs_in_a_documented_directory(monkeypatch, tmp_path):
    import jax as jax_module
    from genesis_jax import train as cli
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("GENESIS_JAX_CACHE", raising=False)
    assert cli.compilation_cache_dir() == str(tmp_path / ".cache" / "genesis_jax" / "xla")
    monkeypatch.setenv("GENESIS_JAX_CACHE", "off")
    assert cli.compilation_cache_dir() is None
    monkeypatch.setenv("GENESIS_JAX_CACHE", str(tmp_path / "mine"))
    before = jax_module.config.jax_compilation_cache_dir
    try:
        cli.enable_compilation_cache(jax_module)
        assert jax_module.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    finally:
        jax_module.config.update("jax_compilation_cache_dir", before)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax's own"))
    assert cli.compilation_cache_dir() == str(tmp_path / "jax's own")


@pytest.mark.parametrize("log_seconds, logged", [(0.0, [1, 2, 3]), (3600.0, [3])])
def test_the_loop_logs_by_time_as_well_as_by_steps(tmp_path, monkeypatch, log_seconds, logged):
    """log_every=100 alone would log only at the last step; log_seconds=0 logs at every one."""
    from genesis_jax import trainer
    seen = []
    real_log = trainer.TrainLog.log
    monkeypatch.setattr(trainer.TrainLog, "log", lambda self, step, bar: (seen.append(step), real_log(self, step, bar)))
    cfg = tiny_config(total_steps=3, log_every=100, eval_every=100, checkpoint_every=100)
    cfg.log_seconds = log_seconds
    trainer.train(cfg, tmp_path / "run")
    assert seen == logged


def test_the_bar_and_tensorboard_show_the_same_loss(tmp_path, monkeypatch, capsys):
    """Both the mean over the steps since the last log (here all 3: one log, at the end)."""
    from genesis_jax import trainer
    logged = []
    monkeypatch.setattr(trainer.MetricWriter, "scalars", lambda self, step, values: logged.append((step, values)))
    cfg = tiny_config(total_steps=3, log_every=100, eval_every=100, checkpoint_every=100)
    cfg.log_seconds = 3600.0
    summary = trainer.train(cfg, tmp_path / "run")
    (step, values), = [(s, v) for s, v in logged if "train/loss" in v]
    assert step == 3 and values["train/loss"] == pytest.approx(np.mean([l for _, l in summary["train_losses"]]))
    shown = capsys.readouterr().err.split("loss=")[-1].split(",")[0]
    assert shown == f"{values['train/loss']:.4f}" != f"{summary['train_losses'][-1][1]:.4f}"
