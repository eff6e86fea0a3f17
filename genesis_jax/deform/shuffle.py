"""Local pixel shuffle (spec step 2), vectorised.

The original loops over 10,000 blocks: each block's voxels are read from the cube as it
was before the shuffle, permuted uniformly, and written back; later blocks overwrite
earlier ones. The result only depends, for every voxel, on (a) which block wrote it
last and (b) which source voxel that block's permutation sends there. So:

1. last writer: blocks are scattered, by their x-size, into a small grid with a
   windowed scatter-max of their index (a block covers voxel v iff its corner c has
   v - size < c <= v); a suffix max over the size classes and a max over the x-shifts
   then give, for each voxel, the largest index of a block covering it.
2. source: each block permutes its n = sx*sy*sz slots with a keyed swap-or-not
   permutation (Hoang, Morris, Rogaway 2012), evaluated per voxel: no sort, no
   per-block loop, any n (no cycle walking).
3. one gather from the unshuffled cube.

A 2D image (H, W) is shuffled as the cube (H, W, 1): its blocks' z-size is drawn from
[1, max(1 // 10, 1)] = 1 and their z-corner from [0, 0], so the blocks are exactly the
spec's rectangles (sides uniform on [1, side // 10]) and the same code does both.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from genesis_jax.deform._random import Stream, hash_u32, mix32, randint, seed_from_key
from genesis_jax.deform._xla import materialize
from genesis_jax.deform.config import resolve_lookups

_ROUND_KEY = 0x9E3779B9
_ROUND_BIT = 0x85EBCA6B


# The official 10,000 blocks on a 64x64x32 cube: each voxel lies in this many blocks on
# average (10,000 x E[block volume] 3.5 x 3.5 x 2 / 131,072 voxels).
OFFICIAL_BLOCKS, OFFICIAL_SHAPE = 10_000, (64, 64, 32)


def max_block_size(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Largest block per axis: dim // 10 (6, 6, 3 for a 64x64x32 cube), at least 1."""
    return tuple(max(d // 10, 1) for d in shape)


def mean_block_volume(shape) -> float:
    """E[block volume]: each side uniform on [1, max side], independent."""
    return math.prod((m + 1) / 2 for m in max_block_size(shape))


def blocks_for_shape(shape) -> int:
    """How many blocks cover each voxel (or pixel) of `shape` as often, on average, as the
    official 10,000 blocks cover a 64x64x32 cube: the rule that sizes DeformConfig.local_blocks
    for other shapes, 2D images included (10,000 for 64x64x32 itself; 725 for 128x128,
    whose blocks are up to 12x12 pixels)."""
    coverage = OFFICIAL_BLOCKS * mean_block_volume(OFFICIAL_SHAPE) / math.prod(OFFICIAL_SHAPE)
    return max(1, round(coverage * math.prod(shape) / mean_block_volume(shape)))


def block_plan(key: jax.Array, shape: tuple[int, int, int], n_blocks: int = 10_000):
    """The random blocks of one shuffle, in write order.

    Returns (corner, size, block_key): int32 (n_blocks, 3), int32 (n_blocks, 3), uint32
    (n_blocks,). Size per axis uniform in [1, dim // 10], corner in [0, dim - size].
    """
    return block_fields(seed_from_key(key), jnp.arange(n_blocks), shape)


def block_fields(seed: jax.Array, index: jax.Array, shape: tuple[int, int, int]):
    """(corner (..., 3), size (..., 3), block_key (...)) of the blocks numbered `index`,
    any shape: counter hashes of (seed, index), so a block's geometry can be recomputed
    wherever its number is known, without reading a table."""
    max_size = max_block_size(shape)
    size = jnp.stack([
        randint(seed, stream, index, 1, m)
        for stream, m in zip((Stream.BLOCK_SIZE_X, Stream.BLOCK_SIZE_Y, Stream.BLOCK_SIZE_Z), max_size)
    ], axis=-1)
    corner = jnp.stack([
        randint(seed, stream, index, 0, dim - size[..., axis])
        for axis, (stream, dim) in enumerate(
            zip((Stream.BLOCK_CORNER_X, Stream.BLOCK_CORNER_Y, Stream.BLOCK_CORNER_Z), shape))
    ], axis=-1)
    return corner, size, hash_u32(seed, Stream.BLOCK_KEY, index)


def round_words(block_key: jax.Array, rounds: int) -> list[jax.Array]:
    """One independent uint32 per round for each block key (12 murmur mixes: cheaper
    per voxel on CPU than gathering a per-block table)."""
    return [mix32(block_key ^ jnp.uint32((r * _ROUND_KEY) & 0xFFFFFFFF)) for r in range(rounds)]


def swap_or_not(words: list[jax.Array], slot: jax.Array, n: jax.Array) -> jax.Array:
    """A keyed permutation of range(n) evaluated at slot (Hoang, Morris, Rogaway 2012).

    words holds one random uint32 per round. Each round pairs X with K - X (mod n), K
    uniform from the word's high bits, and swaps when a bit drawn from (word, pair)
    says so; every round is an involution, so the composition is a bijection for any
    n (no cycle walking), and it approaches a uniform permutation exponentially in the
    number of rounds.
    """
    x = slot
    for word in words:
        k = ((word >> 16).astype(jnp.int32) * n) >> 16
        partner = k - x
        partner = jnp.where(partner < 0, partner + n, partner)
        pair_id = jnp.maximum(x, partner).astype(jnp.uint32)
        swap = ((word ^ (pair_id * jnp.uint32(_ROUND_KEY))) * jnp.uint32(_ROUND_BIT)) >> 31 == 1
        x = jnp.where(swap, partner, x)
    return x


def block_permutation(block_key: jax.Array, slot: jax.Array, n: jax.Array, rounds: int = 12) -> jax.Array:
    """The permutation block_key applies to its n slots, evaluated at slot."""
    return swap_or_not(round_words(block_key, rounds), slot, n)


def last_writer(corner: jax.Array, size: jax.Array, shape: tuple[int, int, int], points: bool = False) -> jax.Array:
    """int (X, Y, Z): index of the last block covering each voxel, -1 if none.

    points=True scatters each block's y/z extent as max_y * max_z single cells of a flat
    grid instead of one (max_y, max_z) window: the same grid, bit for bit. The TPU
    compiler expands a windowed scatter into a loop over every update (80,000 serial
    iterations for 8 cubes of 10,000 blocks), while a scatter of single elements runs as
    one sort and one native scatter.
    """
    dim_x, dim_y, dim_z = shape
    max_x, max_y, max_z = max_block_size(shape)
    n_blocks = corner.shape[0]
    dtype = jnp.int16 if n_blocks < 2**15 else jnp.int32  # halves the grid the scatter walks
    # grid[(s - 1) * X + cx, cy', cz'] = max index of the blocks with x-size s and corner x cx
    # that cover (cy', cz'): each block writes its y/z extent, masked to its size.
    where = jnp.stack([(size[:, 0] - 1) * dim_x + corner[:, 0], corner[:, 1], corner[:, 2]], axis=1)
    grid_shape = (max_x * dim_x, dim_y + max_y - 1, dim_z + max_z - 1)
    number = jnp.arange(n_blocks, dtype=dtype)
    if points:
        # (max_y, max_z, n_blocks): blocks along the minor axis, lane-dense on TPU.
        jy, jz = jnp.arange(max_y)[:, None, None], jnp.arange(max_z)[None, :, None]
        values = jnp.where((jy < size[:, 1]) & (jz < size[:, 2]), number, -1).astype(dtype)
        cells = ((where[:, 0] * grid_shape[1] + where[:, 1] + jy) * grid_shape[2] + where[:, 2] + jz)
        grid = jnp.full(math.prod(grid_shape), -1, dtype).at[cells.reshape(-1)].max(
            values.reshape(-1), mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS).reshape(grid_shape)
    else:
        jy = jnp.arange(max_y)[None, None, :, None]
        jz = jnp.arange(max_z)[None, None, None, :]
        inside = (jy < size[:, 1, None, None, None]) & (jz < size[:, 2, None, None, None])
        window = jnp.where(inside, number[:, None, None, None], -1).astype(dtype)
        numbers = lax.ScatterDimensionNumbers(
            update_window_dims=(1, 2, 3), inserted_window_dims=(), scatter_dims_to_operand_dims=(0, 1, 2))
        grid = lax.scatter_max(jnp.full(grid_shape, -1, dtype), where, window, numbers,
                               mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    grid = grid.reshape(max_x, dim_x, dim_y + max_y - 1, dim_z + max_z - 1)[:, :, :dim_y, :dim_z]
    # A block with corner x cx covers x iff x - cx < size_x. longer = max index over the
    # blocks with x-size > d (a suffix max over size classes), read at corner x = x - d.
    longer = grid[max_x - 1]
    last = _shift_x(longer, max_x - 1)
    for d in range(max_x - 2, -1, -1):
        longer = jnp.maximum(longer, grid[d])
        last = jnp.maximum(last, _shift_x(longer, d))
    return last.astype(jnp.int32)


def _shift_x(a: jax.Array, d: int) -> jax.Array:
    """a[x - d] at x, -1 where x < d."""
    return jnp.pad(a, ((d, 0), (0, 0), (0, 0)), constant_values=-1)[: a.shape[0]]


def _pack3(v: jax.Array) -> jax.Array:
    """(n, 3) int32 with entries < 1024 -> one int32 per row (10 bits each)."""
    return v[:, 0] | (v[:, 1] << 10) | (v[:, 2] << 20)


def _unpack3(p: jax.Array):
    return p & 1023, (p >> 10) & 1023, p >> 20


def shuffle_sources(corner, size, block_key, shape, rounds: int = 12, seed=None) -> jax.Array:
    """int32 (X*Y*Z,): flat index of the voxel each output voxel is read from.

    With `seed` (the block_plan's seed), the TPU form: each voxel's block geometry is
    recomputed from its block number (block_fields) instead of read from the tables, and
    the last writers are scattered as single cells (last_writer's points): the same
    integers, no per-voxel gather and no windowed scatter (see local_pixel_shuffle).
    """
    dim_x, dim_y, dim_z = shape
    last = materialize(last_writer(corner, size, shape, points=seed is not None).reshape(-1))  # read by several gathers
    covered = last >= 0
    block = jnp.maximum(last, 0)
    if seed is None:
        # Per-voxel lookups of block data: 1-D gathers are ~10x faster than row or column
        # gathers on CPU, so the geometry is bit-packed into two words per block, and the
        # tables are materialized so that their hashes are not recomputed per voxel.
        corners, sizes, block_key = (materialize(t) for t in (_pack3(corner), _pack3(size), block_key))
        cx, cy, cz = _unpack3(corners[block])
        sx, sy, sz = _unpack3(sizes[block])
        voxel_key = block_key[block]
    else:
        corners, sizes, voxel_key = block_fields(seed, block, shape)
        cx, cy, cz = (corners[:, axis] for axis in range(3))
        sx, sy, sz = (sizes[:, axis] for axis in range(3))
    vx, vy, vz = jnp.unravel_index(jnp.arange(dim_x * dim_y * dim_z), shape)
    # Slots are numbered x fastest: slot = lx + sx * (ly + sy * lz).
    slot = (vx - cx) + sx * ((vy - cy) + sy * (vz - cz))
    target = block_permutation(voxel_key, slot, sx * sy * sz, rounds)
    # Integer division does not vectorise on CPU; float32 is exact here (target < 2**24,
    # and (t + 0.5) / q is never within rounding of an integer).
    plane = sx * sy
    pz = jnp.floor((target.astype(jnp.float32) + 0.5) / plane.astype(jnp.float32)).astype(jnp.int32)
    rest = target - pz * plane
    py = jnp.floor((rest.astype(jnp.float32) + 0.5) / sx.astype(jnp.float32)).astype(jnp.int32)
    px = rest - py * sx
    source = ((cx + px) * dim_y + (cy + py)) * dim_z + (cz + pz)
    return jnp.where(covered, source, jnp.arange(dim_x * dim_y * dim_z))


def check_shuffle_shape(shape, dims: int = 3) -> None:
    if len(shape) != dims or max(shape) > 1023 or min(shape) < 1:
        what = "3D cube" if dims == 3 else "2D image"
        raise ValueError(f"local_pixel_shuffle needs a {what} with dims in [1, 1023], got shape {tuple(shape)}")


def local_pixel_shuffle(key: jax.Array, x: jax.Array, *, n_blocks: int = 10_000, rounds: int = 12,
                        lookups: str = "auto", dims: int = 3) -> jax.Array:
    """Shuffle voxels within n_blocks random small blocks of cube x (X, Y, Z), or of every
    channel of x (X, Y, Z, C) alike (the same blocks and permutations). dims=2: pixels of
    an image (H, W) or (H, W, C), shuffled as the cube (H, W, 1) (the module's docstring).

    lookups: "table" reads each voxel's block geometry from per-cube tables (fastest on
    CPU and GPU); "compute" recomputes it from the block's number (no gather: the TPU
    compiler costs a per-voxel gather far above its real traffic); "auto": compute on
    TPU. Both give the same array, bit for bit.
    """
    check_shuffle_shape(x.shape[:dims], dims)
    if dims == 2:
        cube = x.reshape(x.shape[:2] + (1,) + x.shape[2:])
        return local_pixel_shuffle(key, cube, n_blocks=n_blocks, rounds=rounds, lookups=lookups).reshape(x.shape)
    shape = x.shape[:3]
    seed = seed_from_key(key)
    corner, size, block_key = block_fields(seed, jnp.arange(n_blocks), shape)
    recompute = resolve_lookups(lookups) == "compute"
    sources = shuffle_sources(corner, size, block_key, shape, rounds, seed=seed if recompute else None)
    if x.ndim == 3:
        return x.reshape(-1)[sources].reshape(shape)
    # Channels: the sources computed once (else XLA fuses their hashing into each channel's
    # gather), then one 1-D gather of every (voxel, channel) in the channel-last layout.
    channels = x.shape[-1]
    index = materialize(sources)[:, None] * channels + jnp.arange(channels)
    return x.reshape(-1)[index.reshape(-1)].reshape(x.shape)
