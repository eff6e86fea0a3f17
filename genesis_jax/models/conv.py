"""The U-Net's 3x3x3 convolution, formulated per backend.

XLA:CPU's 3D convolution is several times slower than the same arithmetic written as
2D convolutions; GPU (cuDNN) and TPU compile 3D convolutions well. So:

- "native": lax.conv_general_dilated in 3D (GPU, TPU).
- "stacked2d": fold X into the batch and put the three X taps side by side as input
  channels: stacked[n, x, y, z, a*C + i] = padded[n, x + a, y, z, i], then one 2D
  convolution over (Y, Z) with kernel2d[b, c, a*C + i, o] = kernel[a, b, c, i, o]. The
  same sums in another order (equal to float rounding); gradients by autodiff.
- "auto": native on GPU/TPU; on CPU, per convolution, stacked2d where it was measured
  faster, native elsewhere (below). Resolved when the model is traced, so a program
  compiled ahead of time for another platform must name its platform (the dry run does).

On CPU (benchmarks/conv_formulations.py, 2 cores, jax 0.10.2, forward + both gradients,
batch 2, three runs on a quiet machine, 2026-12-07): stacked2d was 2.4-6.0x faster than
native for every convolution of the width-8 U-Net on 64x64x32 cubes and 1.1-4.7x for
the width-32 U-Net's up to 5.4e8 in x out x voxels per example (64->64 at 64x64x32:
1.15-1.19x; 768->256 at 16x16x8: 1.08-1.17x); above that 192->64 at 64x64x32 was
1.01-1.08x and 384->128 at 32x32x16 0.97-1.02x, a tie not worth stacking's 3x input copy,
so "auto" keeps native there.

The parameters are those of nnx.Conv (kernel (3, 3, 3, I, O), bias (O,)), initialised
with the same keys and numbers (models/init.py draws them flat), so weights, PyTorch
import/export and checkpoints do not depend on the formulation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from genesis_jax.models import mixed
from genesis_jax.models.init import lecun_normal

CONV_MODES = ("auto", "native", "stacked2d")
STACKED_MAX_WORK = 5.4e8  # in_ch x out_ch x voxels per example up to which "auto" stacks on CPU


def resolve_conv_mode(mode: str, platform: str | None = None) -> str:
    """native or stacked2d where the platform decides; "auto" on CPU (decided per shape)."""
    if mode not in CONV_MODES:
        raise ValueError(f"conv mode must be one of {CONV_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "auto" if (platform or jax.default_backend()) == "cpu" else "native"


def formulation(mode: str, x_shape, out_ch: int) -> str:
    """The formulation used for one convolution: native or stacked2d (3D only: a 2D
    image's convolution is native whatever the mode)."""
    mode = resolve_conv_mode(mode)
    if len(x_shape) == 4:
        return "native"
    if mode != "auto":
        return mode
    _, dx, dy, dz, in_ch = x_shape
    return "stacked2d" if in_ch * out_ch * dx * dy * dz <= STACKED_MAX_WORK else "native"


def conv3x3x3(x: jax.Array, kernel: jax.Array, mode: str = "auto") -> jax.Array:
    """'SAME' 3x3x3 convolution of x (N, X, Y, Z, C) with kernel (3, 3, 3, C, O), no bias;
    or 3x3 of an image batch x (N, H, W, C) with kernel (3, 3, C, O). Computed in x's
    dtype; an fp32 kernel with bf16 x gets its gradient in fp32 (models/mixed.py)."""
    if x.ndim == 4 or formulation(mode, x.shape, kernel.shape[-1]) == "native":
        return mixed.conv(x, kernel)
    return mixed.linear(_stacked_conv, _stacked_kernel_grad, x, kernel)


def _stack(x):
    """(N * X, Y, Z, 3C): each voxel's three X taps side by side as channels."""
    n, dx, dy, dz, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    return jnp.concatenate([padded[:, a:a + dx] for a in range(3)], axis=-1).reshape(n * dx, dy, dz, 3 * c)


def _stacked_conv(x, kernel):
    n, dx, dy, dz, c = x.shape
    kernel2d = kernel.transpose(1, 2, 0, 3, 4).reshape(3, 3, 3 * c, kernel.shape[-1])
    y = jax.lax.conv_general_dilated(_stack(x), kernel2d, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(n, dx, dy, dz, kernel.shape[-1])


def _stacked_kernel_grad(x, g):
    n, dx, dy, dz, c = x.shape
    grad2d = mixed.conv_kernel_grad(_stack(x), g.reshape(n * dx, dy, dz, g.shape[-1]), (3, 3))
    return grad2d.reshape(3, 3, 3, c, g.shape[-1]).transpose(2, 0, 1, 3, 4)  # (b, c, a, i, o) -> (a, b, c, i, o)


class Conv3(nnx.Module):
    """nnx.Conv(in, out, (3, 3, 3), padding 1, bias) with a per-backend formulation;
    dims=2: (3, 3), the 2D U-Net's."""

    def __init__(self, in_ch: int, out_ch: int, dtype, rngs: nnx.Rngs, mode: str = "auto", dims: int = 3):
        resolve_conv_mode(mode)
        self.kernel = nnx.Param(lecun_normal(rngs.params(), (3,) * dims + (in_ch, out_ch), jnp.float32))
        rngs.params()  # nnx.Conv draws a key for its (zero) bias: keep the key sequence, so every weight is as before
        self.bias = nnx.Param(jnp.zeros((out_ch,), jnp.float32))
        self.dtype, self.mode = dtype, mode

    def __call__(self, x):
        return mixed.add_bias(conv3x3x3(x.astype(self.dtype), self.kernel[...], self.mode), self.bias[...])
