"""The Genesis cube sampler (GUIDE.md section 3, cube extraction), vectorised.

A volume in [0, 1] gives up to `cubes_per_volume` crops of (64, 64, 32 + 3), corners
uniform inside the borders, tried in order (at most tries_per_cube * cubes_per_volume
tries) and kept when the filter accepts them; the kept cube is the first 32 slices.

Filters:
- "lung" (the original, for chest CT): t = (-150 + 1000) / 2000; for each voxel (x, y, d),
  d < 32, k = the first of 0, 1, 2 with crop[x, y, d + k] >= t (2 if none), weight
  1 - k / 2; reject the crop if the weights sum to more than 0.15 * 64 * 64 * 32. The
  original computes k in a 4-deep Python loop for every try; here the weights are
  computed once per volume (two array comparisons) and every try's sum is read from a
  summed-volume table.
- "foreground" (other CT): reject crops where less than `min_foreground` of the voxels
  are above `foreground_threshold` (HU -500 in the default CT window): mostly air.
- "none": every crop is kept.

Borders: the LUNA16 recipe keeps corners 100 voxels from the x/y edges and 30 from
the z edges, which leaves no room in smaller volumes (our 233 x 167 x 191 sample has
only 103 voxels of slack in y). The default "auto" border per axis is
min(LUNA16 border, slack // 4), slack = dim - crop - 1: it skips the outer quarter of
the possible corner range on each side (body surface, table, air) and always leaves
half of it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from genesis_jax.errors import UserError

FILTERS = ("lung", "foreground", "none")
LUNA_BORDERS = (100, 100, 30)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    crop: tuple[int, int, int] = (64, 64, 32)
    extra_depth: int = 3                  # slices the lung filter looks ahead
    border: tuple[int, int, int] | str = "auto"
    filter: str = "lung"
    cubes_per_volume: int = 32
    tries_per_cube: int = 50
    lung_threshold: float = (-150 + 1000) / 2000
    lung_max_share: float = 0.15
    foreground_threshold: float = (-500 + 1000) / 2000
    min_foreground: float = 0.5
    filter_channel: int = 0               # volumes of C channels (X, Y, Z, C): the channel the filter judges

    def __post_init__(self):
        if self.filter not in FILTERS:
            raise UserError(f"filter must be one of {FILTERS}, got {self.filter!r}")

    @property
    def window(self) -> tuple[int, int, int]:
        """The crop that is read: the cube plus the look-ahead slices."""
        return (self.crop[0], self.crop[1], self.crop[2] + self.extra_depth)


def borders_for(shape, cfg: SamplerConfig) -> tuple[int, int, int]:
    if cfg.border != "auto":
        return tuple(int(b) for b in cfg.border)
    return tuple(min(luna, max(0, dim - w - 1) // 4) for dim, w, luna in zip(shape, cfg.window, LUNA_BORDERS))


def corner_ranges(shape, cfg: SamplerConfig) -> list[tuple[int, int]]:
    """Inclusive [low, high] corner range per axis (the original's randint bounds)."""
    return [(b, dim - w - 1 - b) for dim, w, b in zip(shape, cfg.window, borders_for(shape, cfg))]


def check_volume_fits(shape, cfg: SamplerConfig) -> None:
    """ValueError when no crop fits inside the borders."""
    for axis, ((low, high), dim) in enumerate(zip(corner_ranges(shape, cfg), shape)):
        if high < low:
            raise UserError(f"volume {'x'.join(map(str, shape))} is smaller than one "
                             f"{'x'.join(map(str, cfg.window))} crop inside borders {borders_for(shape, cfg)} "
                             f"(axis {'XYZ'[axis]})")


def lung_weights(volume: np.ndarray, threshold: float) -> np.ndarray:
    """Per voxel (x, y, z < Z - 2), in half units (int8 0, 1, 2 for weights 0, 1/2, 1):
    2 - k, k the first of 0, 1, 2 with volume[x, y, z + k] >= threshold (2 if none). A
    crop's lung score is the sum of the weights over its cube: k never looks past the
    crop's 3 extra slices. 2 - k = d0 + (d0 or d1), d0, d1 the slice and the next dense:
    two boolean passes, one byte per voxel (float weights took 16 and 3 s on a
    full-size CT)."""
    dense = volume >= threshold
    here, next_ = dense[..., :-2], dense[..., 1:-1]
    return here.view(np.int8) + (here | next_).view(np.int8)


# The filters' per-voxel scores are small integers; the score of a crop is their box sum
# times this unit (lung weights count in halves). Integer sums are exact, as the float
# sums of halves they replace were: every decision is unchanged.
SCORE_UNITS = {"lung": 0.5, "foreground": 1.0}


def voxel_scores(volume: np.ndarray, cfg: SamplerConfig) -> np.ndarray:
    """The per-voxel quantity the filter sums over a cube, int8, in SCORE_UNITS."""
    if cfg.filter == "lung":
        return lung_weights(volume, cfg.lung_threshold)
    return (volume >= cfg.foreground_threshold).view(np.int8)


def summed_table(values: np.ndarray) -> np.ndarray:
    """Summed-volume table: table[x, y, z] = values[:x, :y, :z].sum(), int32 where the
    total fits (int64 beyond 2^31), accumulated in place: 4 bytes per voxel at peak, not
    the 32 that float cumsums took (one per axis)."""
    bound = int(np.abs(values).max(initial=0)) * values.size
    table = np.zeros(tuple(d + 1 for d in values.shape), np.int32 if bound < 2**31 else np.int64)
    table[1:, 1:, 1:] = values
    for axis in range(3):
        np.cumsum(table, axis=axis, out=table)
    return table


def box_sums(table: np.ndarray, corners: np.ndarray, size) -> np.ndarray:
    """Sum over the box [corner, corner + size) for every corner (int64): 8 lookups per
    box instead of a pass over its 131,072 voxels."""
    lo = [corners[:, a] for a in range(3)]
    hi = [corners[:, a] + size[a] for a in range(3)]
    total = np.zeros(len(corners), np.int64)
    for sx, x in ((1, hi[0]), (-1, lo[0])):
        for sy, y in ((1, hi[1]), (-1, lo[1])):
            for sz, z in ((1, hi[2]), (-1, lo[2])):
                total += sx * sy * sz * table[x, y, z].astype(np.int64)
    return total


def crop_scores(table: np.ndarray, corners: np.ndarray, cfg: SamplerConfig) -> np.ndarray:
    """The filter's score (float64) of the crop at every corner: the lung weights' sum, or
    the count of voxels above the foreground threshold."""
    return box_sums(table, corners, cfg.crop) * SCORE_UNITS[cfg.filter]


def filter_table(volume: np.ndarray, cfg: SamplerConfig) -> np.ndarray | None:
    """What the filter needs to judge any crop of this volume (None for "none"); a volume
    of C channels is judged by its channel cfg.filter_channel."""
    if volume.ndim == 4:
        volume = volume[..., cfg.filter_channel]
    return None if cfg.filter == "none" else summed_table(voxel_scores(volume, cfg))


def accept_corners(table: np.ndarray | None, corners: np.ndarray, cfg: SamplerConfig) -> np.ndarray:
    """bool (T,): which crops at these corners the filter keeps."""
    if cfg.filter == "none":
        return np.ones(len(corners), bool)
    sums = crop_scores(table, corners, cfg)
    if cfg.filter == "lung":
        return sums <= cfg.lung_max_share * np.prod(cfg.crop)
    return sums >= cfg.min_foreground * np.prod(cfg.crop)


def draw_corners(shape, cfg: SamplerConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.stack([rng.integers(low, high + 1, size=n) for low, high in corner_ranges(shape, cfg)], axis=1)


def cut(volume: np.ndarray, corners: np.ndarray, size) -> np.ndarray:
    """(T, *size) crops at the given corners, (T, *size, C) of a volume of C channels (one
    slice per crop, no per-voxel loop)."""
    return np.stack([volume[x:x + size[0], y:y + size[1], z:z + size[2]] for x, y, z in corners])


def sample_cubes(volume: np.ndarray, cfg: SamplerConfig, rng: np.random.Generator):
    """Cubes (n, *crop) float32 from one volume (X, Y, Z) in [0, 1], or (n, *crop, C) from a
    volume of C channels (X, Y, Z, C), and the number of tries used.

    All tries are drawn up front and judged at once; the first cubes_per_volume accepted
    ones, in order, are kept: what a sequential try-until-enough loop gives with the
    same draws.
    """
    check_volume_fits(volume.shape[:3], cfg)
    corners = draw_corners(volume.shape[:3], cfg, rng, cfg.cubes_per_volume * cfg.tries_per_cube)
    accepted = np.flatnonzero(accept_corners(filter_table(volume, cfg), corners, cfg))[: cfg.cubes_per_volume]
    tries = int(accepted[-1]) + 1 if len(accepted) == cfg.cubes_per_volume else len(corners)
    if len(accepted) == 0:
        return np.zeros((0, *cfg.crop, *volume.shape[3:]), np.float32), tries
    return cut(volume, corners[accepted], cfg.crop).astype(np.float32), tries
