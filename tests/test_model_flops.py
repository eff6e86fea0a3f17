"""program.model_flops: convolution and matmul FLOPs counted from the jaxpr, the count
MFU is reported with on every backend (XLA's cost analysis leaves out cuDNN calls)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax import lax

from genesis_jax import program
from genesis_jax.models import UNet3D


def test_a_grouped_strided_convolution_counts_its_multiply_adds():
    x = jax.ShapeDtypeStruct((2, 9, 8, 6), jnp.float32)      # N, C, H, W
    w = jax.ShapeDtypeStruct((6, 3, 3, 2), jnp.float32)      # O, I / groups, kh, kw
    f = lambda x, w: lax.conv_general_dilated(x, w, (2, 1), "SAME", feature_group_count=3)
    out = jax.eval_shape(f, x, w).shape                      # (2, 6, 4, 6)
    assert program.model_flops(jax.make_jaxpr(f)(x, w)) == 2 * (2 * 6 * 4 * 6) * 3 * (3 * 2)
    assert out == (2, 6, 4, 6)


def test_matmuls_loops_and_branches():
    a = jax.ShapeDtypeStruct((5, 7, 3), jnp.float32)
    b = jax.ShapeDtypeStruct((5, 3, 11), jnp.float32)
    one = 2 * 5 * 7 * 11 * 3
    assert program.model_flops(jax.make_jaxpr(jnp.matmul)(a, b)) == one

    def scanned(a, b):                                       # body counted `length` times
        return lax.scan(lambda c, _: (c, jnp.matmul(a, b)), 0.0, None, length=4)[1]
    assert program.model_flops(jax.make_jaxpr(scanned)(a, b)) == 4 * one

    def branches(p, a, b):                                   # the dearer branch counts
        return lax.cond(p, lambda: jnp.matmul(a, b).sum(), lambda: a.sum())
    assert program.model_flops(jax.make_jaxpr(branches)(True, a, b)) == one
    assert program.model_flops(jax.make_jaxpr(jax.jit(jnp.matmul))(a, b)) == one  # through pjit


@pytest.mark.parametrize("conv", ["native", "stacked2d"])
def test_the_full_unet_costs_what_the_guide_says(conv):
    """GUIDE.md section 4: 244.2 GFLOP forward per 64x64x32 cube; 732.7 per training
    sample counts the first layer's input gradient too, which training does not compute
    (2 x 64*64*32 x 32 x 27 = 0.23 GFLOP). Tracing only: nothing is compiled."""
    graphdef, state = nnx.split(UNet3D(width=32, dtype=jnp.bfloat16, rngs=nnx.Rngs(0), conv=conv))
    x = jax.ShapeDtypeStruct((1, 64, 64, 32, 1), jnp.float32)

    def loss(state, x):
        return jnp.mean((nnx.merge(graphdef, state)(x).astype(jnp.float32) - x) ** 2)

    forward = program.model_flops(jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x))
    training = program.model_flops(jax.make_jaxpr(jax.grad(loss))(state, x))
    first_input_gradient = 2 * 64 * 64 * 32 * 32 * 27
    assert forward == pytest.approx(244.2e9, rel=2e-4)
    assert training + first_input_gradient == pytest.approx(732.7e9, rel=2e-4)
