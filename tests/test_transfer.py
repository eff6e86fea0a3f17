"""Pre-trained weights into target-task models (genesis_jax/transfer.py)."""

import jax
import numpy as np
import pytest
from flax import nnx

from genesis_jax.errors import UserError
from genesis_jax.models import GenesisClassifier, UNet3D
from genesis_jax.rundir import load_source
from genesis_jax.transfer import transfer_weights


def flat(model):
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def test_segmentation_takes_all_but_the_final_layer():
    source = UNet3D(width=4, rngs=nnx.Rngs(1))
    target = UNet3D(width=4, n_class=3, rngs=nnx.Rngs(2))
    before = flat(target)
    copied = transfer_weights(target, source, "all_but_final")
    after, src = flat(target), flat(source)
    assert copied and not any(k.startswith("out_tr") for k in copied)
    for key in after:
        if key.startswith("out_tr"):
            np.testing.assert_array_equal(after[key], before[key])  # the 3-class head stays fresh
        else:
            np.testing.assert_array_equal(after[key], src[key])
    assert any(k.endswith("mean") for k in copied)  # BatchNorm statistics travel too


def test_classification_takes_the_encoder_only():
    source = UNet3D(width=4, rngs=nnx.Rngs(1))
    target = GenesisClassifier(UNet3D(width=4, rngs=nnx.Rngs(2)), n_class=2, rngs=nnx.Rngs(3))
    before = flat(target)
    copied = transfer_weights(target, source, "encoder")
    after, src = flat(target), flat(source)
    assert {k.split(".")[0] for k in copied} == {"down_tr64", "down_tr128", "down_tr256", "down_tr512"}
    for key in after:
        expected = src[key] if key.split(".")[0].startswith("down_tr") else before[key]
        np.testing.assert_array_equal(after[key], expected)
    logits = target(jax.numpy.zeros((2, 16, 16, 16, 1)))
    assert logits.shape == (2, 2)


def test_a_width_mismatch_names_the_arrays_and_copies_nothing():
    target = UNet3D(width=4, rngs=nnx.Rngs(2))
    before = flat(target)
    with pytest.raises(UserError, match=r"does not fit the model's encoder: \d+ mis-shaped: down_tr"):
        transfer_weights(target, UNet3D(width=2, rngs=nnx.Rngs(1)), "encoder", "ckpt")
    after = flat(target)
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_an_official_pt_is_a_source(tmp_path):
    pytest.importorskip("torch")
    from genesis_jax.models import save_pytorch_checkpoint
    source = UNet3D(width=2, rngs=nnx.Rngs(5))
    save_pytorch_checkpoint(source, tmp_path / "Genesis.pt")
    loaded, described, cfg = load_source(tmp_path / "Genesis.pt")
    assert "PyTorch UNet3D, width 2" in described and cfg is None
    target = UNet3D(width=2, n_class=2, rngs=nnx.Rngs(6))
    transfer_weights(target, loaded, "all_but_final")
    np.testing.assert_allclose(flat(target)["down_tr64.ops0.conv1.kernel"],
                               flat(source)["down_tr64.ops0.conv1.kernel"], rtol=1e-6)
    with pytest.raises(UserError, match="neither a genesis-jax run directory"):
        load_source(tmp_path / "nothing.bin")


def activations(model, x):
    """Every stage's output of the U-Net (skips, bottleneck, decoder, restoration)."""
    bottleneck, skips = model.encode(x)
    up256 = model.up_tr256(bottleneck, skips[2])
    up128 = model.up_tr128(up256, skips[1])
    up64 = model.up_tr64(up128, skips[0])
    return [*skips, bottleneck, up256, up128, up64, model.out_tr(up64)]


def test_a_one_channel_model_spread_over_three_channels_gives_its_activations():
    """The official 1-channel model into a 3-channel restoration model ("spread"): a case
    whose 3 channels are identical gives the one-channel model's activations at every stage
    (float32 rounding only), and each of the 3 outputs is the one-channel restoration."""
    source = UNet3D(width=4, rngs=nnx.Rngs(1))
    target = UNet3D(width=4, n_class=3, in_channels=3, rngs=nnx.Rngs(2))
    transfer_weights(target, source, "all")
    one = np.random.default_rng(0).random((2, 16, 16, 8, 1), dtype=np.float32)
    want = activations(source, jax.numpy.asarray(one))
    got = activations(target, jax.numpy.asarray(np.repeat(one, 3, axis=-1)))
    for a, b in zip(got[:-1], want[:-1]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got[-1]), np.repeat(np.asarray(want[-1]), 3, axis=-1), rtol=1e-5,
                               atol=1e-6)
    kernel = np.asarray(target.down_tr64.ops0.conv1.kernel.get_value())
    np.testing.assert_allclose(kernel[..., 1, :], np.asarray(source.down_tr64.ops0.conv1.kernel.get_value())[..., 0, :] / 3, rtol=1e-6)


def test_one_chosen_channel_takes_the_kernel_and_the_others_start_at_zero():
    """init_channels=1: channel 1 gets the one-channel kernel, the others zeros, so the model
    is the one-channel model of channel 1 whatever the other channels hold."""
    source = UNet3D(width=4, rngs=nnx.Rngs(1))
    target = UNet3D(width=4, n_class=2, in_channels=2, rngs=nnx.Rngs(2))
    transfer_weights(target, source, "all_but_final", init_channels="1")
    x = np.random.default_rng(1).random((2, 16, 16, 8, 2), dtype=np.float32)
    want = source.encode(jax.numpy.asarray(x[..., 1:]))[0]
    np.testing.assert_allclose(np.asarray(target.encode(jax.numpy.asarray(x))[0]), np.asarray(want), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(UserError, match="init_channels=2: the model has 2 input channels"):
        transfer_weights(UNet3D(width=4, in_channels=2, rngs=nnx.Rngs(3)), source, "encoder", init_channels="2")
    with pytest.raises(UserError, match="init_channels must be 'spread' or a channel number"):
        transfer_weights(target, source, "encoder", init_channels="mean")


def test_a_two_channel_source_does_not_fit_three_channels():
    with pytest.raises(UserError, match=r"mis-shaped: down_tr64.ops0.conv1.kernel \(3, 3, 3, 2, 4\) there"):
        transfer_weights(UNet3D(width=4, in_channels=3, rngs=nnx.Rngs(2)),
                         UNet3D(width=4, in_channels=2, rngs=nnx.Rngs(1)), "encoder")
