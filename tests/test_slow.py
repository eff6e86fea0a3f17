"""Full-size checks (the official width-32 U-Net on 64x64x32 cubes): `pytest -m slow`.
Excluded from the default run: XLA:CPU needs minutes to compile the full train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genesis_jax.deform import genesis_batch
from genesis_jax.models import UNet3D, count_params
from genesis_jax.models.init import flat_draw
from genesis_jax.optim import recipe_sgd
from genesis_jax.step import init_train_state, make_model_step
from genesis_jax.tasks import restoration_loss

pytestmark = pytest.mark.slow


def test_full_width_pretraining_step_on_genesis_cubes():
    model = UNet3D(rngs=nnx.Rngs(0))
    assert count_params(model) == 19_073_665
    tx = recipe_sgd(learning_rate=0.1)
    graphdef, state = init_train_state(model, tx)
    step = make_model_step(graphdef, tx, restoration_loss)
    cubes = flat_draw(jax.random.uniform, jax.random.key(0), (2, 64, 64, 32))
    corrupted, target = genesis_batch(jax.random.key(1), cubes)
    losses = []
    for _ in range(2):
        state, loss = step(state, corrupted, target)
        losses.append(float(loss))
    assert all(np.isfinite(losses)) and losses[1] < losses[0]


def test_full_width_pytorch_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    from genesis_jax.reference.torch_unet import TorchUNet3D

    from genesis_jax.models import load_pytorch_checkpoint, save_pytorch_checkpoint
    model = UNet3D(rngs=nnx.Rngs(0))
    model.eval()
    save_pytorch_checkpoint(model, tmp_path / "full.pt")
    tm = TorchUNet3D()
    tm.load_state_dict(torch.load(tmp_path / "full.pt", weights_only=True)["state_dict"], strict=True)
    tm.eval()
    x = np.random.default_rng(0).random((1, 64, 64, 32, 1), dtype=np.float32)
    with torch.no_grad():
        ours_in_torch = tm(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy().transpose(0, 2, 3, 4, 1)
    np.testing.assert_allclose(ours_in_torch, np.asarray(model(jnp.asarray(x))), atol=1e-4)
    again = load_pytorch_checkpoint(tmp_path / "full.pt")
    assert count_params(again) == 19_073_665



def test_full_width_2d_unet_round_trip_and_restoration_step(tmp_path):
    """Models Genesis 2D at full size: the width-32 UNet2D's export loads strictly into the
    PyTorch reference's 2D form with the same outputs (1e-4, 128x128), and its pre-training
    step on genesis_2d's deformations lowers the loss."""
    torch = pytest.importorskip("torch")
    from genesis_jax.configs.base import genesis_2d_base
    from genesis_jax.deform import DeformConfig, genesis_batch
    from genesis_jax.models import UNet2D, save_pytorch_checkpoint
    from genesis_jax.reference.torch_unet import TorchUNet3D
    model = UNet2D(rngs=nnx.Rngs(0))
    model.eval()
    save_pytorch_checkpoint(model, tmp_path / "full2d.pt")
    reference = TorchUNet3D(dims=2)
    reference.load_state_dict(torch.load(tmp_path / "full2d.pt", weights_only=True)["state_dict"], strict=True)
    reference.eval()
    x = np.random.default_rng(0).random((2, 128, 128, 1), dtype=np.float32)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(theirs, np.asarray(model(jnp.asarray(x))), atol=1e-4)
    cfg = DeformConfig(**genesis_2d_base().deform)
    images = jnp.asarray(np.random.default_rng(1).random((6, 128, 128), dtype=np.float32))
    corrupted, target = genesis_batch(jax.random.key(0), images, cfg)
    tx = recipe_sgd(0.1)
    graphdef, state = init_train_state(UNet2D(rngs=nnx.Rngs(1)), tx)
    step = make_model_step(graphdef, tx, restoration_loss)
    losses = []
    for _ in range(3):
        state, loss = step(state, corrupted, target)
        losses.append(float(loss))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]

# What "the demo visibly restores" means (issue 21): on cubes it never drew, corrupted by
# what it trained on (its own pipeline, and each of its deformations alone), clearly below
# the best constant's MSE and following the originals' structure. The demo leaves out the
# intensity map (genesis_jax/configs/demo.py says why): the paper's pipeline is not claimed.
DEMO_BEATS_MEAN, DEMO_CORRELATION = 0.8, 0.5


def test_the_demo_learns_to_restore(tmp_path, monkeypatch):
    """The demo as a user first runs it (one process, the machine's own devices), scored
    by restore's baselines on 64 cubes it never drew (issue 21: the demo's model was a
    constant, 1.21x the per-cube-mean baseline, correlation 0.13)."""
    from benchmarks.demo_learning import measure
    from genesis_jax.restore import RUN_PIPELINE
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    result = measure(tmp_path, [])
    rows = result["deformations"]
    for name in (RUN_PIPELINE, "local_pixel_shuffle", "inpaint", "outpaint"):
        assert rows[name]["restored_mse"] < DEMO_BEATS_MEAN * rows[name]["mean_mse"], (name, result)
        assert rows[name]["correlation"] > DEMO_CORRELATION, (name, result)
    assert not any(line.startswith("this model is close to a constant") for line in result["warnings"]), result
