"""Labelled volumes for segmentation fine-tuning: image + label map pairs, and patches
sampled from them with a bias towards the foreground.

A label volume must share its image's grid (shape and spacing); `label_values` says
which raw label values become classes 1..K (the rest is background 0), so one label
file serves several tasks. A class may be a group of values (BraTS: whole tumour 1+2+4,
tumour core 1+4, enhancing 4), and groups may overlap: the label map is kept as the
index of each voxel's raw value among the listed ones (label_value_list), and a
membership table (value index -> the classes it belongs to) turns it into one target
channel per class on the device. Images may have C channels (X, Y, Z, C): a case of a
manifest (data/cases.py) whose label volume lies on its first channel's grid. Patches
are drawn from a generator seeded by (seed, step): batch `step` is the same whenever it
is asked for, which is what exact resume needs.
A patch is centred on a random foreground voxel with probability `foreground_ratio`
(small structures such as the aorta are otherwise rare in random patches), else placed
uniformly. Volumes smaller than the patch are padded (image with its edge values,
labels with background).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from genesis_jax.data.batches import process_slice
from genesis_jax.data.cases import Case, check_same_grid, read_case, unit_channels
from genesis_jax.data.images import read_volume_or_image
from genesis_jax.data.volumes import VolumeError
from genesis_jax.sliding import patch_pads


def label_value_list(groups) -> list[float]:
    """The distinct raw values of the class groups, in order of first appearance (for
    classes of one value each: the values themselves, in class order)."""
    return list(dict.fromkeys(float(v) for group in groups for v in group))


def class_membership(groups) -> np.ndarray:
    """float32 (V + 1, K): row i (value i of label_value_list, row 0 background) has a 1 in
    column k - 1 when class k holds that value. One value per class: [0; identity], so the
    targets are the one-hot classes."""
    values = label_value_list(groups)
    table = np.zeros((len(values) + 1, len(groups)), np.float32)
    for k, group in enumerate(groups):
        for v in group:
            table[values.index(float(v)) + 1, k] = 1.0
    return table


def map_labels(raw: np.ndarray, label_values) -> np.ndarray:
    """int8 class map: voxels equal to label_values[k - 1] become k, all others 0."""
    values = [float(v) for v in label_values]
    if not values or len(set(values)) != len(values):
        raise ValueError(f"label_values must be distinct and non-empty, got {list(label_values)}")
    if len(values) > 127:
        raise ValueError(f"at most 127 classes, got {len(values)}")
    classes = np.zeros(raw.shape, np.int8)
    for k, value in enumerate(values, start=1):
        classes[raw == value] = k
    return classes


def listed(values: list, most: int = 10) -> str:
    """The values, or the first `most` of them and how many more up to the largest."""
    if len(values) <= most:
        return ", ".join(f"{v:g}" for v in values)
    return f"{', '.join(f'{v:g}' for v in values[:most])} and {len(values) - most} more, up to {values[-1]:g}"


def read_pair(image_path, label_path, label_values, modality: str = "ct"):
    """(image (X, Y, Z) in [0, 1] float32, value index map int8) of one labelled volume."""
    image, classes = read_labelled(dataclasses.replace(Case.single(image_path), label=label_path), label_values,
                                   (modality,))
    return image[..., 0], classes


def read_labelled(case: Case, label_values, modalities) -> tuple[np.ndarray, np.ndarray]:
    """(image (X, Y, Z, C) in [0, 1] float32, value index map int8) of one labelled case:
    its label volume must lie on its first channel's grid."""
    volumes = read_case(case)
    labels = read_volume_or_image(case.label)
    if labels.array.shape != volumes[0].array.shape or not np.allclose(volumes[0].spacing, labels.spacing,
                                                                       rtol=1e-4):
        raise VolumeError(case.label, f"grid {labels.array.shape} at {labels.spacing} mm does not match the image "
                                      f"{case.paths[0]}: {volumes[0].array.shape} at {volumes[0].spacing} mm")
    check_same_grid(case.name, volumes[0], labels, "label")
    classes = map_labels(labels.array, label_values)
    if not classes.any():
        raise VolumeError(case.label, f"no voxel has any of the label values {list(label_values)} "
                                      f"(values present: {listed(np.unique(labels.array).tolist())})")
    return unit_channels(volumes, modalities)[0], classes


def hold_out_slab(image: np.ndarray, classes: np.ndarray, fraction: float, depth: int, path) -> tuple:
    """((train image, classes), (validation image, classes), z range held out): the first
    or the last `fraction` of the z slices (at least `depth`, a patch's), whichever holds
    more labelled voxels, becomes validation; the rest trains. A slab, not random
    patches: no validation voxel is ever in a training patch. VolumeError when the
    volume is too thin to keep `depth` slices on both sides."""
    z = classes.shape[2]
    held = max(depth, int(round(fraction * z)))
    if z - held < depth:
        raise VolumeError(path, f"{z} z slices are too few to hold out a validation slab of {held} and keep {depth} "
                                f"(the patch depth) for training: pass validation volumes (data.val_images, "
                                f"data.val_labels)")
    first = np.count_nonzero(classes[:, :, :held]) > np.count_nonzero(classes[:, :, z - held:])
    val = slice(0, held) if first else slice(z - held, z)
    train = slice(held, z) if first else slice(0, z - held)
    return ((image[:, :, train], classes[:, :, train]), (image[:, :, val], classes[:, :, val]),
            (val.start, val.stop))


def pad_pair(image: np.ndarray, classes: np.ndarray, patch_shape):
    """Both padded to at least patch_shape (image (X, Y, Z, C): edge values; labels: background)."""
    pads = patch_pads(classes.shape, patch_shape)
    return np.pad(image, pads + [(0, 0)], mode="edge"), np.pad(classes, pads, constant_values=0)


class PatchSampler:
    """Batches of (image, label) patches: float32 (n, *patch_shape, C + 1), channels 0 ..
    C - 1 the image in [0, 1], channel C the label value index (as float, exact).
    Images (X, Y, Z) count as one channel."""

    def __init__(self, pairs, patch_shape, foreground_ratio: float = 0.5, seed: int = 0):
        if not 0.0 <= foreground_ratio <= 1.0:
            raise ValueError(f"foreground_ratio must be in [0, 1], got {foreground_ratio!r}")
        self.patch_shape = tuple(int(p) for p in patch_shape)
        self.pairs = [pad_pair(image if image.ndim == 4 else image[..., None], classes, self.patch_shape)
                      for image, classes in pairs]
        self.foreground = [np.argwhere(classes > 0) for _, classes in self.pairs]
        self.foreground_ratio, self.seed = foreground_ratio, seed

    def corner(self, rng: np.random.Generator, volume: int) -> tuple[int, ...]:
        shape = self.pairs[volume][0].shape
        high = [s - p for s, p in zip(shape, self.patch_shape)]
        if rng.random() < self.foreground_ratio and len(self.foreground[volume]):
            centre = self.foreground[volume][rng.integers(len(self.foreground[volume]))]
            return tuple(int(np.clip(c - p // 2, 0, h)) for c, p, h in zip(centre, self.patch_shape, high))
        return tuple(int(rng.integers(h + 1)) for h in high)

    def batch(self, step: int, n: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """Global batch `step` of n patches (the same on every process), this process's rows."""
        rng = np.random.default_rng([self.seed, step])
        out = np.empty((n, *self.patch_shape, self.pairs[0][0].shape[-1] + 1), np.float32)
        for i in range(n):
            volume = int(rng.integers(len(self.pairs)))
            corner = self.corner(rng, volume)
            where = tuple(slice(c, c + p) for c, p in zip(corner, self.patch_shape))
            image, classes = self.pairs[volume]
            out[i, ..., :-1], out[i, ..., -1] = image[where], classes[where]
        return out[process_slice(n, process_index, process_count)]
