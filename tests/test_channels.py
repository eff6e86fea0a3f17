"""Several channels from prepare to predict, on real volumes: the shared chest CT with a
smoothed copy of itself as a second channel, and nibabel's example4d.nii.gz (two real MR
frames on one grid) as a two-channel case. Stand-ins: no multi-modal MR ships offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from runs import tiny_flags

from genesis_jax import prepare
from genesis_jax.data import StoreBatches
from genesis_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def crop_of(path, where) -> nib.Nifti1Image:
    """A crop of a NIfTI file, its affine moved with it."""
    return nib.load(str(path)).slicer[where]


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory):
    """A 64 x 64 x 48 crop of the chest CT around the aorta (HU), its Gaussian-smoothed copy
    (sigma 1.5 voxels) as a second channel, the aorta mask, and a manifest listing them."""
    from scipy.ndimage import gaussian_filter
    root = tmp_path_factory.mktemp("channels")
    where = (slice(28, 92), slice(30, 94), slice(60, 108))
    ct = crop_of(SHARED / "chest_ct_cropped.nii.gz", where)
    hu = np.asarray(ct.dataobj, np.float32)
    nib.save(nib.Nifti1Image(hu, ct.affine), str(root / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(gaussian_filter(hu, 1.5).astype(np.float32), ct.affine), str(root / "soft.nii.gz"))
    aorta = crop_of(SHARED / "chest_ct_cropped_aorta.nii.gz", where)
    nib.save(nib.Nifti1Image(np.asarray(aorta.dataobj, np.float32), aorta.affine), str(root / "aorta.nii.gz"))
    (root / "cases.csv").write_text("ct,soft,label\nct.nii.gz,soft.nii.gz,aorta.nii.gz\n")
    return root


def mr_frames(folder: Path) -> Path:
    """nibabel's example4d.nii.gz written as one case folder, a file per frame (t1, t2)."""
    from nibabel.testing import data_path
    image = nib.load(os.path.join(data_path, "example4d.nii.gz"))
    case = folder / "subject_01"
    case.mkdir(parents=True)
    for frame, name in enumerate(("t1", "t2")):
        nib.save(image.slicer[..., frame], str(case / f"subject_01_{name}.nii.gz"))
    return case


def test_a_case_folder_per_channel_gives_channels_sampled_as_one_channel_volumes(tmp_path):
    """--channels t1,t2 on a folder of case folders: a (N, 16, 16, 16, 2) store naming its
    channels, whose channel k is, cube for cube, the one-channel store of frame k (the
    same corners: they depend on the seed and the case's position only)."""
    case = mr_frames(tmp_path / "mr")
    common = ["--cube-shape", "16", "16", "16", "--filter", "none", "--modality", "mr", "--cubes-per-volume", "6"]
    assert prepare.run([str(tmp_path / "mr"), "--channels", "t1,t2", "--out", str(tmp_path / "two.zarr"), *common]) == 0
    two = StoreBatches(tmp_path / "two.zarr")
    assert two.channels == ["t1", "t2"] and two.rows(0, 6).shape == (6, 16, 16, 16, 2)
    for k, name in enumerate(("t1", "t2")):
        assert prepare.run([str(case / f"subject_01_{name}.nii.gz"), "--out", str(tmp_path / f"{name}.zarr"),
                            *common]) == 0
        np.testing.assert_array_equal(two.rows(0, 6)[..., k], StoreBatches(tmp_path / f"{name}.zarr").rows(0, 6)[..., 0])
    assert not np.array_equal(two.rows(0, 6)[..., 0], two.rows(0, 6)[..., 1])


@pytest.mark.parametrize("change, message", [
    (lambda a: (a[:3, 3].__iadd__(0.5), a)[1], r"channel soft \(.*\) is not on the first channel's grid \(.* 0.5 mm"),
    (None, "channel soft (.*) has shape 64x64x47, the first channel 64x64x48"),
])
def test_a_channel_off_the_first_channels_grid_is_one_line(ct_case, tmp_path, capsys, change, message):
    ct = nib.load(str(ct_case / "ct.nii.gz"))
    if change is None:
        off = nib.Nifti1Image(np.asarray(ct.dataobj)[..., :47], ct.affine)
    else:
        off = nib.Nifti1Image(np.asarray(ct.dataobj), change(ct.affine.copy()))
    nib.save(off, str(tmp_path / "soft.nii.gz"))
    (tmp_path / "ct.nii.gz").symlink_to(ct_case / "ct.nii.gz")
    (tmp_path / "cases.csv").write_text("ct,soft\nct.nii.gz,soft.nii.gz\n")
    assert prepare.run([str(tmp_path / "cases.csv"), "--out", str(tmp_path / "s.zarr")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cases.csv row 2" in err[0]
    import re
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("argv, message", [
    (["--modality", "ct,mr,ct"], "3 values for 2 channels"),
    (["--filter-channel", "pet"], "--filter-channel pet: not a channel (ct, soft)"),
])
def test_channel_options_that_do_not_fit_are_one_line(ct_case, tmp_path, capsys, argv, message):
    assert prepare.run([str(ct_case / "cases.csv"), "--out", str(tmp_path / "s.zarr"), *argv]) == 1
    assert message in capsys.readouterr().err


def test_a_missing_channel_in_a_case_folder_names_the_folder_and_the_channel(tmp_path, capsys):
    case = mr_frames(tmp_path / "mr")
    assert prepare.run([str(tmp_path / "mr"), "--channels", "t1,flair", "--out", str(tmp_path / "s.zarr")]) == 1
    err = capsys.readouterr().err
    assert f"{case}: channel flair: no file" in err


def run_cli(module, *argv):
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_two_channels_go_prepare_train_finetune_predict(ct_case, tmp_path, capsys):
    """The CLIs, as a user runs them, on the CT + smoothed-CT case: a two-channel store, a
    pre-training run whose U-Net takes and restores 2 channels, a segmentation fine-tuned
    from it on the manifest, and predict from the files or from the manifest's row."""
    from genesis_jax.predict import main as predict
    store = tmp_path / "cubes.zarr"
    assert prepare.run([str(ct_case / "cases.csv"), "--out", str(store), "--cube-shape", "16", "16", "16",
                        "--filter", "foreground", "--filter-channel", "ct", "--cubes-per-volume", "20"]) == 0
    assert StoreBatches(store).channels == ["ct", "soft"]

    run_cli("genesis_jax.train", f"--workdir={tmp_path / 'pre'}", *tiny_flags(
        "--config.data.source=store", f"--config.data.store={store}", "--config.data.val_fraction=0.4",
        "--config.total_steps=2", "--config.checkpoint_every=2"))
    pre = json.loads((tmp_path / "pre" / "config.json").read_text())
    assert pre["model"]["in_channels"] == 2
    assert json.loads((tmp_path / "pre" / "run_info.json").read_text())["channels"] == ["ct", "soft"]

    out = run_cli("genesis_jax.finetune", f"--workdir={tmp_path / 'ft'}", "--config.model.width=4",
                  "--config.data.patch_shape=(16, 16, 16)", "--config.batch_size=8", "--config.total_steps=2",
                  "--config.steps_per_epoch=2", "--config.data.val_patches=8", f"--config.init={tmp_path / 'pre'}",
                  f"--config.data.train_images={ct_case / 'cases.csv'}")
    assert "validation: no data.val_images given" in out  # one case: a z slab of it validates
    info = json.loads((tmp_path / "ft" / "run_info.json").read_text())
    assert info["channels"] == ["ct", "soft"] and "of 2 channel(s) (ct, soft)" in info["data"]
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["model"]["in_channels"] == 2

    windows = "--overlap=0"  # 48 windows, not 245: the channels are the point here
    assert predict([f"--workdir={tmp_path / 'ft'}", f"--input={ct_case / 'ct.nii.gz'},{ct_case / 'soft.nii.gz'}",
                    f"--out={tmp_path / 'a.nii.gz'}", windows]) == 0
    assert predict([f"--workdir={tmp_path / 'ft'}", f"--input={ct_case / 'cases.csv'}",
                    f"--out={tmp_path / 'b.nii.gz'}", windows]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the manifest's label column
    assert set(scores["dice"]) == {"1.0"}
    a, b = (np.asarray(nib.load(str(tmp_path / f"{n}.nii.gz")).dataobj) for n in "ab")
    assert a.shape == (64, 64, 48) and np.array_equal(a, b)
    assert predict([f"--workdir={tmp_path / 'ft'}", f"--input={ct_case / 'ct.nii.gz'}",
                    f"--out={tmp_path / 'c.nii.gz'}"]) == 1
    assert "the run takes 2 channel(s) (ct, soft)" in capsys.readouterr().err


def test_a_one_channel_run_initialises_a_two_channel_segmentation(ct_case, pretrained, capsys):
    """The one-channel pre-training run into the two-channel model of the manifest: its first
    kernel spread (/2), said in the init line; identical channels give its encoder's output."""
    import jax.numpy as jnp
    from flax import nnx

    from genesis_jax.configs.segmentation import get_config
    from genesis_jax.rundir import load_source, new_model
    from genesis_jax.tasks import SegmentationTask
    cfg = get_config()
    cfg.model.width, cfg.init, cfg.data.train_images = 4, str(pretrained), str(ct_case / "cases.csv")
    task = SegmentationTask(cfg)
    task.check_config()
    task.check_data()
    assert cfg.model.in_channels == 2
    model = new_model(task, nnx.Rngs(0))
    assert "its one input channel spread over the model's 2" in capsys.readouterr().out
    source = load_source(str(pretrained))[0]
    x = np.random.default_rng(0).random((2, 16, 16, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(model.encode(jnp.asarray(np.repeat(x, 2, -1)))[0]),
                               np.asarray(source.encode(jnp.asarray(x))[0]), rtol=1e-4, atol=1e-5)


def test_model_channels_that_disagree_with_the_data_are_refused(ct_case):
    from genesis_jax.configs.segmentation import get_config
    from genesis_jax.tasks import SegmentationTask
    cfg = get_config()
    cfg.model.in_channels, cfg.data.train_images = 3, str(ct_case / "cases.csv")
    with pytest.raises(UserError, match="model.in_channels=3, but data.train_images .* has 2 channel"):
        SegmentationTask(cfg).check_data()


def test_pre_training_continues_a_one_channel_model_on_two_channels(ct_case, pretrained, tmp_path, capsys):
    """init for pre-training: the whole U-Net of the one-channel run, its first kernel spread
    and its last layer copied to both outputs, so identical channels restore as it does."""
    import jax.numpy as jnp
    from flax import nnx

    from genesis_jax.rundir import load_source, new_model
    from genesis_jax.tasks import PretrainTask
    from runs import tiny_config
    store = tmp_path / "cubes.zarr"
    assert prepare.run([str(ct_case / "cases.csv"), "--out", str(store), "--cube-shape", "16", "16", "16",
                        "--filter", "none", "--cubes-per-volume", "2"]) == 0
    cfg = tiny_config()
    cfg.init, cfg.data.source, cfg.data.store = str(pretrained), "store", str(store)
    task = PretrainTask(cfg)
    task.check_config()
    task.check_data()
    model = new_model(task, nnx.Rngs(0))
    assert "copied; its one input channel spread over the model's 2; new: none" in capsys.readouterr().out
    source = load_source(str(pretrained))[0]
    x = np.random.default_rng(3).random((2, 16, 16, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(np.repeat(x, 2, -1)))),
                               np.repeat(np.asarray(source(jnp.asarray(x))), 2, -1), rtol=1e-4, atol=1e-5)


def test_a_store_from_before_channels_trains_as_one_channel(tmp_path):
    """A (N, X, Y, Z) store (no channel axis, no channel names) feeds a pre-training run's
    data as (n, X, Y, Z, 1), and the model keeps one channel."""
    import tensorstore as ts

    from genesis_jax.data.sources import load_run_data
    from genesis_jax.tasks import PretrainTask
    from runs import tiny_config
    cubes = np.random.default_rng(0).random((10, 16, 16, 16), dtype=np.float32)
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "old.zarr")}, "create": True,
            "metadata": {"shape": [10, 16, 16, 16], "data_type": "float32",
                         "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, 16, 16, 16]}},
                         "attributes": {"genesis": {"cubes": 10}}}}
    ts.open(spec).result().write(cubes).result()
    cfg = tiny_config()
    cfg.data.source, cfg.data.store = "store", str(tmp_path / "old.zarr")
    PretrainTask(cfg).check_data()
    data = load_run_data(cfg.data, cfg.seed)
    assert cfg.model.in_channels == 1 and data.channels == ["image"]
    assert data.train.batch(0, 4).shape == (4, 16, 16, 16, 1)


def test_pictures_get_a_column_per_channel_named_by_the_data():
    """(N, X, Y, Z, 2) columns: one column per channel, named by the channels given; C = 1 is
    squeezed; without names, "channel c". The grid widens by those columns."""
    from genesis_jax.metrics import labelled_grid, split_channels
    two = np.random.default_rng(0).random((2, 16, 16, 8, 2), dtype=np.float32)
    assert list(split_channels({"input": two, "target": two[..., :1]}, ["t1", "flair"])) == \
        ["input, t1", "input, flair", "target"]
    assert list(split_channels({"input": two})) == ["input, channel 0", "input, channel 1"]
    one, both = labelled_grid({"input": two[..., :1]}), labelled_grid({"input": two}, channels=["t1", "flair"])
    assert one.shape[0] == both.shape[0] and both.shape[1] > 1.8 * one.shape[1]
