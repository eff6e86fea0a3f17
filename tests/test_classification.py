"""Classification fine-tuning: labelled cubes from a CSV, the TargetNet head from a
pre-trained encoder, AUC and accuracy, and the CLI end to end."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from genesis_jax.configs.classification import get_config
from genesis_jax.data.classified import LabelledCubes, crop_centred
from genesis_jax.errors import UserError
from genesis_jax.rundir import load_source, new_model, read_run_config
from genesis_jax.scores import roc_auc
from genesis_jax.tasks import ClassificationTask
from genesis_jax.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def write_nifti(path, array):
    """Stored in LPS voxel order (affine diag(-1, -1, 1)): file indices are read_volume's."""
    import nibabel as nib
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), np.diag([-1.0, -1.0, 1.0, 1.0])), str(path))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A CT-like volume with bright balls; cubes centred on a ball are class 1, cubes
    centred on background class 0. train.csv / val.csv list them (relative paths)."""
    root = tmp_path_factory.mktemp("clf")
    rng = np.random.default_rng(0)
    shape = (64, 64, 32)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    balls = [(12, 12, 8), (12, 50, 24), (50, 12, 8), (50, 50, 24), (32, 32, 16), (20, 40, 10)]
    image = rng.normal(-600, 60, shape)
    for centre in balls:
        image[np.sum((grid - centre) ** 2, -1) < 16] = 400
    write_nifti(root / "ct.nii.gz", image)
    background = [(4, 30, 4), (30, 4, 28), (60, 30, 3), (30, 60, 28), (40, 22, 4), (22, 22, 28)]
    rows = [("ct.nii.gz", *c, 1) for c in balls] + [("ct.nii.gz", *c, 0) for c in background]
    for name, part in (("train.csv", rows), ("val.csv", rows[::2] + rows[1::2])):
        (root / name).write_text("image,x,y,z,label\n" + "".join(",".join(map(str, r)) + "\n" for r in part))
    return root


def tiny(labelled, **data):
    c = get_config()
    c.model.width, c.batch_size, c.total_steps, c.steps_per_epoch, c.log_every = 4, 8, 2, 2, 1
    c.data.cube_shape, c.data.train_csv, c.data.val_csv = (16, 16, 8), str(labelled / "train.csv"), \
        str(labelled / "val.csv")
    for key, value in data.items():
        c.data[key] = value
    return c


def test_crop_centred_cuts_around_the_centre_and_pads_with_edges():
    volume = np.arange(10 * 12 * 6, dtype=np.float32).reshape(10, 12, 6)
    cube = crop_centred(volume, (5, 6, 3), (4, 4, 2))
    np.testing.assert_array_equal(cube, volume[3:7, 4:8, 2:4])
    corner = crop_centred(volume, (0, 0, 0), (4, 4, 2))  # starts at -2: two edge rows of padding
    np.testing.assert_array_equal(corner[2:, 2:, 1:], volume[:2, :2, :1])
    np.testing.assert_array_equal(corner[0], corner[2])


def test_csv_rows_become_cubes_with_their_label_in_channel_1(labelled):
    cubes = LabelledCubes(labelled / "train.csv", 2, (16, 16, 8))
    rows = cubes.rows(0, 12)
    assert rows.shape == (12, 16, 16, 8, 2) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[:, 0, 0, 0, 1], [1] * 6 + [0] * 6)
    assert np.all(rows[:, :, :, :, 1] == rows[:, :1, :1, :1, 1])
    assert rows[:6, 8, 8, 4, 0].min() > 0.6 and rows[6:, 8, 8, 4, 0].max() < 0.4  # ball centres vs background
    np.testing.assert_array_equal(cubes.batch(3, 4), cubes.batch(3, 4))  # step s: the same batch
    assert not np.array_equal(cubes.batch(3, 4), cubes.batch(4, 4))
    np.testing.assert_array_equal(cubes.batch(3, 4, 1, 2), cubes.batch(3, 4)[2:])  # process 1 of 2


@pytest.mark.parametrize("text, message", [
    ("path,label\na,1\n", "the header must name the columns image,x,y,z,label, cube,label or image,label"),
    ("image,x,y,z,label\n", "no examples"),
    ("image,x,y,z,label\nct.nii.gz,1,2,3,2\n", "line 2: label 2 is not a class 0 .. 1"),
    ("image,x,y,z,label\nct.nii.gz,1,a,3,0\n", "line 2: y must be an integer, got 'a'"),
    ("cube,label\n0,1\n", "data.store is empty"),
])
def test_bad_label_csvs_name_the_file_and_line(labelled, tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as error:
        LabelledCubes(path, 2, (16, 16, 8))
    assert str(path) in str(error.value)


def test_a_centre_outside_its_volume_is_refused(labelled, tmp_path):
    (tmp_path / "far.csv").write_text(f"image,x,y,z,label\n{labelled / 'ct.nii.gz'},64,0,0,1\n")
    with pytest.raises(UserError, match=r"centre \(64, 0, 0\) is outside the volume of shape \(64, 64, 32\)"):
        LabelledCubes(tmp_path / "far.csv", 2, (16, 16, 8))


def test_store_rows_read_the_named_cubes(tmp_path):
    from genesis_jax.data.store import CubeStoreWriter
    cubes = np.random.default_rng(1).random((5, 16, 16, 8)).astype(np.float32)
    with CubeStoreWriter(tmp_path / "store", (16, 16, 8)) as writer:
        writer.append(cubes)
        writer.commit({})
    (tmp_path / "rows.csv").write_text("cube,label\n4,1\n0,0\n")
    rows = LabelledCubes(tmp_path / "rows.csv", 2, (16, 16, 8), store=str(tmp_path / "store")).rows(0, 2)
    np.testing.assert_array_equal(rows[..., 0], cubes[[4, 0]])
    (tmp_path / "rows.csv").write_text("cube,label\n5,1\n")
    with pytest.raises(UserError, match=r"cube numbers must be 0 .. 4"):
        LabelledCubes(tmp_path / "rows.csv", 2, (16, 16, 8), store=str(tmp_path / "store"))


def test_cubes_of_a_two_channel_store_come_with_both_channels_and_the_model_follows(tmp_path):
    """cube,label rows of a (N, 16, 16, 8, 2) store: rows (n, 16, 16, 8, 3), channels, then the
    label; the classification task's model takes the store's 2 channels."""
    from genesis_jax.data.store import CubeStoreWriter
    from genesis_jax.tasks import ClassificationTask
    cubes = np.random.default_rng(2).random((4, 16, 16, 8, 2)).astype(np.float32)
    with CubeStoreWriter(tmp_path / "store", (16, 16, 8), channels=("pet", "ct")) as writer:
        writer.append(cubes)
        writer.commit({})
    (tmp_path / "rows.csv").write_text("cube,label\n3,1\n1,0\n2,1\n")
    labelled = LabelledCubes(tmp_path / "rows.csv", 2, (16, 16, 8), store=str(tmp_path / "store"))
    rows = labelled.rows(0, 3)
    assert labelled.channels == ["pet", "ct"] and rows.shape == (3, 16, 16, 8, 3)
    np.testing.assert_array_equal(rows[..., :2], cubes[[3, 1, 2]])
    np.testing.assert_array_equal(rows[:, 0, 0, 0, 2], [1, 0, 1])
    cfg = tiny(tmp_path, train_csv=str(tmp_path / "rows.csv"), val_csv=str(tmp_path / "rows.csv"),
               store=str(tmp_path / "store"))
    task = ClassificationTask(cfg)
    assert task.load_data().channels == ["pet", "ct"] and cfg.model.in_channels == 2
    import jax.numpy as jnp
    from flax import nnx
    assert task.build_model(nnx.Rngs(0))(jnp.asarray(rows[..., :2])).shape == (3, 1)


def test_auc_and_accuracy_of_the_whole_set_and_of_batches():
    task = ClassificationTask(get_config())
    labels = np.array([1, 0, 1, 0, 1])
    logits = np.array([[2.0], [-1.0], [0.5], [1.0], [-3.0]])
    assert task.set_metrics(labels, logits)["auc"] == pytest.approx(roc_auc(logits[:, 0], labels))
    assert task.set_metrics(labels, logits)["auc"] == pytest.approx(3 / 6)  # pairs (pos, neg) ordered: (2,-1) (2,1) (0.5,-1)
    assert float(task.metrics(logits, labels)["accuracy"]) == pytest.approx(3 / 5)
    assert task.set_metrics(np.ones(5, int), logits) == {}  # one class only: AUC undefined, not reported
    cfg = get_config()
    cfg.data.classes = 3
    three = ClassificationTask(cfg)
    logits3 = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 4.0
    assert three.set_metrics(np.array([0, 1, 2, 0, 1, 2]), logits3)["auc"] == 1.0
    assert float(three.metrics(logits3, np.array([0, 1, 2, 0, 1, 1]))["accuracy"]) == pytest.approx(5 / 6)


def test_the_encoder_comes_from_the_pretrained_run_and_the_head_is_new(labelled, pretrained):
    cfg = tiny(labelled)
    cfg.init = str(pretrained)
    model = new_model(ClassificationTask(cfg), nnx.Rngs(7))
    source, _, _ = load_source(pretrained)
    theirs = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(source))}
    copied = 0
    for path, var in nnx.to_flat_state(nnx.state(model)):
        if str(path[0]).startswith("down_tr"):
            np.testing.assert_array_equal(np.asarray(var.get_value()), theirs[path])
            copied += 1
        else:
            assert str(path[0]) in ("dense_1", "dense_2")
    assert copied == sum(1 for p in theirs if str(p[0]).startswith("down_tr"))


def test_frozen_encoder_stays_as_loaded_for_k_steps_then_trains(labelled, pretrained, tmp_path):
    cfg = tiny(labelled)
    cfg.init, cfg.checkpoint_every, cfg.optimizer.freeze_pretrained_steps = str(pretrained), 1, 2
    cfg.total_steps = 3
    train(cfg, tmp_path / "run")
    source, _, _ = load_source(pretrained)
    loaded = {".".join(map(str, p)): np.asarray(v.get_value())
              for p, v in nnx.to_flat_state(nnx.state(source, nnx.Param))}

    def changed(step):
        params = flat_params_at(cfg, tmp_path / "run", step)
        return {k for k, v in params.items() if k.startswith("down_tr") and not np.array_equal(v, loaded[k])}, params

    frozen_2, params_2 = changed(2)
    assert frozen_2 == set()  # two steps: the encoder is still exactly as loaded ...
    assert any(not np.array_equal(params_2[k], flat_params_at(cfg, tmp_path / "run", 1)[k]) for k in params_2
               if k.startswith("dense"))  # ... while the head trained
    moved_3, _ = changed(3)
    assert moved_3  # step 3 updates the encoder


def flat_params_at(cfg, workdir, step):
    from genesis_jax import sharding
    from genesis_jax.checkpoint import Checkpointer, abstract_like
    from genesis_jax.step import model_from_state
    from genesis_jax.rundir import build_state, task_optimizer
    task = ClassificationTask(cfg)
    graphdef, state = build_state(task, task_optimizer(cfg, task, 1), 0, sharding.make_mesh(), initialize=False)
    checkpointer = Checkpointer(Path(workdir) / "checkpoints", keep=cfg.keep_checkpoints)
    try:
        state = checkpointer.restore(step, abstract_like(state))
    finally:
        checkpointer.close()
    model = model_from_state(graphdef, state)
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_freezing_from_scratch_is_refused(labelled):
    cfg = tiny(labelled)
    cfg.optimizer.freeze_pretrained_steps = 5
    with pytest.raises(UserError, match="init is 'scratch'"):
        train(cfg, "/nonexistent/never-created")


def run_cli(argv):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "genesis_jax.finetune", "--config=classification", *argv],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_cli_fine_tunes_a_classifier_and_reports_auc(labelled, pretrained, tmp_path):
    workdir = tmp_path / "clf"
    proc = run_cli([f"--workdir={workdir}", "--config.model.width=4", "--config.batch_size=8",
                    "--config.total_steps=4", "--config.steps_per_epoch=2", "--config.data.cube_shape=(16, 16, 8)",
                    f"--config.data.train_csv={labelled / 'train.csv'}", f"--config.data.val_csv={labelled / 'val.csv'}",
                    f"--config.init={pretrained}", "--config.optimizer.pretrained_lr_multiplier=0.1"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "step 2: val loss" in proc.stdout and "accuracy" in proc.stdout and "auc" in proc.stdout
    assert "done: step 4" in proc.stdout
    assert list((workdir / "images").glob("val_classification_*.png"))
    cfg = read_run_config(workdir)
    assert cfg.task == "classification" and cfg.optimizer.pretrained_lr_multiplier == 0.1
    bad = run_cli([f"--workdir={tmp_path / 'bad'}", f"--config.data.train_csv={labelled / 'train.csv'}"])
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(
        "data.val_csv is empty: pass --config.data.val_csv=PATH.csv (rows image,x,y,z,label or cube,label; "
        "2D: image,label or cube,label)")
    assert not (tmp_path / "bad").exists()


def test_the_classifier_learns_a_separable_task(labelled, tmp_path):
    """Bright-ball cubes vs background: a width-4 TargetNet from scratch separates them."""
    cfg = tiny(labelled)
    cfg.total_steps, cfg.steps_per_epoch, cfg.eval_every, cfg.log_every = 30, 3, 30, 10
    summary = train(cfg, tmp_path / "run")
    assert summary["val_losses"][-1][1] < 0.3, summary["val_losses"]
