"""Training and validation data for a run, from the config's `data` section.

Every source defines its epoch: a store's training split has a fixed number of cubes; an
on-the-fly source (the embedded sample, volumes) counts `data.cubes_per_volume` cubes
per volume, as a prepared store of the same volumes would hold.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from genesis_jax.data.batches import InMemoryCubes, StoreBatches, VolumeBatches, flat, sampler_crop
from genesis_jax.data.images import slices_last
from genesis_jax.data.sampler import SamplerConfig
from genesis_jax.data.store import open_store, store_digest, store_sample_shape
from genesis_jax.data.volumes import find_inputs, read_volume, split_paths, to_unit_range
from genesis_jax.errors import UserError

_VALIDATION_SEED_OFFSET = 1_000_003


@dataclasses.dataclass
class RunData:
    train: object               # .batch(step, global_batch, process_index, process_count) -> np.ndarray
    validation: object          # frozen validation cubes: len() and .rows(start, stop) -> np.ndarray
    train_cubes: int            # cubes in one epoch of the training source
    description: str
    digest: str                 # sha256 of the data's defining files
    channels: list = dataclasses.field(default_factory=lambda: ["image"])  # input channel names, in order


def files_sha256(paths) -> str:
    """sha256 over the files (a directory: every file under it) by name and contents."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            digest.update(str(f.name).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()


def load_run_data(data, seed: int) -> RunData:
    cube_shape = tuple(int(d) for d in data.cube_shape)
    if data.source == "store":
        return _store_data(data, seed, cube_shape)
    if data.source == "sample":
        from genesis_jax.data import sample_path
        paths = [sample_path()]
    elif data.source == "volumes":
        if not data.volumes:
            raise UserError("data.source is 'volumes' but data.volumes is empty: pass --config.data.volumes=A,B")
        paths = find_inputs(split_paths(data.volumes))
    else:
        raise UserError(f"data.source must be 'sample', 'store' or 'volumes', got {data.source!r}")
    volumes = [to_unit_range(read_volume(p).array, data.modality)[0][..., None] for p in paths]  # one channel
    if len(cube_shape) == 2:  # 2D: (H, W, 1) crops across the slice axis, its third place
        volumes = [slices_last(v, data.slice_axis) for v in volumes]
    cfg = SamplerConfig(crop=sampler_crop(cube_shape), filter=data.filter)
    train = flat(VolumeBatches(volumes, cfg, seed), len(cube_shape))
    validation = flat(VolumeBatches(volumes, cfg, seed + _VALIDATION_SEED_OFFSET), len(cube_shape)).batch(
        0, int(data.val_cubes))
    names = ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
    what = "cubes" if len(cube_shape) == 3 else f"{data.slice_axis}-slices"
    return RunData(train, InMemoryCubes(validation), len(volumes) * int(data.cubes_per_volume),
                   f"{len(paths)} volume(s) sampled on the fly ({data.filter} filter, epoch = "
                   f"{data.cubes_per_volume} {what} per volume): {names}", files_sha256(paths))


def _store_data(data, seed: int, cube_shape) -> RunData:
    if not data.store:
        raise UserError("data.source is 'store' but data.store is empty: pass --config.data.store=PATH")
    array, attributes = open_store(data.store)
    n = int(array.shape[0])
    stored = store_sample_shape(array, attributes)
    if stored != cube_shape:
        what = "images" if len(stored) == 2 else "cubes"
        raise UserError(f"{data.store}: {what} are {stored}, the config wants data.cube_shape={cube_shape}")
    n_val = max(1, int(round(n * data.val_fraction)))
    if n - n_val < 1:
        raise UserError(f"{data.store}: {n} cubes are too few to hold out {n_val} for validation")
    order = np.random.default_rng([seed, _VALIDATION_SEED_OFFSET]).permutation(n)
    train = StoreBatches(data.store, seed, indices=np.sort(order[n_val:]))
    validation = StoreBatches(data.store, seed, indices=np.sort(order[:n_val]))
    channels = train.channels
    return RunData(train, validation, n - n_val, f"cube store {data.store} ({n} cubes of {len(channels)} channel(s) "
                   f"{', '.join(channels)}, {n_val} for validation)", store_digest(data.store), channels)
