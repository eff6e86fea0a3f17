"""DeformConfig: the knobs of the Genesis corruption pipeline, defaults from the paper's code."""

from __future__ import annotations

import dataclasses

FLIP_AXES_CHOICES = ("original", "xyz")
BATCH_MODES = ("auto", "vmap", "map")
LOOKUPS = ("auto", "table", "compute")
CHANNEL_MODES = ("shared", "independent")
DIMS = (2, 3)
# Fields that say how the deformations are computed, not what they do (DeformConfig's
# docstring): a run's identity and restore's "does this run corrupt otherwise" leave them out.
HOW_COMPUTED = ("batch_mode", "lookups")


@dataclasses.dataclass(frozen=True)
class DeformConfig:
    """Probabilities and sizes of the four Genesis deformations plus flip.

    Frozen and hashable so it can be a static argument of jax.jit.

    dims: the spatial axes of what is corrupted: 3, cubes (X, Y, Z); 2, images (H, W),
      Models Genesis 2D. Every size rule of the spec is per side, so it carries over
      axis by axis (blocks up to side // 10, in-paint boxes side // 6 .. side // 3,
      out-paint windows side - 4 side // 7 .. side - 3 side // 7, 3-pixel margins);
      the block count does not (shuffle.blocks_for_shape). An image may carry channels
      after its spatial axes as a cube does: (H, W, C).
    flip_axes: "original" reproduces the official code, where the three flip choices
      are the axes of a (1, X, Y, Z) array: one third of the picks flip the channel
      axis (a no-op) and Z is never flipped; in 2D the choices are the axes of a (1, H, W)
      array: a no-op, H or W. "xyz" flips one of the spatial axes instead (2D: H or W).
    shuffle_rounds: rounds of the swap-or-not permutation used to permute each
      shuffle block (more rounds, closer to a uniform permutation; 12 leaves a
      first-order bias below 2**-12, see tests/test_local_shuffle.py).
    bezier_table_size: points of the lookup table through which the Bezier intensity
      map is applied (the original interpolates 100,000 curve samples).
    lookups: how per-voxel work reads per-cube data. "table": from small per-cube
      tables, by gathers (the Bezier map's 4096 points, the shuffle blocks' geometry);
      fastest on CPU and GPU. "compute": recomputed per voxel instead (each voxel's
      Bezier parameter bisected, each voxel's block geometry re-hashed from its
      number), no gathers; the TPU compiler costs a per-voxel gather as reading far
      more than it does. "auto": compute on TPU, table elsewhere. The shuffle is the
      same bit for bit; the Bezier map agrees to the table's interpolation error.
    channels: how a cube of C channels (X, Y, Z, C) is corrupted. "shared": one draw of
      the spatial corruptions (flips, shuffle blocks and their permutations, in-paint
      boxes, out-paint windows) for all channels, as co-registered modalities show the
      same anatomy; the Bezier curve and the painting noise drawn per channel. Which
      stages run is one draw per cube. "independent": every corruption drawn per
      channel, as if each were a one-channel cube. Channel 0 gets the cube's own key in
      both modes, so it is what a one-channel cube gets; C = 1 is today's arrays, bit for bit.
    batch_mode: how genesis_batch runs a batch: "vmap" (every stage computed for every
      cube, then selected), "map" (one cube at a time with real branches), or "auto"
      (map on CPU, vmap on accelerators). The results are the same.
    """

    dims: int = 3                       # 3 (cubes X, Y, Z) | 2 (images H, W): the spatial axes (genesis_jax/deform/config.py)
    flip_rate: float = 0.4              # another flip follows with this probability (up to max_flips)
    max_flips: int = 3                  # flips per cube at most
    flip_axes: str = "original"         # original (the official code's axes) | xyz (genesis_jax/deform/config.py)
    local_rate: float = 0.5             # probability of the local pixel shuffle
    local_blocks: int = 10_000          # shuffle blocks per cube
    shuffle_rounds: int = 12            # rounds of each block's permutation (genesis_jax/deform/config.py)
    nonlinear_rate: float = 0.9         # probability of the Bezier intensity map
    bezier_table_size: int = 4096       # points of the Bezier lookup table
    paint_rate: float = 0.9             # probability of painting (in- or out-)
    inpaint_rate: float = 0.2           # given painting: in-paint with this probability, else out-paint
    paint_continue_rate: float = 0.95   # probability of each further box/window
    inpaint_max_boxes: int = 5          # in-painted boxes at most
    outpaint_max_windows: int = 5       # out-painting windows at most
    channels: str = "shared"            # shared | independent: corruptions of a C-channel cube (genesis_jax/deform/config.py)
    lookups: str = "auto"               # auto | table | compute (genesis_jax/deform/config.py)
    batch_mode: str = "auto"            # auto | vmap | map (genesis_jax/deform/config.py)

    def __post_init__(self):
        for name in ("flip_rate", "local_rate", "nonlinear_rate", "paint_rate",
                     "inpaint_rate", "paint_continue_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"DeformConfig.{name} must be a probability in [0, 1], got {value!r}")
        if self.dims not in DIMS:
            raise ValueError(f"DeformConfig.dims must be 2 or 3, got {self.dims!r}")
        if self.flip_axes not in FLIP_AXES_CHOICES:
            raise ValueError(f"DeformConfig.flip_axes must be one of {FLIP_AXES_CHOICES}, got {self.flip_axes!r}")
        if self.channels not in CHANNEL_MODES:
            raise ValueError(f"DeformConfig.channels must be one of {CHANNEL_MODES}, got {self.channels!r}")
        if self.lookups not in LOOKUPS:
            raise ValueError(f"DeformConfig.lookups must be one of {LOOKUPS}, got {self.lookups!r}")
        if self.batch_mode not in BATCH_MODES:
            raise ValueError(f"DeformConfig.batch_mode must be one of {BATCH_MODES}, got {self.batch_mode!r}")
        for name in ("max_flips", "local_blocks", "shuffle_rounds", "inpaint_max_boxes",
                     "outpaint_max_windows"):
            if getattr(self, name) < 0:
                raise ValueError(f"DeformConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.outpaint_max_windows < 1:
            raise ValueError("DeformConfig.outpaint_max_windows must be >= 1 (the first window is always kept)")
        if self.bezier_table_size < 2:
            raise ValueError(f"DeformConfig.bezier_table_size must be >= 2, got {self.bezier_table_size!r}")


def resolve_lookups(lookups: str, platform: str | None = None) -> str:
    """"table" or "compute" for this platform (default: the default backend's)."""
    if lookups != "auto":
        return lookups
    import jax
    return "compute" if (platform or jax.default_backend()) == "tpu" else "table"
