"""Segmentation losses on the U-Net's sigmoid outputs (device, inside jit).

The official UNet3D ends in a sigmoid per output channel, so classes are scored one
channel each (one-vs-rest, as the paper's target tasks with one or two structures):
BCE per voxel and channel, and soft Dice per channel over the whole batch (one Dice
per class, summed over every voxel of every example; per-example Dice is unstable for
patches that hold no foreground, which foreground-biased sampling still produces).
"""

from __future__ import annotations

import jax.numpy as jnp

SEGMENTATION_LOSSES = ("dice", "bce", "dice_bce")
_EPS = 1e-6


def one_hot_classes(classes, n_classes: int):
    """float32 (..., n_classes): channel k - 1 is 1 where classes == k (0: background)."""
    return (classes[..., None] == jnp.arange(1, n_classes + 1)).astype(jnp.float32)


def soft_dice_loss(probs, targets, smooth: float = 1.0):
    """1 - mean over channels of (2 sum(p t) + s) / (sum(p) + sum(t) + s); probs and
    targets (..., C), sums over every other axis."""
    axes = tuple(range(probs.ndim - 1))
    intersection = jnp.sum(probs * targets, axis=axes)
    dice = (2.0 * intersection + smooth) / (jnp.sum(probs, axis=axes) + jnp.sum(targets, axis=axes) + smooth)
    return 1.0 - jnp.mean(dice)


def bce_loss(probs, targets):
    """Mean binary cross-entropy of sigmoid outputs (clipped away from 0 and 1)."""
    p = jnp.clip(probs, _EPS, 1.0 - _EPS)
    return -jnp.mean(targets * jnp.log(p) + (1.0 - targets) * jnp.log(1.0 - p))


def segmentation_loss(name: str, probs, targets):
    if name == "dice":
        return soft_dice_loss(probs, targets)
    if name == "bce":
        return bce_loss(probs, targets)
    if name == "dice_bce":
        return soft_dice_loss(probs, targets) + bce_loss(probs, targets)
    raise ValueError(f"loss must be one of {SEGMENTATION_LOSSES}, got {name!r}")
