"""The Models Genesis 2D models: UNet2D (the official U-Net's 2D counterpart) against the
PyTorch reference's 2D form, and ResNet18UNet against segmentation_models_pytorch's
Unet("resnet18"), outputs to 1e-4 in both directions and both BatchNorm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="PyTorch interop tests need the 'torch' extra")
smp = pytest.importorskip("segmentation_models_pytorch", reason="smp parity needs the test dependencies")

from genesis_jax.models import load_pytorch_checkpoint, save_pytorch_checkpoint  # noqa: E402
from genesis_jax.models.resnet_unet import ResNet18UNet  # noqa: E402
from genesis_jax.models.unet import UNet2D, count_params  # noqa: E402
from genesis_jax.reference.torch_unet import TorchUNet3D  # noqa: E402

TOL = 1e-4


def images(channels=1, seed=0, side=64):
    return np.random.default_rng(seed).random((2, side, side, channels), dtype=np.float32)


def torch_forward(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy().transpose(0, 2, 3, 1)


def move_running_stats(model, seed):
    """Running statistics and BatchNorm affines off their defaults, so that the eval-mode
    comparison sees them."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn_like(buf) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand_like(buf) + 0.5)
    return model


def smp_unet(channels=1, classes=1, seed=0):
    torch.manual_seed(seed)
    return move_running_stats(smp.Unet("resnet18", encoder_weights=None, in_channels=channels, classes=classes), seed)


def test_the_2d_models_have_the_reference_parameter_counts():
    unet = nnx.eval_shape(lambda: UNet2D(rngs=nnx.Rngs(0)))
    torch_unet = TorchUNet3D(dims=2)
    assert count_params(unet) == sum(p.numel() for p in torch_unet.parameters()) == 6_821_953
    resnet = nnx.eval_shape(lambda: ResNet18UNet(rngs=nnx.Rngs(0)))
    assert count_params(resnet) == sum(p.numel() for p in smp_unet().parameters()) == 14_321_937


@pytest.mark.parametrize("bn_mode", ["batch", "running"])
def test_unet2d_both_directions(tmp_path, bn_mode):
    reference = move_running_stats(TorchUNet3D(n_class=2, width=4, always_batch_stats=bn_mode == "batch", dims=2), 1)
    reference.eval()
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "unet2d.pt")
    model = load_pytorch_checkpoint(tmp_path / "unet2d.pt", bn_mode=bn_mode)
    assert isinstance(model, UNet2D) and (model.width, model.n_class) == (4, 2)
    model.eval()
    x = images(seed=1, side=32)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(x))), torch_forward(reference, x), atol=TOL)

    ours = UNet2D(n_class=2, width=4, bn_mode=bn_mode, rngs=nnx.Rngs(2))
    ours.train()
    ours(jnp.asarray(images(seed=3, side=32)))  # moves the running statistics
    ours.eval()
    save_pytorch_checkpoint(ours, tmp_path / "ours.pt")
    back = TorchUNet3D(n_class=2, width=4, always_batch_stats=bn_mode == "batch", dims=2)
    back.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True)["state_dict"], strict=True)
    back.eval()
    np.testing.assert_allclose(torch_forward(back, x), np.asarray(ours(jnp.asarray(x))), atol=TOL)


def smp_outputs(model, x, train: bool):
    """smp's sigmoid outputs in train (batch statistics) or eval (running) mode."""
    model.train(train)
    return 1.0 / (1.0 + np.exp(-torch_forward(model, x)))


@pytest.mark.parametrize("channels,classes", [(1, 1), (3, 2)])
def test_smp_to_jax_in_both_batchnorm_modes(tmp_path, channels, classes):
    """A bare state_dict of smp.Unet("resnet18") and the {"state_dict": ...} form load as a
    ResNet18UNet. bn_mode running (the default for this layout): eval uses the running
    statistics as smp.eval(); bn_mode batch: batch statistics, as smp.train()."""
    reference = smp_unet(channels, classes, seed=4)
    torch.save(reference.state_dict(), tmp_path / "bare.pt")
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "wrapped.pt")
    x = images(channels, seed=5)
    model = load_pytorch_checkpoint(tmp_path / "bare.pt")
    assert isinstance(model, ResNet18UNet) and (model.in_channels, model.n_class, model.bn_mode) == (channels, classes,
                                                                                                    "running")
    model.eval()
    expected = smp_outputs(reference, x, train=False)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(x))), expected, atol=TOL)
    np.testing.assert_allclose(np.asarray(model.logits(jnp.asarray(x))), np.log(expected / (1 - expected)), atol=1e-3)
    batch_mode = load_pytorch_checkpoint(tmp_path / "wrapped.pt", bn_mode="batch")
    batch_mode.eval()
    np.testing.assert_allclose(np.asarray(batch_mode(jnp.asarray(x))), smp_outputs(reference, x, train=True),
                               atol=TOL)


@pytest.mark.parametrize("bn_mode", ["batch", "running"])
def test_jax_to_smp_loads_strictly_with_the_same_outputs(tmp_path, bn_mode):
    ours = ResNet18UNet(n_class=2, bn_mode=bn_mode, rngs=nnx.Rngs(6), in_channels=3)
    ours.train()
    ours(jnp.asarray(images(3, seed=6)))  # moves the running statistics
    ours.eval()
    save_pytorch_checkpoint(ours, tmp_path / "ours.pt")
    reference = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=2)
    reference.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True)["state_dict"], strict=True)
    x = images(3, seed=7)
    np.testing.assert_allclose(smp_outputs(reference, x, train=bn_mode == "batch"), np.asarray(ours(jnp.asarray(x))),
                               atol=TOL)


def test_a_training_forward_updates_the_running_statistics_as_smp_does(tmp_path):
    reference = smp_unet(seed=8)
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    model = load_pytorch_checkpoint(tmp_path / "w.pt")
    x = images(seed=9)
    smp_outputs(reference, x, train=True)
    model.train()
    model(jnp.asarray(x))
    for ours, theirs in ((model.encoder.layer3[0].bn2, reference.encoder.layer3[0].bn2),
                         (model.decoder.blocks[4].conv2.layers[1], reference.decoder.blocks[4].conv2[1])):
        np.testing.assert_allclose(np.asarray(ours.mean[...]), theirs.running_mean.numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(ours.var[...]), theirs.running_var.numpy(), rtol=1e-4)


def test_shapes_smp_cannot_take_are_refused():
    model = ResNet18UNet(width=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="H, W divisible by 32"):
        model(jnp.zeros((1, 48, 64, 1)))
    with pytest.raises(ValueError, match="width 8 has no PyTorch layout"):
        save_pytorch_checkpoint(model, "/nonexistent/never.pt")
    assert model(jnp.zeros((1, 32, 64, 1))).shape == (1, 32, 64, 1)
