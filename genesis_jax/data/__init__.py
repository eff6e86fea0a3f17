"""CT/MR volumes to Genesis cubes: readers, the cube sampler, cube stores, batch sources."""

from importlib import resources
from pathlib import Path

from genesis_jax.data.sampler import FILTERS, SamplerConfig, sample_cubes
from genesis_jax.data.batches import StoreBatches, VolumeBatches
from genesis_jax.data.store import CubeStoreWriter, open_store
from genesis_jax.data.volumes import (Volume, VolumeError, find_inputs, hu_window, percentile_window, read_volume,
                                      resample, to_unit_range)


def sample_path() -> Path:
    """The embedded chest CT crop (see genesis_jax/data/sample/README.md for its source)."""
    return Path(str(resources.files("genesis_jax.data") / "sample" / "chest_ct_crop.nii.gz"))


__all__ = ["FILTERS", "SamplerConfig", "sample_cubes", "CubeStoreWriter", "StoreBatches", "VolumeBatches",
           "open_store", "Volume", "VolumeError", "find_inputs", "hu_window", "percentile_window", "read_volume",
           "resample", "sample_path", "to_unit_range"]
