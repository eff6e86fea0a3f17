"""python -m genesis_jax.restore: a checkpoint's restorations per deformation, as a user runs it."""

import json

import numpy as np
import pytest
from PIL import Image

from genesis_jax.restore import DEFORMATIONS, main
from genesis_jax.trainer import train
from runs import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "tiny"
    train(tiny_config(total_steps=2), workdir)
    return workdir


def test_restore_from_a_run_directory_writes_the_table_and_labelled_pictures(run_dir, tmp_path, capsys):
    out = tmp_path / "restore"
    assert main([f"--init={run_dir}", f"--out={out}", "--cubes=2"]) == 0
    printed = capsys.readouterr().out
    assert "best checkpoint, step 2" in printed and "| pipeline |" in printed
    report = json.loads((out / "restore.json").read_text())
    assert list(report["deformations"]) == list(DEFORMATIONS)
    for name, row in report["deformations"].items():
        assert np.isfinite(row["restored_mse"]) and row["restored_mse"] > 0, name
        image = np.asarray(Image.open(out / f"restore_{name}.png"))
        # 2 cubes of 16^3 upsampled 3x: rows of 48 px; 3 columns of two 48 px views
        assert image.ndim == 2 and image.shape[0] > 2 * 48 and image.shape[1] > 6 * 48
    # the identity baseline of the pipeline is the corruption itself: far from zero
    assert report["deformations"]["pipeline"]["corrupted_mse"] > 0.01


def test_restore_from_an_official_layout_pt(tmp_path):
    pytest.importorskip("torch")
    from flax import nnx

    from genesis_jax.models import UNet3D, save_pytorch_checkpoint
    save_pytorch_checkpoint(UNet3D(width=2, rngs=nnx.Rngs(0)), tmp_path / "genesis.pt")
    out = tmp_path / "restore"
    assert main([f"--init={tmp_path / 'genesis.pt'}", f"--out={out}", "--cubes=2"]) == 0
    report = json.loads((out / "restore.json").read_text())
    assert "PyTorch UNet3D, width 2" in report["model"]


@pytest.mark.parametrize("args, message", [
    (["--init=/nonexistent/run"], "neither a genesis-jax run directory nor a .pt/.pth file"),
    (["--cubes=0"], "--cubes must be >= 1"),
])
def test_bad_input_is_one_line_and_writes_nothing(run_dir, tmp_path, capsys, args, message):
    out = tmp_path / "restore"
    argv = [f"--init={run_dir}", f"--out={out}", *args]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()
