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
