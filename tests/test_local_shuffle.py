"""Local pixel shuffle: the vectorised version equals the spec's block loop, and its draws
have the spec's distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from genesis_jax.reference.numpy_genesis import ReferencePipeline
from stats import assert_counts_match, assert_rate

from genesis_jax.deform import local_pixel_shuffle
from genesis_jax.deform.shuffle import block_permutation, block_plan
from genesis_jax.program import primitive_counts


def loop_shuffle(cube, corner, size, block_key, rounds):
    """The spec, literally: blocks in order, read from the unshuffled cube, permuted, written.
    (Each block's permutation of its slots is evaluated up front, all blocks in one call.)"""
    out = cube.copy()
    n_max = int(np.prod(size, axis=1).max())
    perms = np.asarray(jax.jit(jax.vmap(lambda k, n: block_permutation(k, jnp.arange(n_max), n, rounds)))(
        jnp.asarray(block_key), jnp.asarray(np.prod(size, axis=1), jnp.int32)))
    for (cx, cy, cz), (sx, sy, sz), perm in zip(corner, size, perms):
        n = sx * sy * sz
        target = perm[:n]
        box = (slice(cx, cx + sx), slice(cy, cy + sy), slice(cz, cz + sz))
        window = cube[box].flatten(order="F")  # slot = lx + sx * (ly + sy * lz)
        out[box] = window[target].reshape((sx, sy, sz), order="F")
    return out


@pytest.mark.parametrize("shape,n_blocks", [((20, 24, 16), 300), ((64, 64, 32), 400)])
def test_equals_block_loop_with_same_draws(shape, n_blocks):
    # Few blocks on a small cube leave many voxels uncovered and many blocks overlapping:
    # both the overwrite order and the untouched voxels are exercised.
    cube = np.random.default_rng(0).random(shape, dtype=np.float32)
    for seed in range(3):
        key = jax.random.key(seed)
        corner, size, block_key = (np.asarray(a) for a in block_plan(key, shape, n_blocks))
        expected = loop_shuffle(cube, corner, size, block_key, rounds=12)
        got = np.asarray(jax.jit(local_pixel_shuffle, static_argnames="n_blocks")(key, jnp.asarray(cube), n_blocks=n_blocks))
        np.testing.assert_array_equal(got, expected)


def test_block_sizes_and_corners_follow_spec():
    # 10,000 blocks of one 64x64x32 plan: sizes uniform on 1..6, 1..6, 1..3; corners
    # uniform on [0, dim - size] (checked for the size-1 and the largest blocks).
    shape = (64, 64, 32)
    corner, size, _ = (np.asarray(a) for a in block_plan(jax.random.key(1), shape, 10_000))
    for axis, max_size in enumerate((6, 6, 3)):
        assert size[:, axis].min() == 1 and size[:, axis].max() == max_size
        assert_counts_match(np.bincount(size[:, axis] - 1, minlength=max_size), np.ones(max_size), f"size axis {axis}")
        assert (corner[:, axis] >= 0).all() and (corner[:, axis] + size[:, axis] <= shape[axis]).all()
    # corner x given size x = 1 ranges over 0..63: 8 bins of 8 positions each
    small = corner[size[:, 0] == 1, 0]
    assert_counts_match(np.bincount(small // 8, minlength=8), np.ones(8), "corner x for size 1")
    large = corner[size[:, 0] == 6, 0]
    assert large.max() == 58


@pytest.mark.parametrize("n", [1, 2, 7, 24, 108])
def test_permutation_is_a_bijection(n):
    keys = jax.random.bits(jax.random.key(n), (200,), jnp.uint32)
    perms = np.asarray(jax.vmap(lambda k: block_permutation(k, jnp.arange(n), jnp.int32(n)))(keys))
    np.testing.assert_array_equal(np.sort(perms, axis=1), np.tile(np.arange(n), (200, 1)))


@pytest.mark.parametrize("n", [6, 24, 108])
def test_permutation_is_close_to_uniform(n):
    """20,000 random block keys. A uniform permutation sends slot 0 anywhere with
    probability 1/n (chi-square), has on average 1 fixed point (tolerance 0.05, ~5
    standard errors), and orders slots 0, 1 either way with probability 1/2 (4 sigma)."""
    trials = 20_000
    keys = jax.random.bits(jax.random.key(100 + n), (trials,), jnp.uint32)
    perms = np.asarray(jax.jit(jax.vmap(lambda k: block_permutation(k, jnp.arange(n), jnp.int32(n))))(keys))
    assert_counts_match(np.bincount(perms[:, 0], minlength=n), np.ones(n), f"image of slot 0, n={n}")
    assert_counts_match(np.bincount(perms[:, n - 1], minlength=n), np.ones(n), f"image of slot n-1, n={n}")
    fixed = (perms == np.arange(n)).sum(axis=1).mean()
    assert abs(fixed - 1.0) < 0.05, f"mean fixed points {fixed:.3f}, uniform permutations have 1"
    assert_rate(int((perms[:, 0] < perms[:, 1]).sum()), trials, 0.5, "slot 0 before slot 1")


def test_changed_share_matches_reference_loop():
    """The share of voxels a full 10,000-block shuffle changes on a random 64x64x32 cube
    equals the NumPy reference's (10 cubes each; they agree within 0.01, the cube to
    cube spread is ~0.002)."""
    rng = np.random.default_rng(3)
    cubes = rng.random((10, 64, 64, 32), dtype=np.float32)
    reference = ReferencePipeline(seed=3)
    ref_share = np.mean([(reference.local_pixel_shuffle(c) != c).mean() for c in cubes])
    shuffle = jax.jit(jax.vmap(local_pixel_shuffle))
    keys = jax.random.split(jax.random.key(3), len(cubes))
    ours = np.asarray(shuffle(keys, jnp.asarray(cubes)))
    our_share = (ours != cubes).mean()
    assert abs(our_share - ref_share) < 0.01, (our_share, ref_share)
    assert 0.5 < our_share < 0.95


@pytest.mark.parametrize("shape", [(64, 64, 32), (20, 30, 10)])
def test_computed_block_lookups_give_the_same_shuffle_without_gathers(shape):
    """lookups="compute" (the TPU default) re-hashes each voxel's block geometry from its
    number instead of reading the block tables, and scatters the last writers as single
    cells: the same array bit for bit, the only gather left is the one read of the cube,
    and every scatter is of single elements."""
    cube = jnp.asarray(np.random.default_rng(3).random(shape, dtype=np.float32))
    for seed in range(5):
        key = jax.random.key(seed)
        table = local_pixel_shuffle(key, cube, lookups="table")
        computed = local_pixel_shuffle(key, cube, lookups="compute")
        np.testing.assert_array_equal(np.asarray(computed), np.asarray(table))
    jaxprs = {mode: jax.make_jaxpr(lambda c, mode=mode: local_pixel_shuffle(jax.random.key(0), c, lookups=mode))(cube)
              for mode in ("table", "compute")}
    gathers = {mode: primitive_counts(jaxpr).get("gather", 0) for mode, jaxpr in jaxprs.items()}
    assert gathers["compute"] == 1 and gathers["table"] >= 4, gathers
    # and no windowed scatter, which the TPU compiler expands into a loop over its updates
    # (tests/test_hlo_cost.py compiles both for a v5e where libtpu is installed)
    windows = {mode: [e.params["dimension_numbers"].update_window_dims for e in jaxpr.jaxpr.eqns
                      if e.primitive.name.startswith("scatter")] for mode, jaxpr in jaxprs.items()}
    assert (1, 2, 3) in windows["table"] and all(w == () for w in windows["compute"]), windows
