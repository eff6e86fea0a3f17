"""genesis_pair / genesis_batch: stage probabilities, determinism, device invariance."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from genesis_jax.reference.numpy_genesis import ReferencePipeline
from stats import assert_rate

from genesis_jax.deform import DeformConfig, genesis_batch, genesis_pair, sharded_genesis_batch

# Blocks need dims >= 20 to be larger than one voxel (size per axis <= dim // 10).
SMALL = (20, 20, 20)
# Few shuffle blocks keep the big statistical runs fast; the rates do not depend on it.
FAST = DeformConfig(local_blocks=64)


def random_cubes(n, shape=SMALL, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random((n, *shape), dtype=np.float32))


@pytest.mark.optimized  # 8,000 cubes: 4.4 s optimised, 15.3 s without (its compile is small)
def test_uncorrupted_share_is_half_a_percent():
    """8,000 cubes: corrupted == target for 0.5 * 0.1 * 0.1 = 0.5% of them (4 sigma: +-0.32%)."""
    n = 8000
    corrupted, target = genesis_batch(jax.random.key(0), random_cubes(n), FAST)
    untouched = np.all(np.asarray(corrupted) == np.asarray(target), axis=(1, 2, 3))
    assert_rate(int(untouched.sum()), n, 0.005, "uncorrupted share")


def test_uncorrupted_share_matches_the_reference_pipeline():
    """The NumPy reference, 4,000 cubes: the same 0.5% (4 sigma)."""
    n = 4000
    reference = ReferencePipeline(seed=1, local_blocks=64)
    cubes = np.asarray(random_cubes(n, seed=1))
    untouched = sum(np.array_equal(*reference.pair(c)) for c in cubes)
    assert_rate(untouched, n, 0.005, "reference uncorrupted share")


def test_with_every_rate_zero_only_flips_remain():
    """4,000 cubes, no deformation: corrupted == target, and the target equals the cube
    when the original flip loop's picks cancel: P = 0.6 + 0.24/3 + 0.096/3 + 0.064*7/27
    (picks uniform over no-op, X, Y; identity iff X and Y are each picked an even
    number of times), 4 sigma."""
    n = 4000
    cubes = random_cubes(n, seed=2)
    only_flip = DeformConfig(local_rate=0.0, nonlinear_rate=0.0, paint_rate=0.0)
    corrupted, target = genesis_batch(jax.random.key(1), cubes, only_flip)
    np.testing.assert_array_equal(np.asarray(corrupted), np.asarray(target))
    unchanged = np.all(np.asarray(target) == np.asarray(cubes), axis=(1, 2, 3))
    assert_rate(int(unchanged.sum()), n, 0.6 + 0.24 / 3 + 0.096 / 3 + 0.064 * 7 / 27, "identity flips")


def test_same_key_same_output_other_key_other_output():
    cubes = random_cubes(4, (32, 32, 16))
    a = genesis_batch(jax.random.key(7), cubes)
    b = genesis_batch(jax.random.key(7), cubes)
    c = genesis_batch(jax.random.key(8), cubes)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_example_depends_only_on_key_and_index():
    cubes = random_cubes(6, (32, 32, 16))
    full = np.asarray(genesis_batch(jax.random.key(3), cubes)[0])
    head = np.asarray(genesis_batch(jax.random.key(3), cubes[:2])[0])
    np.testing.assert_array_equal(full[:2], head)
    # Eager (unfused) arithmetic may round the intensity map differently in the last bit.
    pair = np.asarray(genesis_pair(jax.random.fold_in(jax.random.key(3), 4), cubes[4])[0])
    np.testing.assert_allclose(full[4], pair, rtol=1e-6, atol=1e-7)


@pytest.mark.optimized  # reads the compiled program (no all-gather)
@pytest.mark.parametrize("mode", ["map", "vmap"])
def test_sharded_over_8_devices_equals_unsharded(mode):
    """Each device corrupts only its own rows (no collective in the program: see
    tests/test_data_parallel.py), using the global example index: the arrays are the
    single-device ones, bit for bit."""
    assert jax.device_count() == 8, "conftest should simulate 8 CPU devices"
    cfg = DeformConfig(batch_mode=mode)
    cubes = random_cubes(16, (32, 32, 16))
    key = jax.random.key(11)
    single = [np.asarray(a) for a in genesis_batch(key, cubes, cfg)]
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded_cubes = jax.device_put(cubes, NamedSharding(mesh, P("data")))
    corrupt = jax.jit(lambda k, c: sharded_genesis_batch(k, c, cfg, mesh))
    assert "all-gather" not in corrupt.lower(key, sharded_cubes).compile().as_text()
    sharded = corrupt(key, sharded_cubes)
    assert sharded[0].sharding.spec == P("data") and len(sharded[0].sharding.device_set) == 8
    for ours, ref in zip(sharded, single):
        np.testing.assert_array_equal(np.asarray(ours), ref)


@pytest.mark.parametrize("shape", [(64, 64, 32), (48, 40, 24), (14, 14, 14)])
def test_other_cube_shapes(shape):
    corrupted, target = genesis_batch(jax.random.key(0), random_cubes(2, shape), FAST)
    assert corrupted.shape == target.shape == (2, *shape)
    assert np.isfinite(np.asarray(corrupted)).all()


def test_too_small_cube_is_refused_clearly():
    with pytest.raises(ValueError, match="every dim >= 14"):
        genesis_batch(jax.random.key(0), random_cubes(1, (13, 32, 32)))


def test_config_is_validated_and_static():
    with pytest.raises(ValueError, match="local_rate"):
        DeformConfig(local_rate=1.5)
    with pytest.raises(ValueError, match="batch_mode"):
        DeformConfig(batch_mode="pmap")
    with pytest.raises(ValueError, match="flip_axes"):
        DeformConfig(flip_axes="z")
    assert hash(DeformConfig()) == hash(DeformConfig())
    assert dataclasses.asdict(DeformConfig())["local_blocks"] == 10_000


def test_map_and_vmap_batch_modes_give_the_same_pairs():
    """CPU runs cubes one at a time with real branches, accelerators vmap with selects:
    both must produce the same arrays for the same key."""
    cubes = random_cubes(6, (32, 32, 20))
    by_map = genesis_batch(jax.random.key(5), cubes, DeformConfig(batch_mode="map"))
    by_vmap = genesis_batch(jax.random.key(5), cubes, DeformConfig(batch_mode="vmap"))
    for a, b in zip(by_map, by_vmap):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_named_deformations_are_the_ones_applied():
    """describe_draws names, per example, exactly what genesis_batch did to it: the flipped
    axes (the target is the cube flipped along them) and whether any stage changed the input."""
    from genesis_jax.deform.pipeline import describe_draws
    cubes = random_cubes(24)
    key = jax.random.key(3)
    corrupted, target = (np.asarray(a) for a in genesis_batch(key, jnp.asarray(cubes), DeformConfig()))
    names = describe_draws(key, 24, DeformConfig())
    assert len(set(names)) > 4  # a mix of draws, so the check below sees each kind
    for cube, inp, tgt, name in zip(cubes, corrupted, target, names):
        flipped = name.split(" + ")[0][5:].split(",") if name.startswith("flip ") else []
        np.testing.assert_array_equal(tgt, np.flip(cube, [("x", "y", "z").index(a) for a in flipped]), err_msg=name)
        stages = [part for part in name.split(" + ") if not part.startswith("flip") and part != "none"]
        assert np.array_equal(inp, tgt) == (not stages), name
    offset = describe_draws(key, 4, DeformConfig(), first_index=20)
    assert offset == names[20:24]
