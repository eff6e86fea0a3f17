"""The Models Genesis 3D U-Net (official PyTorch UNet3D) in Flax NNX, channel-last, and
its 2D counterpart for Models Genesis 2D (dims=2: the same widths and blocks with 3x3
convolutions, 2x2 pooling and 2x2 transposed convolutions on (N, H, W, C)).

Architecture (GUIDE.md section 3), with w = width (32 in the official model):
  encoder  1 -> w -> 2w, pool | 2w -> 2w -> 4w, pool | 4w -> 4w -> 8w, pool | 8w -> 8w -> 16w
  decoder  up 16w, cat 8w -> 8w -> 8w | up 8w, cat 4w -> 4w -> 4w | up 4w, cat 2w -> 2w -> 2w
  head     1x1x1 conv 2w -> n_class, sigmoid
Every conv is 3x3x3 (padding 1, bias) + BatchNorm + ReLU; concatenation order is
[upsampled, skip]. Submodule names follow the PyTorch state_dict keys
(down_tr64.ops.0.conv1 -> down_tr64.ops0.conv1) so that weight import/export is a rename.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from genesis_jax.models import mixed
from genesis_jax.models.conv import Conv3
from genesis_jax.models.init import lecun_normal, uniform

BN_MODES = ("batch", "running")


class BatchNorm(nnx.Module):
    """BatchNorm over all axes but the channel axis, with PyTorch's semantics.

    mode "batch": always normalise with the batch statistics (the official
    ContBatchNorm3d, in training and evaluation alike) while updating the running
    statistics in training. mode "running": standard BatchNorm, batch statistics in
    training and running statistics in evaluation (`model.eval()`).
    Running statistics follow torch: new = (1 - momentum) * old + momentum * batch, with
    the unbiased batch variance. Statistics are computed in float32 whatever the
    compute dtype. Under jit with the batch sharded, the means are over the global batch.
    """

    def __init__(self, channels: int, mode: str = "batch", *, momentum: float = 0.1, epsilon: float = 1e-5):
        if mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {mode!r}")
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))
        self.mode = mode
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = False  # toggled by model.train() / model.eval()

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if self.mode == "running" and self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axis=axes)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            if not self.use_running_average:
                count = x.size // x.shape[-1]
                unbiased = var * (count / max(count - 1, 1))
                self.mean[...] = (1 - self.momentum) * self.mean[...] + self.momentum * mean
                self.var[...] = (1 - self.momentum) * self.var[...] + self.momentum * unbiased
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


class LUConv(nnx.Module):
    """3x3x3 conv (padding 1, bias) + BatchNorm + ReLU (3x3 in 2D)."""

    def __init__(self, in_ch: int, out_ch: int, bn_mode: str, dtype, rngs: nnx.Rngs, conv: str = "auto",
                 dims: int = 3):
        self.conv1 = Conv3(in_ch, out_ch, dtype, rngs, mode=conv, dims=dims)
        self.bn1 = BatchNorm(out_ch, bn_mode)

    def __call__(self, x):
        return jax.nn.relu(self.bn1(self.conv1(x)))


class ConvTranspose2x(nnx.Module):
    """ConvTranspose3d with kernel 2, stride 2, computed as a 1x1x1 conv to 8 * C_out
    channels and a depth-to-space reshape (GUIDE.md section 4): the same arithmetic as
    lax.conv_transpose without XLA's slow lhs-dilated gradient.

    kernel[a, b, c, i, o] is torch's weight[i, o, a, b, c]: input voxel (x, y, z) and
    channel i feed output voxel (2x + a, 2y + b, 2z + c) and channel o.
    """

    def __init__(self, in_ch: int, out_ch: int, dtype, rngs: nnx.Rngs, *, fast: bool = True, dims: int = 3):
        bound = 1.0 / jnp.sqrt(out_ch * 2 ** dims)  # torch's default init for ConvTranspose3d/2d
        self.kernel = nnx.Param(uniform(rngs.params(), (2,) * dims + (in_ch, out_ch), -bound, bound))
        self.bias = nnx.Param(uniform(rngs.params(), (out_ch,), -bound, bound))
        self.dtype = dtype
        self.fast = fast

    def __call__(self, x):
        upsample = conv_transpose_2x if self.fast else conv_transpose_reference
        return upsample(x.astype(self.dtype), self.kernel[...], self.bias[...])


def conv_transpose_2x(x, kernel, bias):
    """The fast form: one matmul to (2, 2, 2, C_out) per voxel (2D: (2, 2, C_out) per
    pixel), then depth-to-space. In x's dtype, weight gradients in fp32 (models/mixed.py)."""
    if x.ndim == 4:
        n, dx, dy, _ = x.shape
        y = mixed.einsum("nxyi,abio->nxaybo", x, kernel)
        return mixed.add_bias(y.reshape(n, 2 * dx, 2 * dy, kernel.shape[-1]), bias)
    n, dx, dy, dz, _ = x.shape
    y = mixed.einsum("nxyzi,abcio->nxaybzco", x, kernel)
    return mixed.add_bias(y.reshape(n, 2 * dx, 2 * dy, 2 * dz, kernel.shape[-1]), bias)


def conv_transpose_reference(x, kernel, bias):
    """The same layer through lax.conv_transpose (XLA's lhs-dilated path), for tests
    and the benchmark."""
    kernel, bias = kernel.astype(x.dtype), bias.astype(x.dtype)
    dims = x.ndim - 2
    numbers = ("NDHWC", "DHWIO", "NDHWC") if dims == 3 else ("NHWC", "HWIO", "NHWC")
    # lax.conv_transpose correlates the dilated input; torch's transposed conv needs the flipped kernel.
    y = jax.lax.conv_transpose(x, jnp.flip(kernel, tuple(range(dims))), strides=(2,) * dims, padding="VALID",
                               dimension_numbers=numbers, transpose_kernel=False)
    return y + bias


class DownTransition(nnx.Module):
    def __init__(self, in_ch: int, depth: int, width: int, bn_mode, dtype, rngs, conv="auto", dims=3):
        out1 = width * 2 ** depth
        self.ops0 = LUConv(in_ch, out1, bn_mode, dtype, rngs, conv, dims)
        self.ops1 = LUConv(out1, 2 * out1, bn_mode, dtype, rngs, conv, dims)

    def __call__(self, x):
        return self.ops1(self.ops0(x))


class UpTransition(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, depth: int, width: int, bn_mode, dtype, rngs, fast_upconv=True,
                 conv="auto", dims=3):
        mid = width * 2 ** (depth + 1)
        self.up_conv = ConvTranspose2x(in_ch, out_ch, dtype, rngs, fast=fast_upconv, dims=dims)
        self.ops0 = LUConv(out_ch + out_ch // 2, mid, bn_mode, dtype, rngs, conv, dims)
        self.ops1 = LUConv(mid, mid, bn_mode, dtype, rngs, conv, dims)

    def __call__(self, x, skip):
        return self.ops1(self.ops0(jnp.concatenate([self.up_conv(x), skip.astype(x.dtype)], axis=-1)))


class OutputTransition(nnx.Module):
    def __init__(self, in_ch: int, n_class: int, dtype, rngs, dims: int = 3):
        self.final_conv = nnx.Conv(in_ch, n_class, (1,) * dims, dtype=dtype, param_dtype=jnp.float32,
                                   kernel_init=lecun_normal, rngs=rngs)

    def __call__(self, x):
        return jax.nn.sigmoid(pointwise(self.final_conv, x.astype(self.final_conv.dtype)).astype(jnp.float32))


def pointwise(layer: nnx.Conv | nnx.Linear, x):
    """A 1x1x1 nnx.Conv or an nnx.Linear applied over x's last axis in x's dtype, weight
    gradients in fp32 (models/mixed.py)."""
    kernel = layer.kernel[...]
    y = mixed.einsum("...i,io->...o", x, kernel.reshape(kernel.shape[-2:]))
    return mixed.add_bias(y, layer.bias[...])


def _encode(net, x):
    """The encoder shared by UNet3D and GenesisClassifier (both hold down_tr64..512)."""
    dims = net.down_tr64.ops0.conv1.kernel.ndim - 2
    if x.ndim != dims + 2 or any(d % 8 for d in x.shape[1:-1]):
        layout = "(N, X, Y, Z, C) with X, Y, Z" if dims == 3 else "(N, H, W, C) with H, W"
        raise ValueError(f"{type(net).__name__} expects {layout} divisible by 8, got {x.shape}")
    channels = net.down_tr64.ops0.conv1.kernel.shape[-2]
    if x.shape[-1] != channels:
        raise ValueError(f"the model takes {channels} input channel(s), got an input of {x.shape[-1]}: {x.shape}")
    x = x.astype(net.dtype)
    skip64 = net.down_tr64(x)
    skip128 = net.down_tr128(max_pool2(skip64))
    skip256 = net.down_tr256(max_pool2(skip128))
    return net.down_tr512(max_pool2(skip256)), (skip64, skip128, skip256)


@jax.custom_vjp
def max_pool2(x):
    """2x2x2 max pooling, stride 2, of x (N, X, Y, Z, C) (2x2 of (N, H, W, C)), with
    PyTorch's gradient: all of it to the first maximum of each window (x, then y, then z order).

    Why a custom gradient: jnp.max's own sends the gradient to every element equal to the
    maximum, divided by their count, so it compares each element with the maximum again in
    the backward pass. When XLA recomputes the pooled activation there instead of reading
    it back (its unoptimised CPU build does), that recomputation can round differently,
    no element equals the maximum, and the gradient is 0 / 0: the tiny train step went
    non-finite at step 2 with jax_disable_most_optimizations. The index of the maximum,
    found once in the forward pass, cannot disagree with itself. Without a gradient
    (evaluation, prediction) the maximum is the plain reshape-and-max; the same values.
    """
    n, *spatial, c = x.shape
    split = [s for d in spatial for s in (d // 2, 2)]
    return x.reshape(n, *split, c).max(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def _window_max(x):
    """(maxima (N, X/2, Y/2, Z/2, C), index 0..7 of each window's first maximum, int8)."""
    offsets = itertools.product((0, 1), repeat=x.ndim - 2)
    corners = [x[(slice(None),) + tuple(slice(o, None, 2) for o in offset)] for offset in offsets]
    best, index = corners[0], jnp.zeros(corners[0].shape, jnp.int8)
    for k, corner in enumerate(corners[1:], start=1):
        index = jnp.where(corner > best, jnp.int8(k), index)
        best = jnp.maximum(best, corner)
    return best, index


def _max_pool2_backward(index, g):
    n, *half, c = g.shape
    dims = len(half)
    parts = jnp.stack([jnp.where(index == k, g, jnp.zeros_like(g)) for k in range(2 ** dims)], axis=-1)
    # (n, *half, c, 2, .., 2) -> (n, h0, 2, h1, 2, .., c): each window offset beside its axis
    parts = parts.reshape(n, *half, c, *(2,) * dims)
    order = [0] + [a for i in range(dims) for a in (1 + i, 2 + dims + i)] + [1 + dims]
    return (parts.transpose(order).reshape(n, *(2 * h for h in half), c),)


max_pool2.defvjp(_window_max, _max_pool2_backward)


class UNet3D(nnx.Module):
    """Input (N, X, Y, Z, in_channels), X, Y, Z divisible by 8; output sigmoid probabilities
    (N, X, Y, Z, n_class) in float32. width=32 is the official model (19,073,665 parameters
    with one input channel and one class; each further input channel adds 27 * width
    weights, each further class 2 * width + 1).
    fast_upconv=False computes the transposed convs with lax.conv_transpose (the slow
    XLA path, kept for benchmarks and tests). conv: the 3x3x3 convolutions' formulation
    (models/conv.py: "auto" is 2D-stacked on CPU, native 3D elsewhere); the weights do
    not depend on it. dims=2: the 2D counterpart on (N, H, W, in_channels) (UNet2D)."""

    def __init__(self, n_class: int = 1, width: int = 32, bn_mode: str = "batch", dtype=jnp.float32,
                 *, rngs: nnx.Rngs, fast_upconv: bool = True, conv: str = "auto", in_channels: int = 1,
                 dims: int = 3):
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        w = width
        if in_channels < 1 or n_class < 1:
            raise ValueError(f"in_channels and n_class must be >= 1, got {in_channels} and {n_class}")
        self.n_class, self.width, self.bn_mode, self.dtype = n_class, width, bn_mode, dtype
        self.in_channels, self.dims = in_channels, dims
        self.down_tr64 = DownTransition(in_channels, 0, w, bn_mode, dtype, rngs, conv, dims)
        self.down_tr128 = DownTransition(2 * w, 1, w, bn_mode, dtype, rngs, conv, dims)
        self.down_tr256 = DownTransition(4 * w, 2, w, bn_mode, dtype, rngs, conv, dims)
        self.down_tr512 = DownTransition(8 * w, 3, w, bn_mode, dtype, rngs, conv, dims)
        self.up_tr256 = UpTransition(16 * w, 16 * w, 2, w, bn_mode, dtype, rngs, fast_upconv, conv, dims)
        self.up_tr128 = UpTransition(8 * w, 8 * w, 1, w, bn_mode, dtype, rngs, fast_upconv, conv, dims)
        self.up_tr64 = UpTransition(4 * w, 4 * w, 0, w, bn_mode, dtype, rngs, fast_upconv, conv, dims)
        self.out_tr = OutputTransition(2 * w, n_class, dtype, rngs, dims)

    def encode(self, x):
        """(bottleneck (N, X/8, Y/8, Z/8, 16w), skips at full, 1/2 and 1/4 resolution)."""
        return _encode(self, x)

    def __call__(self, x):
        bottleneck, (skip64, skip128, skip256) = self.encode(x)
        x = self.up_tr256(bottleneck, skip256)
        x = self.up_tr128(x, skip128)
        x = self.up_tr64(x, skip64)
        return self.out_tr(x)


class GenesisClassifier(nnx.Module):
    """The official TargetNet: the U-Net encoder, global average pooling of the 16w
    (512) channel bottleneck, Dense 1024, ReLU, Dense n_class. Returns logits.

    The encoder modules are the given UNet3D's (its weights, e.g. pre-trained ones);
    the decoder is not kept.
    """

    def __init__(self, unet: UNet3D, n_class: int = 1, *, rngs: nnx.Rngs):
        self.down_tr64, self.down_tr128 = unet.down_tr64, unet.down_tr128
        self.down_tr256, self.down_tr512 = unet.down_tr256, unet.down_tr512
        self.dtype = unet.dtype
        self.dense_1 = nnx.Linear(16 * unet.width, 1024, dtype=unet.dtype, kernel_init=lecun_normal, rngs=rngs)
        self.dense_2 = nnx.Linear(1024, n_class, dtype=unet.dtype, kernel_init=lecun_normal, rngs=rngs)

    def __call__(self, x):
        bottleneck, _ = _encode(self, x)
        features = jnp.mean(bottleneck.astype(jnp.float32), axis=tuple(range(1, bottleneck.ndim - 1)))
        hidden = jax.nn.relu(pointwise(self.dense_1, features.astype(self.dtype)))
        return pointwise(self.dense_2, hidden).astype(jnp.float32)


class UNet2D(UNet3D):
    """The official U-Net's 2D counterpart (Models Genesis 2D, model.arch "unet"): the same
    widths and blocks with 3x3 convolutions, 2x2 max pooling and 2x2 transposed
    convolutions; input (N, H, W, in_channels), H and W divisible by 8; output sigmoid
    probabilities (N, H, W, n_class). 6,821,953 parameters at width 32, one channel, one
    class (3D's 27-tap kernels become 9-tap)."""

    def __init__(self, n_class: int = 1, width: int = 32, bn_mode: str = "batch", dtype=jnp.float32, *,
                 rngs: nnx.Rngs, fast_upconv: bool = True, conv: str = "auto", in_channels: int = 1):
        super().__init__(n_class, width, bn_mode, dtype, rngs=rngs, fast_upconv=fast_upconv, conv=conv,
                         in_channels=in_channels, dims=2)


def count_params(model: nnx.Module) -> int:
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
