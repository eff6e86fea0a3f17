"""PyTorch interop: export -> import gives the same outputs in both directions, for both
BatchNorm modes; malformed checkpoints fail with a message naming the problem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="PyTorch interop tests need the 'torch' extra")

from genesis_jax.reference.torch_unet import TorchUNet3D  # noqa: E402

from genesis_jax.models import UNet3D, load_pytorch_checkpoint, save_pytorch_checkpoint  # noqa: E402

WIDTH = 4
TOL = 1e-4


def randomized_torch_model(always_batch_stats, n_class=1, seed=0):
    torch.manual_seed(seed)
    model = TorchUNet3D(n_class=n_class, width=WIDTH, always_batch_stats=always_batch_stats)
    with torch.no_grad():
        for name, buf in model.named_buffers():  # move running stats off their defaults
            if name.endswith("running_mean"):
                buf.copy_(torch.randn_like(buf) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand_like(buf) + 0.5)
        for name, p in model.named_parameters():
            if "bn1" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    return model


def cube_batch(seed=0):
    return np.random.default_rng(seed).random((2, 16, 16, 8, 1), dtype=np.float32)


def torch_forward(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy().transpose(0, 2, 3, 4, 1)


@pytest.mark.parametrize("bn_mode", ["batch", "running"])
def test_torch_to_jax(tmp_path, bn_mode):
    tm = randomized_torch_model(always_batch_stats=bn_mode == "batch")
    tm.eval()
    path = tmp_path / "genesis.pt"
    # The official release layout: DataParallel prefixes, epoch and optimizer state.
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tm.state_dict().items()},
                "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    model = load_pytorch_checkpoint(path, bn_mode=bn_mode)
    assert model.width == WIDTH
    model.eval()
    x = cube_batch()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(x))), torch_forward(tm, x), atol=TOL)


@pytest.mark.parametrize("bn_mode", ["batch", "running"])
def test_jax_to_torch(tmp_path, bn_mode):
    model = UNet3D(n_class=2, width=WIDTH, bn_mode=bn_mode, rngs=nnx.Rngs(1))
    model.train()
    model(jnp.asarray(cube_batch(5)))  # one training forward moves the running stats
    model.eval()
    path = tmp_path / "export.pt"
    save_pytorch_checkpoint(model, path)
    tm = TorchUNet3D(n_class=2, width=WIDTH, always_batch_stats=bn_mode == "batch")
    tm.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)
    # and back, before any forward (ContBatchNorm3d updates its running stats even in
    # eval): a bare state_dict round trip is exact
    torch.save(tm.state_dict(), tmp_path / "bare.pt")
    tm.eval()
    x = cube_batch(1)
    np.testing.assert_allclose(torch_forward(tm, x), np.asarray(model(jnp.asarray(x))), atol=TOL)
    again = load_pytorch_checkpoint(tmp_path / "bare.pt", bn_mode=bn_mode, n_class=2)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_running_stats_after_training_match_torch(tmp_path):
    """One training step's running-statistics update equals torch's (momentum, unbiased var)."""
    tm = randomized_torch_model(always_batch_stats=True)
    path = tmp_path / "w.pt"
    torch.save(tm.state_dict(), path)
    model = load_pytorch_checkpoint(path)
    x = cube_batch(2)
    tm.train()
    torch_forward(tm, x)
    model.train()
    model(jnp.asarray(x))
    bn_t, bn_j = tm.up_tr64.ops[1].bn1, model.up_tr64.ops1.bn1
    np.testing.assert_allclose(np.asarray(bn_j.mean[...]), bn_t.running_mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn_j.var[...]), bn_t.running_var.numpy(), rtol=1e-4)


def test_wrong_architecture_is_refused_with_the_keys_named(tmp_path):
    tm = TorchUNet3D(width=WIDTH)
    state = tm.state_dict()
    state.pop("up_tr64.ops.1.conv1.bias")
    state["extra.head.weight"] = torch.zeros(3)
    state["down_tr128.ops.0.conv1.weight"] = torch.zeros(8, 7, 3, 3, 3)
    torch.save({"state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        load_pytorch_checkpoint(tmp_path / "bad.pt")
    message = str(err.value)
    assert "bad.pt" in message
    assert "missing: up_tr64.ops.1.conv1.bias" in message
    assert "unexpected: extra.head.weight" in message
    assert "mis-shaped: down_tr128.ops.0.conv1.weight" in message


def test_other_bad_files_are_refused_clearly(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable PyTorch checkpoint"):
        load_pytorch_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a Genesis UNet3D/UNet2D or smp Unet"):
        load_pytorch_checkpoint(tmp_path / "other.pt")
    torch.save(TorchUNet3D(n_class=3, width=WIDTH).state_dict(), tmp_path / "three.pt")
    with pytest.raises(ValueError, match="n_class=3, asked for n_class=1"):
        load_pytorch_checkpoint(tmp_path / "three.pt", n_class=1)


@pytest.mark.parametrize("bn_mode", ["batch", "running"])
def test_multi_channel_models_both_directions(tmp_path, bn_mode):
    """The official layout with 3 input channels and 2 classes (first and last layers of
    other shapes): import reads both counts from the checkpoint; export loads strictly."""
    torch.manual_seed(1)
    tm = TorchUNet3D(n_class=2, width=WIDTH, always_batch_stats=bn_mode == "batch", in_channels=3)
    tm.eval()
    torch.save({"state_dict": tm.state_dict()}, tmp_path / "three_channels.pt")
    model = load_pytorch_checkpoint(tmp_path / "three_channels.pt", bn_mode=bn_mode)
    assert (model.in_channels, model.n_class) == (3, 2)
    model.eval()
    x = np.random.default_rng(2).random((2, 16, 16, 8, 3), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(x))), torch_forward(tm, x), atol=TOL)

    ours = UNet3D(n_class=2, width=WIDTH, bn_mode=bn_mode, rngs=nnx.Rngs(3), in_channels=3)
    ours.eval()
    save_pytorch_checkpoint(ours, tmp_path / "ours.pt")
    back = TorchUNet3D(n_class=2, width=WIDTH, always_batch_stats=bn_mode == "batch", in_channels=3)
    back.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True)["state_dict"], strict=True)
    back.eval()
    np.testing.assert_allclose(torch_forward(back, x), np.asarray(ours(jnp.asarray(x))), atol=TOL)


def test_an_input_with_other_channels_is_refused_clearly():
    model = UNet3D(width=WIDTH, rngs=nnx.Rngs(0), in_channels=2)
    with pytest.raises(ValueError, match="takes 2 input channel"):
        model(jnp.zeros((1, 16, 16, 8, 1)))
