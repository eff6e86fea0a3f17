"""python -m genesis_jax.predict: whole-volume segmentation written on the input's grid."""

import json

import nibabel as nib
import numpy as np
import pytest

from genesis_jax.data.volumes import read_volume
from genesis_jax.predict import main, to_input_grid
from genesis_jax.trainer import train


@pytest.mark.parametrize("affine", [
    np.diag([-1.5, 2.0, 1.0, 1.0]),                                                  # LAS
    np.array([[0, 0, 1.0, 0], [-1.0, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]]),       # permuted axes
])
def test_labels_go_back_to_the_input_files_voxel_order(tmp_path, affine):
    """to_input_grid inverts the reader: an array read through read_volume (LPS) comes
    back as the file's own array, voxel for voxel."""
    data = np.random.default_rng(0).random((7, 5, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "x.nii.gz"))
    image = nib.load(str(tmp_path / "x.nii.gz"))
    np.testing.assert_array_equal(to_input_grid(read_volume(tmp_path / "x.nii.gz").array, image), data)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    from genesis_jax.configs.segmentation import get_config
    root = tmp_path_factory.mktemp("pred")
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (30, 26, 20)), indexing="ij"), -1)
    ball = np.sum((grid - [15, 13, 10]) ** 2, -1) < 30
    image = np.random.default_rng(1).normal(-500, 50, ball.shape) + 800 * ball
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(root / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(np.where(ball, 7.0, 0.0).astype(np.float32), affine), str(root / "seg.nii.gz"))
    cfg = get_config()
    cfg.model.width, cfg.batch_size, cfg.total_steps, cfg.steps_per_epoch = 4, 8, 2, 2
    cfg.data.patch_shape, cfg.data.val_patches, cfg.data.label_values = (16, 16, 16), 8, "7"
    for split in ("train", "val"):
        cfg.data[f"{split}_images"], cfg.data[f"{split}_labels"] = str(root / "ct.nii.gz"), str(root / "seg.nii.gz")
    train(cfg, root / "run")
    return root


def test_predict_writes_the_input_grid_and_scores_against_labels(finetuned, tmp_path, capsys):
    out = tmp_path / "pred.nii.gz"
    argv = [f"--workdir={finetuned / 'run'}", f"--input={finetuned / 'ct.nii.gz'}", f"--out={out}",
            f"--labels={finetuned / 'seg.nii.gz'}", "--blend=mean"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    scores = json.loads(lines[-1])
    assert set(scores) == {"dice", "iou"} and set(scores["dice"]) == {"7.0"}
    assert 0.0 <= scores["dice"]["7.0"] <= 1.0
    written, source = nib.load(str(out)), nib.load(str(finetuned / "ct.nii.gz"))
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 7}  # the run's raw label value


@pytest.mark.parametrize("make_args, message", [
    (lambda root, tmp: [f"--input={tmp / 'ct.mha'}"], "takes NIfTI input"),
    (lambda root, tmp: ["--overlap=1.0"], "--overlap must be in [0, 1)"),
    (lambda root, tmp: [f"--workdir={tmp}"], "not a genesis-jax run directory"),
])
def test_bad_input_is_one_line_and_writes_nothing(finetuned, tmp_path, capsys, make_args, message):
    out = tmp_path / "pred.nii.gz"
    argv = [f"--workdir={finetuned / 'run'}", f"--input={finetuned / 'ct.nii.gz'}", f"--out={out}",
            *make_args(finetuned, tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
