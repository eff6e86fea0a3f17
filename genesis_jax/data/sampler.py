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
    """Per voxel (x, y, z < Z - 2): 1 - k / 2, k the first of 0, 1, 2 with
    volume[x, y, z + k] >= threshold (2 if none). A crop's lung score is the sum of
    these over its cube: k never looks past the crop's 3 extra slices."""
    dense = volume >= threshold
    k = np.where(dense[..., :-2], 0, np.where(dense[..., 1:-1], 1, 2))
    return 1.0 - k / 2.0


def voxel_scores(volume: np.ndarray, cfg: SamplerConfig) -> np.ndarray:
    """The per-voxel quantity the filter sums over a cube."""
    if cfg.filter == "lung":
        return lung_weights(volume, cfg.lung_threshold)
    return (volume >= cfg.foreground_threshold).astype(np.float64)


def summed_table(values: np.ndarray) -> np.ndarray:
    """Summed-volume table: table[x, y, z] = values[:x, :y, :z].sum()."""
    table = np.zeros(tuple(d + 1 for d in values.shape))
    table[1:, 1:, 1:] = values.cumsum(0).cumsum(1).cumsum(2)
    return table


def box_sums(table: np.ndarray, corners: np.ndarray, size) -> np.ndarray:
    """Sum over the box [corner, corner + size) for every corner: 8 lookups per box
    instead of a pass over its 131,072 voxels."""
    lo = [corners[:, a] for a in range(3)]
    hi = [corners[:, a] + size[a] for a in range(3)]
    total = np.zeros(len(corners))
    for sx, x in ((1, hi[0]), (-1, lo[0])):
        for sy, y in ((1, hi[1]), (-1, lo[1])):
            for sz, z in ((1, hi[2]), (-1, lo[2])):
                total += sx * sy * sz * table[x, y, z]
    return total


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
    sums = box_sums(table, corners, cfg.crop)
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
