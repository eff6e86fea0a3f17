"""A 2D U-Net on a ResNet-18 encoder, in the layout of segmentation_models_pytorch's
`smp.Unet("resnet18")` (model.arch "resnet18_unet"), the common layout of the released
Models Genesis 2D weights.

Encoder (torchvision's ResNet-18 without its pooling and classifier): conv1 7x7 stride 2
(no bias) + BatchNorm + ReLU (1/2 resolution), max pool 3x3 stride 2, layer1..layer4 of
two BasicBlocks each (64, 128, 256, 512 channels at 1/4 .. 1/32; the first block of
layer2..4 has stride 2 and a 1x1 stride-2 conv + BatchNorm shortcut). Decoder: five
blocks, each nearest 2x upsampling, concatenation with the encoder feature of that
resolution (none for the last), two 3x3 conv (no bias) + BatchNorm + ReLU, to 256, 128,
64, 32, 16 channels. Head: 3x3 conv (bias) to n_class, then a sigmoid (smp returns the
logits: `logits()`). Input (N, H, W, C) with H, W divisible by 32.

width scales every channel count (64: ResNet-18 and smp's layout, the only one PyTorch
import/export knows; smaller widths are for tests). Submodule names follow the
state_dict keys (encoder.layer1.0.conv1.weight), so that import/export is a rename.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from genesis_jax.models import mixed
from genesis_jax.models.unet import BN_MODES, BatchNorm

# Initialisers of the PyTorch model: torchvision's ResNet (kaiming normal, fan out), smp's
# decoder (kaiming uniform, fan in) and head (xavier uniform, zero bias).
_ENCODER_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_DECODER_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_in", "uniform")
_HEAD_INIT = jax.nn.initializers.glorot_uniform()
SMP_WIDTH = 64
DECODER_FRACTIONS = (4, 2, 1, 1 / 2, 1 / 4)  # decoder channels / width: 256, 128, 64, 32, 16 at width 64


class Conv2d(nnx.Module):
    """torch.nn.Conv2d in channel-last form: kernel (k, k, I, O), symmetric padding."""

    def __init__(self, in_ch, out_ch, size, dtype, rngs, *, stride=1, bias=False, init=_DECODER_INIT):
        self.kernel = nnx.Param(init(rngs.params(), (size, size, in_ch, out_ch), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_ch,), jnp.float32)) if bias else None
        self.stride, self.padding, self.dtype = stride, size // 2, dtype

    def __call__(self, x):
        y = mixed.conv(x.astype(self.dtype), self.kernel[...], self.stride, self.padding)
        return y if self.bias is None else mixed.add_bias(y, self.bias[...])


class Shortcut(nnx.Module):
    """The downsample of a strided BasicBlock: torch's Sequential(conv 1x1, BatchNorm), keys 0 and 1."""

    def __init__(self, in_ch, out_ch, bn_mode, dtype, rngs):
        self.layers = nnx.List([Conv2d(in_ch, out_ch, 1, dtype, rngs, stride=2, init=_ENCODER_INIT),
                                BatchNorm(out_ch, bn_mode)])

    def __call__(self, x):
        return self.layers[1](self.layers[0](x))


class BasicBlock(nnx.Module):
    """torchvision's BasicBlock: conv 3x3 (stride) + BN + ReLU, conv 3x3 + BN, + shortcut, ReLU."""

    def __init__(self, in_ch, out_ch, stride, bn_mode, dtype, rngs):
        self.conv1 = Conv2d(in_ch, out_ch, 3, dtype, rngs, stride=stride, init=_ENCODER_INIT)
        self.bn1 = BatchNorm(out_ch, bn_mode)
        self.conv2 = Conv2d(out_ch, out_ch, 3, dtype, rngs, init=_ENCODER_INIT)
        self.bn2 = BatchNorm(out_ch, bn_mode)
        self.downsample = Shortcut(in_ch, out_ch, bn_mode, dtype, rngs) if stride != 1 else None

    def __call__(self, x):
        y = self.bn2(self.conv2(jax.nn.relu(self.bn1(self.conv1(x)))))
        return jax.nn.relu(y + (x if self.downsample is None else self.downsample(x)))


def max_pool_3x3_stride2(x):
    """torch's MaxPool2d(3, stride 2, padding 1): the padding never wins (-inf)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))


class ResNet18Encoder(nnx.Module):
    def __init__(self, in_channels, width, bn_mode, dtype, rngs):
        w = width
        self.conv1 = Conv2d(in_channels, w, 7, dtype, rngs, stride=2, init=_ENCODER_INIT)
        self.bn1 = BatchNorm(w, bn_mode)
        stages = [(w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 2)]
        for k, (cin, cout, stride) in enumerate(stages, start=1):
            blocks = nnx.List([BasicBlock(cin, cout, stride, bn_mode, dtype, rngs),
                               BasicBlock(cout, cout, 1, bn_mode, dtype, rngs)])
            setattr(self, f"layer{k}", blocks)

    def __call__(self, x):
        """The features at 1/2, 1/4, 1/8, 1/16 and 1/32 resolution."""
        features = [jax.nn.relu(self.bn1(self.conv1(x)))]
        x = max_pool_3x3_stride2(features[0])
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
            features.append(x)
        return features


class ConvBNReLU(nnx.Module):
    """smp's Conv2dReLU: Sequential(conv 3x3 without bias, BatchNorm, ReLU), keys 0 and 1."""

    def __init__(self, in_ch, out_ch, bn_mode, dtype, rngs):
        self.layers = nnx.List([Conv2d(in_ch, out_ch, 3, dtype, rngs), BatchNorm(out_ch, bn_mode)])

    def __call__(self, x):
        return jax.nn.relu(self.layers[1](self.layers[0](x)))


class DecoderBlock(nnx.Module):
    def __init__(self, in_ch, skip_ch, out_ch, bn_mode, dtype, rngs):
        self.conv1 = ConvBNReLU(in_ch + skip_ch, out_ch, bn_mode, dtype, rngs)
        self.conv2 = ConvBNReLU(out_ch, out_ch, bn_mode, dtype, rngs)

    def __call__(self, x, skip=None):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest, x2
        if skip is not None:
            x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
        return self.conv2(self.conv1(x))


class Decoder(nnx.Module):
    def __init__(self, width, bn_mode, dtype, rngs):
        w = width
        skips = (4 * w, 2 * w, w, w, 0)  # layer3, layer2, layer1, conv1, none
        outs = tuple(max(1, round(f * w)) for f in DECODER_FRACTIONS)
        ins = (8 * w,) + outs[:-1]
        self.blocks = nnx.List([DecoderBlock(i, s, o, bn_mode, dtype, rngs) for i, s, o in zip(ins, skips, outs)])
        self.out_channels = outs[-1]

    def __call__(self, features):
        x, skips = features[-1], features[-2::-1] + [None]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return x


class SegmentationHead(nnx.Module):
    """smp's SegmentationHead: Sequential(conv 3x3 with bias, identity, identity), key 0."""

    def __init__(self, in_ch, n_class, dtype, rngs):
        self.layers = nnx.List([Conv2d(in_ch, n_class, 3, dtype, rngs, bias=True, init=_HEAD_INIT)])

    def __call__(self, x):
        return self.layers[0](x)


class ResNet18UNet(nnx.Module):
    """smp.Unet("resnet18") in Flax NNX, channel-last (module docstring). 14,321,937
    parameters with one input channel and one class at width 64, as smp's."""

    def __init__(self, n_class: int = 1, width: int = SMP_WIDTH, bn_mode: str = "running", dtype=jnp.float32,
                 *, rngs: nnx.Rngs, in_channels: int = 1):
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        if in_channels < 1 or n_class < 1 or width < 4:
            raise ValueError(f"need in_channels >= 1, n_class >= 1 and width >= 4, got {in_channels}, {n_class}, {width}")
        self.n_class, self.width, self.bn_mode, self.dtype = n_class, width, bn_mode, dtype
        self.in_channels, self.dims = in_channels, 2
        self.encoder = ResNet18Encoder(in_channels, width, bn_mode, dtype, rngs)
        self.decoder = Decoder(width, bn_mode, dtype, rngs)
        self.segmentation_head = SegmentationHead(self.decoder.out_channels, n_class, dtype, rngs)

    def logits(self, x):
        """The head's output before the sigmoid (smp.Unet's output), float32."""
        if x.ndim != 4 or any(d % 32 for d in x.shape[1:3]):
            raise ValueError(f"ResNet18UNet expects (N, H, W, C) with H, W divisible by 32, got {x.shape}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"the model takes {self.in_channels} input channel(s), got an input of {x.shape[-1]}: "
                             f"{x.shape}")
        features = self.encoder(x.astype(self.dtype))
        return self.segmentation_head(self.decoder(features)).astype(jnp.float32)

    def __call__(self, x):
        return jax.nn.sigmoid(self.logits(x))
