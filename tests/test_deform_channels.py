"""Deformations of C-channel cubes (X, Y, Z, C): one channel's statistics, shared geometry."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scipy_stats
from stats import P_MIN

from genesis_jax.deform import DeformConfig, genesis_batch

SMALL = (20, 20, 20)
FAST = DeformConfig(local_blocks=64)


def cubes(n, channels, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random((n, *SMALL, channels), dtype=np.float32))


@pytest.mark.parametrize("mode", ["shared", "independent"])
def test_channel_zero_and_one_channel_cubes_are_todays_arrays_bit_for_bit(mode):
    """C = 1 (X, Y, Z, 1) and channel 0 of C = 2 get exactly what a (X, Y, Z) cube gets."""
    cfg = dataclasses.replace(FAST, channels=mode)
    two = cubes(6, 2)
    plain = genesis_batch(jax.random.key(4), two[..., 0], cfg)
    for batch in (two[..., :1], two):
        for got, want in zip(genesis_batch(jax.random.key(4), batch, cfg), plain):
            np.testing.assert_array_equal(np.asarray(got)[..., 0], np.asarray(want))


def per_cube_summaries(corrupted, target):
    """Per cube: mean |corrupted - target| and the share of voxels left as they were."""
    diff = np.abs(np.asarray(corrupted) - np.asarray(target))
    return diff.mean(axis=(1, 2, 3)), (diff == 0).mean(axis=(1, 2, 3))


@pytest.mark.parametrize("mode", ["shared", "independent"])
def test_each_channel_alone_has_the_one_channel_statistics(mode):
    """500 two-channel cubes vs 500 one-channel cubes (other keys): the per-cube mean
    change and unchanged share of channel 1 are distributed as a one-channel cube's
    (two-sample KS, p > 1e-4). Fails if channel 1 skipped a stage channel 0 gets (e.g. its
    own Bezier curve or its painting noise)."""
    n = 500
    cfg = dataclasses.replace(FAST, channels=mode)
    two = genesis_batch(jax.random.key(10), cubes(n, 2, seed=1), cfg)
    one = genesis_batch(jax.random.key(11), cubes(n, 1, seed=2)[..., 0], cfg)
    second = per_cube_summaries(two[0][..., 1], two[1][..., 1])
    for name, a, b in zip(("mean change", "unchanged share"), second, per_cube_summaries(*one)):
        p = scipy_stats.ks_2samp(a, b).pvalue
        assert p > P_MIN, f"channel 1's {name} is not distributed as a one-channel cube's (KS p={p:.2e})"


def test_shared_mode_shares_geometry_and_draws_curves_and_noise_per_channel():
    """Two identical channels, 100 cubes. Without the intensity map the channels are equal
    wherever nothing was painted (same flips, shuffle blocks and permutations) and differ
    at every painted voxel (noise per channel), the painted voxels being the same in both.
    With only the intensity map, the channels differ (a curve per channel)."""
    n = 100
    same = jnp.repeat(cubes(n, 1, seed=3), 2, axis=-1)
    no_curve = dataclasses.replace(FAST, nonlinear_rate=0.0)
    corrupted, target = (np.asarray(a) for a in genesis_batch(jax.random.key(5), same, no_curve))
    unpainted, _ = (np.asarray(a) for a in genesis_batch(jax.random.key(5), same,
                                                         dataclasses.replace(no_curve, paint_rate=0.0)))
    np.testing.assert_array_equal(target[..., 0], target[..., 1])
    np.testing.assert_array_equal(unpainted[..., 0], unpainted[..., 1])
    painted = [corrupted[..., c] != unpainted[..., c] for c in range(2)]
    assert painted[0].any()
    np.testing.assert_array_equal(painted[0], painted[1])
    np.testing.assert_array_equal(corrupted[..., 0][~painted[0]], corrupted[..., 1][~painted[0]])
    assert np.all(corrupted[..., 0][painted[0]] != corrupted[..., 1][painted[0]])

    curve_only = DeformConfig(local_rate=0.0, nonlinear_rate=1.0, paint_rate=0.0)
    curved, _ = (np.asarray(a) for a in genesis_batch(jax.random.key(6), same, curve_only))
    assert all(not np.array_equal(c[..., 0], c[..., 1]) for c in curved)


def test_independent_mode_draws_the_geometry_per_channel():
    """Two identical channels, 100 cubes, flips and shuffle only: independent channels
    differ in most cubes (own flips and blocks; both untouched in ~0.6 * 0.5 of the pairs
    of draws at most), shared ones never."""
    n = 100
    same = jnp.repeat(cubes(n, 1, seed=4), 2, axis=-1)
    geometry = DeformConfig(local_blocks=64, nonlinear_rate=0.0, paint_rate=0.0)
    for mode, least, most in (("shared", 0, 0), ("independent", n // 2, n)):
        corrupted, _ = genesis_batch(jax.random.key(8), same, dataclasses.replace(geometry, channels=mode))
        corrupted = np.asarray(corrupted)
        differ = sum(not np.array_equal(c[..., 0], c[..., 1]) for c in corrupted)
        assert least <= differ <= most, f"{mode}: {differ} of {n} cubes have channels that differ"


def test_channel_mode_is_validated():
    with pytest.raises(ValueError, match="channels must be one of"):
        DeformConfig(channels="per-voxel")
