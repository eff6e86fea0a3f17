"""Sliding-window inference over a whole volume: what segmentation validation and
`predict` run, one patch-sized model over any volume size.

The volume is padded up to the patch where it is smaller, cut into overlapping windows
(the last window on each axis flush with the far edge, so every voxel is covered),
the windows go through the model in fixed-size batches (one compiled shape; split over
the mesh's devices when a mesh is given), and the per-window outputs are blended back:
"mean" weights every window equally, "gaussian" weights each window's voxels by a
Gaussian centred on the window (sigma = patch / 8 per axis), which down-weights the
borders where a convolutional model sees the least context. Blending accumulates in
float64 on the host, so a model that returns its input gives the volume back exactly.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

BLENDS = ("gaussian", "mean")


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets along one axis of length size >= patch: a stride of
    patch * (1 - overlap) (at least 1), plus a last window ending at the edge."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    stride = max(1, int(round(patch * (1.0 - overlap))))
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def blend_weights(patch_shape, blend: str) -> np.ndarray:
    """float64 patch_shape weights of one window's voxels, all > 0."""
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if blend == "mean":
        return np.ones(patch_shape)
    axes = []
    for n in patch_shape:
        centre, sigma = (n - 1) / 2.0, n / 8.0
        axes.append(np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    # Corners of a Gaussian window underflow towards 0; a floor keeps every voxel counted.
    return np.maximum(weights / weights.max(), 1e-3)


def patch_pads(shape, patch_shape) -> list[tuple[int, int]]:
    """np.pad widths that bring shape up to at least patch_shape, split evenly before and after."""
    return [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(shape, patch_shape)]


def pad_to_patch(volume: np.ndarray, patch_shape) -> tuple[np.ndarray, tuple[slice, ...]]:
    """(volume padded with its edge values to at least patch_shape, the slices that crop
    the original back out)."""
    pads = patch_pads(volume.shape, patch_shape)
    crop = tuple(slice(before, before + s) for (before, _), s in zip(pads, volume.shape))
    return np.pad(volume, pads, mode="edge"), crop


def sliding_window(apply_fn: Callable, volume: np.ndarray, patch_shape, *, overlap: float = 0.5,
                   blend: str = "gaussian", batch_size: int = 4, put: Callable | None = None,
                   progress: Callable | None = None) -> np.ndarray:
    """Blended outputs (X, Y, Z, K) float32 of apply_fn over every window of volume (X, Y, Z)
    or of its C channels (X, Y, Z, C).

    apply_fn maps (batch_size, *patch_shape, C) float32 (C = 1 for a (X, Y, Z) volume) to
    (batch_size, *patch_shape, K)
    (a jitted model call); put places a host batch on the devices (default: as is; with a
    mesh, `lambda b: sharding.global_batch(b, mesh)` splits it, and batch_size must
    divide by the device count). The last batch is filled with copies of its first
    window so that every call has the same shape. progress(done, total) is called after
    each batch.
    """
    if len(volume.shape) not in (3, 4) or len(patch_shape) != 3:
        raise ValueError(f"sliding_window needs a 3D volume (with or without channels) and a 3D patch, got "
                         f"{volume.shape} and {tuple(patch_shape)}")
    volume = np.asarray(volume, np.float32)
    volume = volume if volume.ndim == 4 else volume[..., None]
    patch_shape = tuple(int(p) for p in patch_shape)
    padded, crop = pad_to_patch(volume, (*patch_shape, volume.shape[-1]))
    weights = blend_weights(patch_shape, blend)
    corners = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(padded.shape, patch_shape))))
    put = put or (lambda batch: batch)
    total, norm = None, np.zeros(padded.shape[:3])
    n_batches = math.ceil(len(corners) / batch_size)
    for b in range(n_batches):
        chunk = corners[b * batch_size:(b + 1) * batch_size]
        windows = [padded[tuple(slice(c, c + p) for c, p in zip(corner, patch_shape))] for corner in chunk]
        windows += [windows[0]] * (batch_size - len(windows))
        outputs = np.asarray(apply_fn(put(np.stack(windows))), np.float64)
        if outputs.shape[:4] != (batch_size, *patch_shape) or outputs.ndim != 5:
            raise ValueError(f"apply_fn returned {outputs.shape}, expected ({batch_size}, {patch_shape}, C)")
        if total is None:
            total = np.zeros((*padded.shape[:3], outputs.shape[-1]))
        for corner, output in zip(chunk, outputs):
            where = tuple(slice(c, c + p) for c, p in zip(corner, patch_shape))
            total[where] += output * weights[..., None]
            norm[where] += weights
        if progress:
            progress(b + 1, n_batches)
    return (total / norm[..., None])[crop[:3]].astype(np.float32)
