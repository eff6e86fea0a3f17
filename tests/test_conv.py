"""The 3x3x3 convolution's formulations (genesis_jax/models/conv.py) equal XLA's 3D
convolution, with gradients, and the layer's weights are nnx.Conv's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genesis_jax.models import UNet3D
from genesis_jax.models.conv import Conv3, conv3x3x3, formulation, resolve_conv_mode
from genesis_jax.models.init import flat_draw


def reference(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


@pytest.mark.parametrize("shape,cin,cout", [((2, 8, 8, 4), 1, 4), ((1, 16, 8, 8), 6, 5), ((3, 4, 4, 4), 16, 8)])
def test_stacked2d_equals_the_3d_convolution_with_gradients(shape, cin, cout):
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = flat_draw(jax.random.normal, kx, (*shape, cin))
    kernel = flat_draw(jax.random.normal, kk, (3, 3, 3, cin, cout)) / np.sqrt(27 * cin)
    cotangent = flat_draw(jax.random.normal, kg, (*shape, cout))
    expected, expected_vjp = jax.vjp(reference, x, kernel)
    for mode in ("stacked2d", "native"):
        out, vjp = jax.vjp(lambda x, k: conv3x3x3(x, k, mode), x, kernel)
        np.testing.assert_allclose(out, expected, atol=2e-5, err_msg=mode)
        for ours, theirs in zip(vjp(cotangent), expected_vjp(cotangent)):
            np.testing.assert_allclose(ours, theirs, atol=5e-5, rtol=1e-5, err_msg=mode)


def test_a_wrong_tap_order_would_be_caught():
    """The check above can fail: flipping the X taps (a plausible bug) changes the output."""
    x = flat_draw(jax.random.normal, jax.random.key(1), (1, 6, 6, 6, 2))
    kernel = flat_draw(jax.random.normal, jax.random.key(2), (3, 3, 3, 2, 3))
    assert np.abs(conv3x3x3(x, jnp.flip(kernel, 0), "stacked2d") - reference(x, kernel)).max() > 1e-2


def test_the_layer_has_nnx_convs_weights_and_outputs():
    ours = Conv3(3, 5, jnp.float32, nnx.Rngs(4))
    theirs = nnx.Conv(3, 5, (3, 3, 3), padding=((1, 1),) * 3, param_dtype=jnp.float32, rngs=nnx.Rngs(4))
    np.testing.assert_array_equal(ours.kernel[...], theirs.kernel[...])
    np.testing.assert_array_equal(ours.bias[...], theirs.bias[...])
    x = flat_draw(jax.random.normal, jax.random.key(3), (2, 8, 8, 8, 3))
    np.testing.assert_allclose(ours(x), theirs(x), atol=2e-5)


def test_the_unet_output_does_not_depend_on_the_formulation():
    x = flat_draw(jax.random.uniform, jax.random.key(5), (2, 16, 16, 8, 1))
    outputs = {}
    for mode in ("native", "stacked2d"):
        model = UNet3D(width=4, conv=mode, rngs=nnx.Rngs(0))
        outputs[mode] = np.asarray(model(x))
    np.testing.assert_allclose(outputs["native"], outputs["stacked2d"], atol=1e-5)


def test_auto_is_native_on_accelerators_and_decided_per_shape_on_cpu():
    assert resolve_conv_mode("auto", "gpu") == "native" and resolve_conv_mode("auto", "tpu") == "native"
    assert resolve_conv_mode("auto", "cpu") == "auto" and resolve_conv_mode("native", "cpu") == "native"
    # This machine is a CPU: up to the width-32 U-Net's 64->64 at 64x64x32 (1.15-1.19x faster
    # stacked), not its 192->64 there (1.01-1.08x) nor 384->128 at 32x32x16 (0.97-1.02x).
    assert formulation("auto", (2, 64, 64, 32, 48), 16) == "stacked2d"
    assert formulation("auto", (2, 64, 64, 32, 64), 64) == "stacked2d"
    assert formulation("auto", (2, 64, 64, 32, 192), 64) == "native"
    assert formulation("auto", (2, 32, 32, 16, 384), 128) == "native"
    assert formulation("stacked2d", (2, 64, 64, 32, 192), 64) == "stacked2d"
    with pytest.raises(ValueError, match="conv mode must be one of"):
        resolve_conv_mode("winograd")
