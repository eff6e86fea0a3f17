"""python -m genesis_jax.restore: a checkpoint's restorations per deformation, as a user runs it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from genesis_jax.configs.segmentation import get_config as get_segmentation_config
from genesis_jax.restore import DEFORMATIONS, RUN_PIPELINE, corrupt, main, own_deformations, restoration_table, \
    summary_lines, table_lines, verdict


@pytest.fixture(scope="module")
def run_dir(pretrained):
    """The suite's tiny pre-training run (conftest.py): width 4, 2 steps, 16^3 cubes."""
    return pretrained


def test_restore_from_a_run_directory_writes_the_table_and_labelled_pictures(run_dir, tmp_path, capsys):
    out = tmp_path / "restore"
    assert main([f"--init={run_dir}", f"--out={out}", "--cubes=2"]) == 0
    printed = capsys.readouterr().out
    assert "best checkpoint, step 2" in printed and "| pipeline |" in printed
    report = json.loads((out / "restore.json").read_text())
    # the tiny run's 300 shuffle blocks are not the paper's 10,000: its own pipeline gets a row too
    assert list(report["deformations"]) == [*DEFORMATIONS, RUN_PIPELINE]
    for name, row in report["deformations"].items():
        assert np.isfinite(row["restored_mse"]) and row["restored_mse"] > 0, name
        image = np.asarray(Image.open(out / f"restore_{name}.png"))
        # 2 cubes of 16^3 upsampled 3x: rows of 48 px; 3 columns of two 48 px views
        assert image.ndim == 2 and image.shape[0] > 2 * 48 and image.shape[1] > 6 * 48
    # the identity baseline of the pipeline is the corruption itself: far from zero
    pipeline = report["deformations"]["pipeline"]
    assert pipeline["identity_mse"] > 0.01 and pipeline["mean_mse"] > 0 and -1 <= pipeline["correlation"] <= 1
    assert "| restored / mean | correlation | verdict |" in printed


def test_the_demo_benchmark_scores_a_run_as_restore_does(run_dir, tmp_path):
    from benchmarks.demo_learning import SEED, markdown, score
    cubes = 4  # the benchmark's 64 make the same comparison, slower
    assert main([f"--init={run_dir}", f"--out={tmp_path}", f"--cubes={cubes}", f"--seed={SEED}"]) == 0
    report = json.loads((tmp_path / "restore.json").read_text())
    described, table, warnings = score(run_dir, cubes)
    assert described == report["model"] and warnings == report["warnings"]
    assert table == report["deformations"]
    lines = "\n".join(table_lines(table))
    assert lines in (tmp_path / "restore.md").read_text()
    assert lines in markdown({"wall_s": 1.0, "flags": "", "checkpoint": described, "deformations": table,
                              "warnings": warnings})


def test_restore_from_an_official_layout_pt(tmp_path):
    pytest.importorskip("torch")
    from flax import nnx

    from genesis_jax.models import UNet3D, save_pytorch_checkpoint
    save_pytorch_checkpoint(UNet3D(width=2, rngs=nnx.Rngs(0)), tmp_path / "genesis.pt")
    out = tmp_path / "restore"
    assert main([f"--init={tmp_path / 'genesis.pt'}", f"--out={out}", "--cubes=2"]) == 0
    report = json.loads((out / "restore.json").read_text())
    assert "PyTorch UNet3D, width 2" in report["model"]
    assert list(report["deformations"]) == list(DEFORMATIONS)  # the paper's deformations: no run_pipeline row


def test_the_run_pipeline_row_corrupts_as_the_run_trained(cubes):
    from genesis_jax.configs.demo import get_config
    from genesis_jax.deform import DeformConfig, genesis_batch
    cfg = get_config()
    cfg.deform.nonlinear_rate, cfg.deform.local_blocks = 0.9, 10_000
    cfg.deform.batch_mode, cfg.deform.lookups = "vmap", "compute"  # how it computes: the same arrays
    assert own_deformations(cfg) is None
    cfg.deform.nonlinear_rate = 0.0
    run_deform = own_deformations(cfg)
    assert run_deform == DeformConfig(nonlinear_rate=0.0, batch_mode="vmap", lookups="compute")
    key, x = jax.random.key(3), jnp.asarray(cubes)
    for got, want in zip(corrupt(RUN_PIPELINE, key, x, run_deform), genesis_batch(key, x, run_deform)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for got, want in zip(corrupt("pipeline", key, x, run_deform), genesis_batch(key, x, DeformConfig())):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    rows = restoration_table(Copy(), cubes, 0, run_deform)
    assert list(rows) == [*DEFORMATIONS, RUN_PIPELINE]
    assert rows[RUN_PIPELINE]["identity_mse"] != rows["pipeline"]["identity_mse"]


class Constant(nnx.Module):
    """Mid-grey whatever it is given: what a collapsed pre-training gives."""

    def __call__(self, x):
        return jnp.full_like(x, 0.5)


class Copy(nnx.Module):
    """Its input, unchanged: what a model that learned the identity gives."""

    def __call__(self, x):
        return x


@pytest.fixture(scope="module")
def cubes():
    from genesis_jax.restore import sample
    from genesis_jax.data import sample_path
    return sample(sample_path(), (16, 16, 16), "ct", "foreground", 4, 0)


def test_a_constant_model_is_called_close_to_a_constant(cubes):
    rows = restoration_table(Constant(), cubes, 0)
    assert all(verdict(row).startswith("no better than") and "a constant" in verdict(row)
               for row in rows.values() if row["identity_mse"] > 1e-9), {n: verdict(r) for n, r in rows.items()}
    assert all(row["correlation"] == 0.0 for row in rows.values())
    n = sum(row["identity_mse"] > 1e-9 for row in rows.values())  # a stage may leave 16^3 cubes as they were
    lines = summary_lines(rows)
    assert n >= 3 and lines[0].startswith("this model is close to a constant: its restorations correlate 0.00 with the "
                                          f"originals on average (a constant: 0), and on {n} of {n} deformations")


def test_a_model_that_copies_its_input_is_called_one_that_does_not_restore(cubes):
    rows = restoration_table(Copy(), cubes, 0)
    changed = {name: row for name, row in rows.items() if row["identity_mse"] > 1e-9}
    assert len(changed) >= 3
    for row in rows.values():
        assert row["restored_mse"] == row["identity_mse"]
        assert verdict(row).startswith("unchanged input" if row["identity_mse"] <= 1e-9 else "no better than its input")
    lines = summary_lines(rows)
    assert not any("close to a constant" in line for line in lines)  # it follows the structure: high correlation
    assert lines[-1].startswith(
        f"this model does not restore: on {len(changed)} of {len(changed)} deformations its output is no closer")


def test_a_model_that_restores_gets_no_warning():
    perfect = {"restored_mse": 0.001, "identity_mse": 0.05, "mean_mse": 0.02, "correlation": 0.9}
    assert verdict(perfect) == "restores" and summary_lines({"pipeline": perfect}) == []


def test_a_fine_tuning_run_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "seg").mkdir()
    cfg = get_segmentation_config()
    (tmp_path / "seg" / "config.json").write_text(cfg.to_json_best_effort())
    assert main([f"--init={tmp_path / 'seg'}", f"--out={tmp_path / 'out'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'seg'} is a segmentation fine-tuning run; restore checks what pre-training "
                   f"learned: pass a pre-training run directory or an official-layout .pt"]
    assert not (tmp_path / "out").exists()


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
