"""Batch sources: for a global step, this process's share of the global batch.

Deterministic in (seed, step), independent of how many processes ask, and reading only
the cubes of that batch. StoreBatches reads a cube store (data/store.py); VolumeBatches
cuts cubes on the fly from volumes in memory (data/sampler.py).
"""

from __future__ import annotations

import numpy as np

from genesis_jax.data.sampler import SamplerConfig, accept_corners, check_volume_fits, cut, draw_corners, filter_table
from genesis_jax.data.store import open_store, store_channels, store_sample_shape
from genesis_jax.errors import UserError


def global_indices(step: int, global_batch: int, n: int, seed: int) -> np.ndarray:
    """The cube indices of global batch `step`: epochs are seeded permutations of range(n),
    and step s takes positions [s * B, (s + 1) * B) of their concatenation."""
    positions = step * global_batch + np.arange(global_batch)
    epochs = positions // n
    out = np.empty(global_batch, np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
        where = epochs == epoch
        out[where] = perm[positions[where] % n]
    return out


def process_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    if global_batch % process_count:
        raise UserError(f"global batch {global_batch} does not split over {process_count} processes")
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)


class StoreBatches:
    """Batches from a cube store (or the subset `indices` of it); reads only the requested cubes."""

    def __init__(self, path, seed: int = 0, indices=None):
        self.array, self.attributes = open_store(path)
        self.indices = np.arange(int(self.array.shape[0])) if indices is None else np.asarray(indices)
        self.size = len(self.indices)
        if self.size == 0:
            raise UserError(f"{path}: no cubes to serve (the store or the selected subset is empty)")
        self.seed = seed
        self.channels = store_channels(self.array, self.attributes)
        self.cube_shape = store_sample_shape(self.array, self.attributes)

    def __len__(self) -> int:
        return self.size

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Cubes start .. stop - 1 of this source's subset, in order (validation batches)."""
        return self.read(self.indices[start:stop])

    def read(self, indices: np.ndarray) -> np.ndarray:
        """(n, X, Y, Z, C) or (n, H, W, C) float32; a store from before channels gets its
        channel axis here."""
        unique, inverse = np.unique(indices, return_inverse=True)
        cubes = self.array[unique].read().result()[inverse]
        return cubes if cubes.ndim == len(self.cube_shape) + 2 else cubes[..., None]

    def batch(self, step: int, global_batch: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """(global_batch / process_count, X, Y, Z, C) float32: this process's part of step's batch."""
        positions = global_indices(step, global_batch, self.size, self.seed)
        return self.read(self.indices[positions[process_slice(global_batch, process_index, process_count)]])


class VolumeBatches:
    """On-the-fly batches: cubes cut straight from volumes in [0, 1] held in memory, (X, Y, Z)
    or (X, Y, Z, C): batches (n, X, Y, Z) or (n, X, Y, Z, C).

    Example i of step s comes from a generator seeded by (seed, s, i): a volume chosen
    uniformly, then crops tried until the filter accepts one (at most tries_per_cube).
    When no try passes, the first crop is used and counted in `fallbacks`.
    """

    def __init__(self, volumes: list[np.ndarray], cfg: SamplerConfig = SamplerConfig(), seed: int = 0):
        if not volumes:
            raise UserError("no volumes to sample from")
        for volume in volumes:
            check_volume_fits(volume.shape[:3], cfg)
        self.volumes, self.cfg, self.seed = volumes, cfg, seed
        self.tables = [filter_table(v, cfg) for v in volumes]  # once: every cube's filter is 8 lookups
        self.cube_shape = cfg.crop
        self.fallbacks = 0

    def cube(self, step: int, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step, index])
        which = int(rng.integers(len(self.volumes)))
        volume = self.volumes[which]
        corners = draw_corners(volume.shape[:3], self.cfg, rng, self.cfg.tries_per_cube)
        ok = np.flatnonzero(accept_corners(self.tables[which], corners, self.cfg))
        if len(ok) == 0:
            self.fallbacks += 1
        return cut(volume, corners[ok[:1] if len(ok) else [0]], self.cfg.crop)[0]

    def batch(self, step: int, global_batch: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        mine = range(global_batch)[process_slice(global_batch, process_index, process_count)]
        return np.stack([self.cube(step, i) for i in mine]).astype(np.float32)


def sampler_crop(shape) -> tuple[int, ...]:
    """The crop the 3D samplers cut for samples of `shape`: the cube itself, or a 2D
    image's (H, W, 1), one slice deep."""
    shape = tuple(int(d) for d in shape)
    return shape if len(shape) == 3 else (*shape, 1)


def flat(source, dims: int):
    """A source of crops as it is (3D), or its (H, W, 1) crops served as images (2D)."""
    return source if dims == 3 else SliceBatches(source)


class SliceBatches:
    """2D images from a source of (H, W, 1) crops (VolumeBatches, segmentation's
    PatchSampler): batches (n, H, W, C)."""

    def __init__(self, cubes):
        self.cubes = cubes

    def batch(self, step: int, global_batch: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        return self.cubes.batch(step, global_batch, process_index, process_count)[:, :, :, 0]


class InMemoryCubes:
    """Cubes already in memory behind the same `len` / `rows` interface as a store subset."""

    def __init__(self, cubes: np.ndarray):
        self.cubes = np.asarray(cubes, np.float32)

    def __len__(self) -> int:
        return len(self.cubes)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.cubes[start:stop]
