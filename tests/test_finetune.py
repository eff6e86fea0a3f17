"""python -m genesis_jax.finetune: segmentation on the one loop, from scratch or from a
pre-trained run, with exact resume and clean errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from genesis_jax.configs.segmentation import get_config
from genesis_jax.errors import UserError
from genesis_jax.rundir import load_source, new_model, read_run_config
from genesis_jax.tasks import SegmentationTask
from genesis_jax.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def write_nifti(path, array):
    import nibabel as nib
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), np.eye(4)), str(path))


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Two CT-like volumes, each with a bright ball labelled 1 (and a second structure 2)."""
    root = tmp_path_factory.mktemp("seg")
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (40, 40, 24)), indexing="ij"), -1)
    for i, centre in enumerate(([14, 20, 12], [24, 18, 12])):
        ball = np.sum((grid - centre) ** 2, -1) < 36
        image = rng.normal(-500, 100, (40, 40, 24)) + 700 * ball
        labels = np.where(ball, 1.0, 0.0)
        labels[2:5, 2:5, 2:5] = 2
        write_nifti(root / f"ct{i}.nii.gz", image)
        write_nifti(root / f"seg{i}.nii.gz", labels)
    return root


def args(volumes, workdir, *extra):
    return [f"--workdir={workdir}", "--config.model.width=4", "--config.data.patch_shape=(16, 16, 16)",
            "--config.batch_size=8", "--config.steps_per_epoch=2", "--config.data.val_patches=8",
            f"--config.data.train_images={volumes / 'ct0.nii.gz'}", f"--config.data.train_labels={volumes / 'seg0.nii.gz'}",
            f"--config.data.val_images={volumes / 'ct1.nii.gz'}", f"--config.data.val_labels={volumes / 'seg1.nii.gz'}",
            *extra]


def run_cli(argv, tmp_path):
    """One CLI process per call, as a user runs it (absl flags parse once per process), on
    the suite's 8 devices: the in-process resume below then loads the steps it compiled."""
    return subprocess.run([sys.executable, "-m", "genesis_jax.finetune", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_finetune_from_a_pretrained_run_then_resume(volumes, pretrained, tmp_path):
    workdir = tmp_path / "ft"
    proc = run_cli(args(volumes, workdir, "--config.total_steps=2", f"--config.init={pretrained}",
                        "--config.data.label_values=1,2"), tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "step 2: val loss" in proc.stdout and "done: step 2" in proc.stdout
    assert "volume_dice_1" in proc.stdout and "volume_dice_2" in proc.stdout
    assert list((workdir / "images").glob("val_segmentation_*.png"))
    cfg = read_run_config(workdir)
    assert cfg.task == "segmentation" and cfg.data.label_values == "1,2" and cfg.data.patch_shape == (16, 16, 16)
    cfg.total_steps = 4
    (pretrained / "config.json").rename(pretrained / "config.json.moved")  # the init source is gone
    try:
        summary = train(cfg, workdir)  # the resume reads the run's own checkpoint, not the source
    finally:
        (pretrained / "config.json.moved").rename(pretrained / "config.json")
    assert summary["start_step"] == 2 and summary["end_step"] == 4
    cfg.init = "scratch"  # another init is another run: refused before anything is touched
    with pytest.raises(UserError, match="init="):
        train(cfg, workdir)


def test_the_model_starts_from_the_pretrained_weights_but_its_last_layer(volumes, pretrained, capsys):
    cfg = get_config()
    cfg.model.width, cfg.init, cfg.data.label_values = 4, str(pretrained), "1,2"
    model = new_model(SegmentationTask(cfg), nnx.Rngs(7))
    kept = sum(not str(path[0]).startswith("out_tr") for path, _ in nnx.to_flat_state(nnx.state(model)))
    assert capsys.readouterr().out.splitlines() == [
        f"initialised from {pretrained} (best checkpoint, step 2, width 4): {kept} arrays of down_tr64, down_tr128, "
        f"down_tr256, down_tr512, up_tr256, up_tr128, up_tr64 copied; new: out_tr"]
    source, _, _ = load_source(pretrained)
    ours = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
    theirs = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(source))}
    for key, value in ours.items():
        if key.startswith("out_tr"):
            assert value.shape[-1] == 2 or value.ndim == 1  # 2 classes, fresh
        else:
            np.testing.assert_array_equal(value, theirs[key])


def test_a_width_that_is_not_the_init_runs_is_one_line_before_any_weights_are_read(pretrained, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read")
    monkeypatch.setattr("genesis_jax.rundir.load_checkpoint", no_weights)
    cfg = get_config()
    cfg.model.width, cfg.init, cfg.data.label_values = 32, str(pretrained), "1"
    with pytest.raises(UserError) as refused:
        new_model(SegmentationTask(cfg), nnx.Rngs(0))
    assert str(refused.value) == (f"init {pretrained} has model.width=4, the config says model.width=32: pass "
                                  f"--config.model.width=4")


@pytest.mark.parametrize("extra, message", [
    (["--config.data.train_labels="], "data.train_images has 1 volumes, data.train_labels 0"),
    (["--config.loss=focal"], "loss must be one of dice, bce, dice_bce"),
    (["--config.data.patch_shape=(16, 16, 12)"], "every dim must be a multiple of 8"),
    (["--config.data.label_values=1,x"], "data.label_values must be numbers"),
])
def test_bad_configs_are_one_line_and_exit_2(volumes, tmp_path, extra, message):
    proc = run_cli(args(volumes, tmp_path / "ft", "--config.total_steps=2", *extra), tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "ft").exists()


def test_label_volumes_on_another_grid_are_refused(volumes, tmp_path):
    write_nifti(tmp_path / "small.nii.gz", np.ones((40, 40, 20)))
    proc = run_cli(args(volumes, tmp_path / "ft", "--config.total_steps=2",
                        f"--config.data.train_labels={tmp_path / 'small.nii.gz'}"), tmp_path)
    assert proc.returncode == 1
    err = proc.stderr
    assert "small.nii.gz" in err and "does not match the image" in err


def test_without_validation_volumes_a_z_slab_of_each_training_volume_is_held_out(tmp_path, capsys):
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (24, 24, 40)), indexing="ij"), -1)
    ball = np.sum((grid - [12, 12, 30]) ** 2, -1) < 25  # in the upper half of z
    write_nifti(tmp_path / "ct.nii.gz", np.where(ball, 300.0, -800.0))
    write_nifti(tmp_path / "seg.nii.gz", ball.astype(np.float32))
    cfg = get_config()
    cfg.data.patch_shape, cfg.data.val_patches, cfg.data.label_values = (16, 16, 8), 4, "1"
    cfg.data.train_images, cfg.data.train_labels = str(tmp_path / "ct.nii.gz"), str(tmp_path / "seg.nii.gz")
    task = SegmentationTask(cfg)
    task.check_data()
    run_data = task.load_data()
    assert capsys.readouterr().out.splitlines() == [
        "validation: no data.val_images given: holding out 20% of each training volume's z slices, the end with more "
        "labelled voxels (ct.nii.gz z 32-39 of 40); no validation voxel is trained on"]
    (val_image, val_classes), = task.val_volumes
    assert val_image.shape == (24, 24, 8, 1) and val_classes.any()
    trained, = run_data.train.pairs  # padded to the patch at least: 32 slices already are
    assert trained[0].shape == (24, 24, 32, 1)
    np.testing.assert_array_equal(trained[1], ball[::-1, ::-1, :32].astype(np.int8))  # read as LPS: X, Y flip
    thin = tmp_path / "thin"
    thin.mkdir()
    write_nifti(thin / "ct.nii.gz", np.zeros((24, 24, 12)))
    write_nifti(thin / "seg.nii.gz", np.ones((24, 24, 12)))
    cfg.data.train_images, cfg.data.train_labels = str(thin / "ct.nii.gz"), str(thin / "seg.nii.gz")
    with pytest.raises(UserError, match=r"^no data.val_images given, and .*ct.nii.gz: 12 z slices are too few to hold "
                                        r"out a validation slab of 8 and keep 8 \(the patch depth\) for training"):
        SegmentationTask(cfg).load_data()


class Threshold(nnx.Module):
    """A 'model' that segments by intensity: class 1 above 0.6, class 2 below 0.1."""

    def __call__(self, x):
        import jax.numpy as jnp
        return jnp.concatenate([(x > 0.6), (x < 0.1)], axis=-1).astype(jnp.float32)


def test_whole_volume_dice_by_sliding_window():
    """A perfect segmenter scores Dice 1 on every class of a volume larger than the patch
    and of odd size; dropping class 2 from its output scores 0 on that class."""
    from genesis_jax import sharding
    image = np.random.default_rng(0).random((37, 29, 21)).astype(np.float32)
    classes = np.where(image > 0.6, 1, np.where(image < 0.1, 2, 0)).astype(np.int8)
    cfg = get_config()
    cfg.data.patch_shape, cfg.data.label_values = (16, 16, 8), "1,2"
    task = SegmentationTask(cfg)
    task.val_volumes = [(image, classes)]
    scores = task.volume_metrics(Threshold(), sharding.make_mesh(), batch_size=8)
    assert scores == {"volume_dice_1": 1.0, "volume_dice_2": 1.0}
    task.val_volumes = [(image, np.where(classes == 2, 0, classes).astype(np.int8))]
    task._apply = None
    scores = task.volume_metrics(Threshold(), sharding.make_mesh(), batch_size=8)
    assert scores["volume_dice_1"] == 1.0 and scores["volume_dice_2"] == 0.0
