"""Layers with fp32 weights computed in a lower dtype (bf16): weight gradients in fp32.

Autodiff of `op(x, w.astype(bf16))` forms the weight's gradient with a contraction over
the batch whose result is bf16, cast to fp32 afterwards. With the batch split over
devices, the partitioner completes that contraction with an all-reduce right where it
is produced, so every gradient would be summed across devices in bf16 (8 bits of
mantissa, over hundreds of chips on a pod) and only then widened. The functions here
give each weighted op a gradient whose weight contraction asks for an fp32 result
(preferred_element_type: the accumulation that MXUs and tensor cores do in fp32 anyway),
so the cross-device sum is an fp32 one. The activations' gradients stay in the compute
dtype, and the forward pass is unchanged. Where the compute dtype is the weights' own,
these are the plain ops (autodiff as ever). tests/test_mixed_precision.py checks both
the numbers and, on the compiled 8-device step, the dtype each gradient is summed in.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

_SPATIAL = "DHW"


def linear(forward: Callable, weight_grad: Callable, x: jax.Array, w: jax.Array,
           input_grad: Callable | None = None) -> jax.Array:
    """forward(x, w.astype(x.dtype)), linear in w; where x's dtype is not w's, the gradient
    of w is weight_grad(x, g) in w's dtype instead of autodiff's x.dtype contraction.
    x's gradient: input_grad(w, g), by default the transpose of forward in x (forward must
    then be linear in x; transposing rather than differentiating keeps a second forward
    pass out of the traced program, where the model's FLOP count would see it)."""
    if x.dtype == w.dtype:
        return forward(x, w)

    @jax.custom_vjp
    def op(x, w):
        return forward(x, w.astype(x.dtype))

    def op_fwd(x, w):
        # symbolic_zeros: x.perturbed says whether x's gradient is wanted at all (not for
        # the network's input), kept as the presence of a marker in the residuals.
        low = w.value.astype(x.value.dtype)
        return forward(x.value, low), (x.value, low, () if x.perturbed else None)

    def op_bwd(saved, g):
        x, low, wanted = saved
        if isinstance(g, SymbolicZero):  # an unused output
            return None, None
        if wanted is None:
            x_grad = None
        elif input_grad is None:
            x_grad = jax.linear_transpose(lambda v: forward(v, low), x)(g)[0]
        else:
            x_grad = input_grad(low, g)
        return x_grad, weight_grad(x, g).astype(w.dtype)

    op.defvjp(op_fwd, op_bwd, symbolic_zeros=True)
    return op(x, w)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y + bias over the last axis, in y's dtype; the bias's gradient summed in fp32."""
    if y.dtype == bias.dtype:
        return y + bias
    return linear(lambda y, b: y + b, lambda y, g: jnp.sum(g, axis=tuple(range(g.ndim - 1)), dtype=bias.dtype),
                  y, bias, input_grad=lambda b, g: g)


def einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """jnp.einsum(spec, x, w) in x's dtype, for a spec "X,W->Y" (no repeated output
    letters); w's gradient is einsum("X,Y->W") accumulated in fp32."""
    inputs, out = spec.split("->")
    x_letters, w_letters = inputs.split(",")
    grad_spec = f"{x_letters},{out}->{w_letters}"
    return linear(lambda x, w: jnp.einsum(spec, x, w),
                  lambda x, g: jnp.einsum(grad_spec, x, g, preferred_element_type=jnp.float32), x, w)


def conv(x: jax.Array, kernel: jax.Array, strides: int = 1, padding: int = 1) -> jax.Array:
    """Channels-last convolution (N, *spatial, C) with kernel (*window, C, O), the same
    stride and symmetric padding on every spatial axis, in x's dtype."""
    d = x.ndim - 2
    numbers = _numbers(d)

    def forward(x, k):
        return jax.lax.conv_general_dilated(x, k, (strides,) * d, ((padding, padding),) * d,
                                            dimension_numbers=numbers)

    return linear(forward, lambda x, g: conv_kernel_grad(x, g, kernel.shape[:d], strides, padding), x, kernel)


def conv_kernel_grad(x: jax.Array, g: jax.Array, window, strides: int = 1, padding: int = 1) -> jax.Array:
    """The kernel gradient of conv(x, kernel) given the output's gradient g, in fp32:
    the correlation of x with g over batch and space (lax's transpose rule for the
    kernel, written out so that its result can be fp32 while x and g stay bf16)."""
    d = x.ndim - 2
    spatial = _SPATIAL[3 - d:]
    # The transposed convolution slides g, dilated by the stride, over the padded x:
    # low padding as the forward's, high padding so that the output is the window.
    pads = [(padding, (n_out - 1) * strides + 1 - n_in + k - padding - 1)
            for n_in, n_out, k in zip(x.shape[1:-1], g.shape[1:-1], window)]
    return jax.lax.conv_general_dilated(
        x, g, (1,) * d, pads, rhs_dilation=(strides,) * d,
        dimension_numbers=(f"C{spatial}N", f"I{spatial}O", f"{spatial}NC"), preferred_element_type=jnp.float32)


def _numbers(d: int):
    spatial = _SPATIAL[3 - d:]
    return (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
