"""Models Genesis 2D through the CLIs, as a user runs them: prepare --dims 2 -> pre-train
(--config=genesis_2d) -> fine-tune (--config=segmentation_2d, --config=classification_2d)
-> predict a volume slice by slice and a 2D image, on slices and a DRR of the shared CT."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from genesis_jax import prepare
from genesis_jax.data.images import projection, radiograph_of
from genesis_jax.data.volumes import read_volume

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CT, AORTA = SHARED / "chest_ct_cropped.nii.gz", SHARED / "chest_ct_cropped_aorta.nii.gz"
# The smallest sizes that keep every path: width 4, 32x32 images, two steps.
TINY_2D = ["--config.model.width=4", "--config.batch_size=8", "--config.total_steps=2", "--config.steps_per_epoch=2",
           "--config.log_every=1", "--config.images=2"]


def run_cli(module, *argv):
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_slices_go_prepare_pretrain_finetune_predict(tmp_path, capsys):
    from genesis_jax.predict import main as predict
    store = tmp_path / "slices.zarr"
    assert prepare.run(["--dims", "2", str(CT), "--out", str(store), "--image-shape", "32", "32",
                        "--filter", "foreground", "--cubes-per-volume", "24"]) == 0

    out = run_cli("genesis_jax.train", "--config=genesis_2d", f"--workdir={tmp_path / 'pre'}", *TINY_2D,
                  "--config.data.source=store", f"--config.data.store={store}", "--config.data.cube_shape=(32, 32)",
                  "--config.data.val_fraction=0.34", "--config.deform.local_blocks=60")
    assert "done: step 2" in out and (tmp_path / "pre" / "genesis_unet2d_best.pt").is_file()
    assert list((tmp_path / "pre" / "images").glob("val_restoration_*.png"))

    out = run_cli("genesis_jax.finetune", "--config=segmentation_2d", f"--workdir={tmp_path / 'ft'}", *TINY_2D,
                  "--config.data.patch_shape=(32, 32)", "--config.data.val_patches=8", f"--config.init={tmp_path / 'pre'}",
                  f"--config.data.train_images={CT}", f"--config.data.train_labels={AORTA}")
    assert "holding out 20% of each training volume's z slices" in out and "done: step 2" in out

    assert predict([f"--workdir={tmp_path / 'ft'}", f"--input={CT}", f"--out={tmp_path / 'pred.nii.gz'}",
                    f"--labels={AORTA}", "--overlap=0"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(scores["dice"]) == {"1.0"}
    predicted, truth = (nib.load(str(p)) for p in (tmp_path / "pred.nii.gz", AORTA))
    assert predicted.shape == truth.shape and np.allclose(predicted.affine, truth.affine)


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory):
    """Eight 64x64 DRRs of the CT shifted by a few pixels (16-bit PNG), their masks (the
    aorta's projection) and a CSV labelling them by their shift's direction."""
    folder = tmp_path_factory.mktemp("xrays")
    drr = radiograph_of(read_volume(CT))
    aorta = read_volume(AORTA)
    mask = projection(aorta, aorta.array > 0) > 0  # any aorta voxel on the ray
    rows = ["image,label"]
    for k, shift in enumerate((-8, -6, -4, -2, 2, 4, 6, 8)):
        image = np.roll(drr, shift, axis=1)[:64, :64]
        Image.fromarray((image / drr.max() * 65535).astype(np.uint16)).save(folder / f"x{k}.png")
        Image.fromarray(np.roll(mask, shift, axis=1)[:64, :64].astype(np.uint8)).save(folder / f"x{k}_mask.png")
        rows.append(f"x{k}.png,{int(shift > 0)}")
    (folder / "all.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_radiographs_finetune_and_predict_as_images(radiographs, tmp_path, capsys):
    """segmentation_2d on images and masks (PNG), predict on a PNG into a PNG label map of its
    size; classification_2d on an image,label CSV."""
    from genesis_jax.predict import main as predict
    images = ",".join(str(radiographs / f"x{k}.png") for k in range(4))
    masks = ",".join(str(radiographs / f"x{k}_mask.png") for k in range(4))
    run_cli("genesis_jax.finetune", "--config=segmentation_2d", f"--workdir={tmp_path / 'seg'}", *TINY_2D,
            "--config.data.patch_shape=(32, 32)", "--config.data.val_patches=8", "--config.data.modality=xray",
            f"--config.data.train_images={images}", f"--config.data.train_labels={masks}",
            f"--config.data.val_images={radiographs / 'x4.png'}", f"--config.data.val_labels={radiographs / 'x4_mask.png'}")
    assert predict([f"--workdir={tmp_path / 'seg'}", f"--input={radiographs / 'x5.png'}",
                    f"--out={tmp_path / 'x5_pred.png'}", f"--labels={radiographs / 'x5_mask.png'}"]) == 0
    assert np.asarray(Image.open(tmp_path / "x5_pred.png")).shape == (64, 64)
    assert "dice" in capsys.readouterr().out
    assert predict([f"--workdir={tmp_path / 'seg'}", f"--input={radiographs / 'x5.png'}",
                    f"--out={tmp_path / 'x5.nii.gz'}"]) == 1
    assert "a 2D image's label map is written as PNG" in capsys.readouterr().err

    out = run_cli("genesis_jax.finetune", "--config=classification_2d", f"--workdir={tmp_path / 'cls'}", *TINY_2D,
                  "--config.data.cube_shape=(32, 32)",
                  f"--config.data.train_csv={radiographs / 'all.csv'}", f"--config.data.val_csv={radiographs / 'all.csv'}")
    assert "done: step 2" in out and "accuracy" in out


def test_restore_says_it_scores_3d_models(tmp_path, capsys):
    """restore measures 3D models on cubes: a 2D checkpoint is refused in one line."""
    torch = pytest.importorskip("torch")
    smp = pytest.importorskip("segmentation_models_pytorch")
    from genesis_jax.restore import main as restore
    torch.save(smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1).state_dict(), tmp_path / "r.pt")
    assert restore([f"--init={tmp_path / 'r.pt'}", f"--out={tmp_path / 'out'}"]) == 1
    assert "a 2D model (ResNet18UNet); restore scores 3D models" in capsys.readouterr().err


def tiny_2d(total_steps):
    """genesis_2d on 32x32 slices of the bundled sample, at the suite's tiny sizes."""
    from genesis_jax.configs.base import genesis_2d_base
    cfg = genesis_2d_base()
    cfg.total_steps, cfg.batch_size, cfg.steps_per_epoch, cfg.eval_every, cfg.checkpoint_every = total_steps, 8, 2, 2, 1
    cfg.log_every, cfg.images, cfg.export_pytorch, cfg.model.width = 1, 2, False, 4
    cfg.data.cube_shape, cfg.data.val_cubes, cfg.data.filter, cfg.deform.local_blocks = (32, 32), 8, "foreground", 60
    return cfg


def test_a_2d_run_resumes_bitwise(tmp_path):
    """Exact resume holds for 2D runs: 2 steps, then resumed to 4, equal to 4 straight."""
    from genesis_jax.trainer import train
    from runs import params_of
    train(tiny_2d(4), tmp_path / "straight")
    train(tiny_2d(2), tmp_path / "resumed")
    assert train(tiny_2d(4), tmp_path / "resumed")["start_step"] == 2
    (straight, meta_a), (resumed, meta_b) = (params_of(tiny_2d(4), tmp_path / n) for n in ("straight", "resumed"))
    assert meta_a == meta_b
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)
