"""Resume refuses what it cannot continue exactly, and sets aside only damaged checkpoints.

Each test snapshots the checkpoint directory (names, sizes, modification times) and
checks that a refusal left it as it was."""

from pathlib import Path

import numpy as np
import pytest

from genesis_jax import checkpoint as checkpoint_module
from genesis_jax.errors import UserError
from genesis_jax.trainer import train
from runs import checkpoint_steps, damage, tiny_config


def snapshot(workdir):
    root = Path(workdir) / "checkpoints"
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-step run with checkpoints at steps 1 and 2; each test works on a copy."""
    workdir = tmp_path_factory.mktemp("finished")
    train(tiny_config(total_steps=2), workdir)
    return workdir


@pytest.fixture
def run_dir(finished_run, tmp_path):
    import shutil
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("change,words", [
    (lambda c: setattr(c.model, "width", 8), "model.width=4, the config says 8"),
    (lambda c: setattr(c.optimizer, "name", "adam"), "optimizer.name=sgd, the config says adam"),
    (lambda c: setattr(c.data, "cube_shape", (16, 16, 8)), "data.cube_shape=16,16,16, the config says 16,16,8"),
    (lambda c: setattr(c, "batch_size", 16), "batch_size=8, the config says 16"),
], ids=["model", "optimizer", "data", "batch"])
def test_a_changed_config_is_refused_naming_the_field_and_nothing_is_touched(run_dir, change, words):
    before = snapshot(run_dir)
    cfg = tiny_config(total_steps=4)
    change(cfg)
    with pytest.raises(UserError, match=words) as refused:
        train(cfg, run_dir)
    assert str(run_dir) in str(refused.value)
    assert snapshot(run_dir) == before


def test_fields_that_do_not_change_the_run_may_change(run_dir):
    """total_steps (to extend a run), logging, evaluation and checkpoint cadence, devices."""
    summary = train(tiny_config(total_steps=3, log_every=3, eval_every=3, num_devices=4), run_dir)
    assert summary["start_step"] == 2 and summary["end_step"] == 3


def test_when_no_checkpoint_can_be_restored_the_run_stops_instead_of_starting_over(run_dir):
    for step in (1, 2):
        damage(run_dir / "checkpoints" / str(step))
    before = snapshot(run_dir)
    with pytest.raises(UserError, match="no checkpoint can be restored .*step 2: .*step 1: .*nothing was changed"):
        train(tiny_config(total_steps=3), run_dir)
    assert snapshot(run_dir) == before


def test_an_error_that_is_not_damage_propagates_and_sets_nothing_aside(run_dir, monkeypatch):
    """A restore failing for another reason (a shape mismatch: a bug, since the identity
    matched) keeps its exception; the checkpoints stay where they are."""
    def broken(self, step, abstract_state):
        raise ValueError("Requested shape: (3, 3, 3, 16, 16) is not compatible with the stored shape")

    monkeypatch.setattr(checkpoint_module.Checkpointer, "restore", broken)
    before = snapshot(run_dir)
    with pytest.raises(ValueError, match="not compatible") as raised:
        train(tiny_config(total_steps=3), run_dir)
    assert not isinstance(raised.value, UserError)
    assert snapshot(run_dir) == before


def test_a_half_written_checkpoint_is_reported_and_removed(run_dir, capsys):
    tmp = run_dir / "checkpoints" / "3.orbax-checkpoint-tmp-1234"
    tmp.mkdir()
    (tmp / "junk").write_bytes(b"x")
    summary = train(tiny_config(total_steps=3), run_dir)
    assert summary["start_step"] == 2
    assert "3.orbax-checkpoint-tmp-1234 is a checkpoint whose write never finished" in capsys.readouterr().out
    assert not tmp.exists() and checkpoint_steps(run_dir)[-1] == 3


def test_checkpoints_of_the_old_layout_are_refused(tmp_path):
    (tmp_path / "checkpoints" / "latest" / "5").mkdir(parents=True)
    with pytest.raises(UserError, match="layout of genesis-jax before 0.2"):
        train(tiny_config(total_steps=1), tmp_path)
    assert (tmp_path / "checkpoints" / "latest" / "5").is_dir()


def test_one_manager_keeps_the_latest_n_and_the_best(tmp_path):
    """Learning rate 0: the validation loss never improves after the first evaluation
    (step 2), so the best is step 2; keep_checkpoints=2 keeps 5 and 6 besides it."""
    cfg = tiny_config(total_steps=6, eval_every=2, checkpoint_every=1, keep_checkpoints=2)
    cfg.optimizer.learning_rate = 0.0
    summary = train(cfg, tmp_path)
    assert summary["best_step"] == 2
    assert checkpoint_steps(tmp_path) == [2, 5, 6]


def test_the_best_checkpoint_is_kept_and_found_after_reopening(tmp_path):
    """Orbax writes a step's metrics only when best_fn is set; without it best_step()
    was always None, so "best" exports and loads took the latest weights."""
    from genesis_jax.checkpoint import Checkpointer
    checkpointer = Checkpointer(tmp_path / "checkpoints", keep=2)
    checkpointer.save(1, {"w": np.ones(3)}, {"step": 1}, 0.5)
    checkpointer.save(2, {"w": np.ones(3)}, {"step": 2}, 0.7)
    for step in range(3, 6):
        checkpointer.save(step, {"w": np.full(3, step)}, {"step": step}, None)
    checkpointer.wait()
    assert checkpointer.best_step() == 1
    checkpointer.close()
    reopened = Checkpointer(tmp_path / "checkpoints", keep=2)
    assert reopened.best_step() == 1 and reopened.steps() == [1, 4, 5]
    reopened.save(6, {"w": np.ones(3)}, {"step": 6}, None)
    reopened.wait()
    assert reopened.best_step() == 1 and 1 in reopened.steps()
    reopened.close()


def write_store(path, n, seed):
    from genesis_jax.data import CubeStoreWriter
    cubes = np.random.default_rng(seed).random((n, 16, 16, 16), dtype=np.float32)
    with CubeStoreWriter(path, (16, 16, 16)) as writer:
        writer.append(cubes)
        writer.commit({"seed": seed})


def test_a_store_that_changed_under_the_run_is_refused_unless_allowed(tmp_path):
    """The store is re-prepared at the same path with other cubes and another size: the
    resume names both digests and stops; allow_data_change=True goes on with the new data."""
    store = tmp_path / "cubes.zarr"
    write_store(store, 32, seed=0)
    cfg = tiny_config(total_steps=2, steps_per_epoch=2)
    cfg.data.source, cfg.data.store, cfg.data.val_fraction = "store", str(store), 0.25  # 8 cubes: one per device
    train(cfg, tmp_path / "run")
    from genesis_jax.data.store import store_digest
    before = store_digest(store)
    write_store(store, 40, seed=1)
    after = store_digest(store)
    assert before != after
    cfg.total_steps = 3
    with pytest.raises(UserError, match="the data changed since the run started") as error:
        train(cfg, tmp_path / "run")
    assert before[:16] in str(error.value) and after[:16] in str(error.value)
    assert "--config.allow_data_change=True" in str(error.value)
    assert checkpoint_steps(tmp_path / "run") == [1, 2]
    cfg.allow_data_change = True
    assert train(cfg, tmp_path / "run")["end_step"] == 3
    cfg.allow_data_change, cfg.total_steps = False, 4  # the checkpoint of step 3 records the new data
    assert train(cfg, tmp_path / "run")["end_step"] == 4


def test_a_store_with_the_same_metadata_but_other_cubes_has_another_digest(tmp_path):
    from genesis_jax.data import CubeStoreWriter
    from genesis_jax.data.store import store_digest
    digests = []
    for value in (0.25, 0.5):
        with CubeStoreWriter(tmp_path / "s.zarr", (8, 8, 8)) as writer:
            writer.append(np.full((4, 8, 8, 8), value, np.float32))
            writer.commit({"seed": 0, "sources": ["same.nii.gz"]})
        digests.append(store_digest(tmp_path / "s.zarr"))
    assert digests[0] != digests[1]
