"""One input of `python -m genesis_jax.prepare` to its cubes: the work a prepare worker does.

Pure in (input, its position in the input list, the recipe): the sampler's draws are
seeded by (seed, position), so which worker or shard takes an input, and when, never
changes its cubes. Everything here pickles: workers are separate processes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from genesis_jax.data.cases import Case, read_case, unit_channels
from genesis_jax.data.images import read_image, resize, slices_last
from genesis_jax.data.sampler import SamplerConfig, borders_for, sample_cubes
from genesis_jax.data.volumes import VolumeError, resample, to_unit_range


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How every input of one store is turned into cubes (or 2D images)."""

    dims: int                               # 3: cubes; 2: images
    shape: tuple[int, ...]                  # cube (X, Y, Z) or image (H, W)
    sampler: SamplerConfig
    modalities: tuple[str, ...]             # one per channel
    seed: int
    window: tuple[float, float]             # CT HU window
    spacing: tuple[float, ...] | None       # resample to this (X, Y, Z) first
    slice_axis: str = "z"                   # dims 2: the axis volumes are sliced across


@dataclasses.dataclass
class Prepared:
    """What became of input `index`: its cubes and source record, or the one-line problem
    that made it a bad input."""

    index: int
    name: str
    cubes: np.ndarray | None = None
    record: dict | None = None
    problem: str | None = None


def input_name(item) -> str:
    """A Case's name, or the path of a 2D image."""
    return str(getattr(item, "name", item))


def prepare_input(item, index: int, recipe: Recipe) -> Prepared:
    """The cubes of input `index` (a Case, or the Path of a 2D image); a bad input
    (VolumeError) becomes a Prepared with its problem."""
    try:
        cubes, record = prepare_image(item, recipe) if isinstance(item, Path) else prepare_case(item, index, recipe)
    except VolumeError as e:
        return Prepared(index, input_name(item), problem=str(e))
    return Prepared(index, input_name(item), np.ascontiguousarray(cubes, np.float32), record)


def prepare_case(case: Case, index: int, recipe: Recipe):
    """(cubes (n, X, Y, Z, C), source record) for one case (one volume, or one per channel);
    with dims 2, (images (n, H, W, C), record) of its slices. VolumeError for a bad one."""
    volumes = read_case(case)
    if recipe.spacing:
        volumes = [resample(v, recipe.spacing) for v in volumes]
    unit, windows = unit_channels(volumes, recipe.modalities, recipe.window)
    shape, spacing = list(unit.shape[:3]), list(volumes[0].spacing)
    del volumes  # the file's units: not needed past here (a full-size CT's 4 bytes per voxel)
    if recipe.dims == 2:  # (H, W, 1) crops of the volume, its slice axis third
        unit = slices_last(unit, recipe.slice_axis)
    try:
        cubes, tries = sample_cubes(unit, recipe.sampler, np.random.default_rng([recipe.seed, index]))
    except ValueError as e:
        raise VolumeError(case.name, str(e)) from None
    record = {"path": str(case.paths[0]) if len(case.paths) == 1 else case.name, "shape": shape,
              "spacing": spacing, "window": windows[0] if len(windows) == 1 else windows,
              "border": list(borders_for(unit.shape[:3], recipe.sampler)), "cubes": int(len(cubes)),
              "tries": int(tries)}
    if len(case.paths) > 1:
        record["channels"] = {c: str(p) for c, p in zip(case.channels, case.paths)}
    if recipe.dims == 2:
        record["slice_axis"] = recipe.slice_axis
        cubes = cubes[:, :, :, 0]
    return cubes, record


def prepare_image(path: Path, recipe: Recipe):
    """(image (1, H, W, 1), source record) of one radiograph or other 2D image: its own
    0.5-99.5 percentile window, resized whole to the recipe's shape. VolumeError for a bad one."""
    array = read_image(path)
    unit, window = to_unit_range(array, "xray")
    image = resize(unit, recipe.shape)
    record = {"path": str(path), "shape": list(array.shape), "window": list(window), "window_rule": "percentiles 0.5-99.5",
              "cubes": 1, "tries": 1}
    return image[None, :, :, None], record


# Spacings further apart than this (largest / smallest, on any axis) mix voxel sizes in one store.
SPACING_SPREAD = 1.10


def spacing_warning(sources: list[dict]) -> str | None:
    """A warning when the volumes' voxel spacings differ by more than 10% on some axis
    (prepare was not asked to resample: a cube then covers more tissue in one scan than
    in another)."""
    spacings = np.array([s["spacing"] for s in sources if "spacing" in s], float)  # 2D images have none
    if len(spacings) < 2:
        return None
    low, high = spacings.min(axis=0), spacings.max(axis=0)
    spread = high > SPACING_SPREAD * low
    if not spread.any():
        return None
    axes = ", ".join(f"{axis} {lo:g}-{hi:g} mm" for axis, lo, hi, wide in zip("XYZ", low, high, spread) if wide)
    return (f"warning: the volumes' voxel spacings differ by more than 10% ({axes}; each source's spacing is in the "
            f"store): their cubes cover different physical sizes. Pass --spacing MM (e.g. --spacing {high.min():g}) "
            f"to resample them to one spacing; the Models Genesis paper did not resample")
