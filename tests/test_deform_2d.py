"""Models Genesis 2D: the same deformation code on images (H, W), DeformConfig(dims=2),
against the spec's per-side rules and a 2D run of the NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scipy_stats
from stats import P_MIN, assert_counts_match, assert_rate

from genesis_jax.deform import DeformConfig, genesis_batch, genesis_pair, inpaint, local_pixel_shuffle, outpaint
from genesis_jax.deform.flip import random_flip_mask
from genesis_jax.deform.paint import inpaint_size_range, outpaint_size_range, paint_boxes
from genesis_jax.deform.pipeline import describe_draws
from genesis_jax.deform.shuffle import block_permutation, block_plan, blocks_for_shape
from genesis_jax.reference.numpy_genesis import ReferencePipeline

IMAGE = (64, 48)
TWO_D = DeformConfig(dims=2, local_blocks=blocks_for_shape(IMAGE))


def images(n, shape=IMAGE, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random((n, *shape), dtype=np.float32))


def many_keys(seed, n):
    return jax.random.split(jax.random.key(seed), n)


def test_block_count_rule_keeps_the_official_coverage():
    """blocks_for_shape: 10,000 for the official 64x64x32 cube, and for an image as many
    blocks as cover each pixel 1.87 times on average, as the official blocks cover a voxel."""
    assert blocks_for_shape((64, 64, 32)) == 10_000
    assert blocks_for_shape((128, 128)) == 725
    coverage = 725 * 6.5 * 6.5 / 128 ** 2
    assert abs(coverage - 10_000 * 3.5 * 3.5 * 2 / (64 * 64 * 32)) < 0.01


@pytest.mark.parametrize("flip_axes,identity", [
    # original: picks uniform over a no-op, H, W (as in 3D, where Z is never picked)
    ("original", 0.6 + 0.24 / 3 + 0.096 / 3 + 0.064 * 7 / 27),
    # xyz: picks uniform over H, W; identity needs an even count of each: two equal picks
    ("xyz", 0.6 + 0.096 / 2)])
def test_flips_of_images_pick_the_two_axes(flip_axes, identity):
    """20,000 draws: the share of flips that cancel (4 sigma), and both axes flipped, each
    about as often as the other."""
    masks = np.asarray(jax.vmap(lambda k: random_flip_mask(k, flip_axes=flip_axes, dims=2))(many_keys(1, 20_000)))
    assert masks.shape == (20_000, 2)
    assert_rate(int((~masks.any(axis=1)).sum()), len(masks), identity, f"{flip_axes} identity flips")
    assert_counts_match(masks.sum(axis=0), [1, 1], f"{flip_axes} flips of H and W")


def loop_shuffle_2d(image, corner, size, block_key):
    """The spec in 2D: rectangles in order, read from the unshuffled image, permuted, written.
    (Each block's permutation of its slots is evaluated up front, all blocks in one call.)"""
    out = image.copy()
    n_max = int(np.prod(size, axis=1).max())
    perms = np.asarray(jax.jit(jax.vmap(lambda k, n: block_permutation(k, jnp.arange(n_max), n)))(
        jnp.asarray(block_key), jnp.asarray(np.prod(size, axis=1), jnp.int32)))
    for (cx, cy), (sx, sy), perm in zip(corner, size, perms):
        box = (slice(cx, cx + sx), slice(cy, cy + sy))
        window = image[box].flatten(order="F")  # slot = lx + sx * ly
        out[box] = window[perm[:sx * sy]].reshape((sx, sy), order="F")
    return out


def test_image_shuffle_equals_the_rectangle_loop_and_draws_sides_up_to_a_tenth():
    image = np.random.default_rng(0).random(IMAGE, dtype=np.float32)
    key = jax.random.key(4)
    corner, size, block_key = (np.asarray(a) for a in block_plan(key, IMAGE + (1,), 200))
    assert (size[:, 2] == 1).all() and (corner[:, 2] == 0).all()  # the cube (H, W, 1) is the image
    expected = loop_shuffle_2d(image, corner[:, :2], size[:, :2], block_key)
    got = np.asarray(local_pixel_shuffle(key, jnp.asarray(image), n_blocks=200, dims=2))
    np.testing.assert_array_equal(got, expected)
    _, size, _ = (np.asarray(a) for a in block_plan(jax.random.key(5), IMAGE + (1,), 10_000))
    for axis, side in enumerate(IMAGE):
        assert_counts_match(np.bincount(size[:, axis] - 1), np.ones(side // 10), f"block side {axis}")


def test_image_shuffle_changes_the_share_of_pixels_the_reference_does():
    """20 images each; the shares agree within 0.01 (their image-to-image spread is ~0.003)."""
    batch = np.asarray(images(20, seed=3))
    reference = ReferencePipeline(seed=3, local_blocks=TWO_D.local_blocks)
    ref_share = np.mean([(reference.local_pixel_shuffle(c) != c).mean() for c in batch])
    shuffle = jax.jit(jax.vmap(lambda k, c: local_pixel_shuffle(k, c, n_blocks=TWO_D.local_blocks, dims=2)))
    ours = np.asarray(shuffle(many_keys(3, len(batch)), jnp.asarray(batch)))
    assert abs((ours != batch).mean() - ref_share) < 0.01, ((ours != batch).mean(), ref_share)


@pytest.mark.parametrize("paint", ["in", "out"])
def test_paint_rectangles_follow_the_per_side_rules(paint):
    """20,000 draws of rectangles: sizes uniform on each side's range (in: side // 6 ..
    side // 3; out: side - 4 side // 7 .. side - 3 side // 7), corners within the 3-pixel margins."""
    size_range = inpaint_size_range if paint == "in" else outpaint_size_range
    ranges = [size_range(d) for d in IMAGE]
    active, corner, size = (np.asarray(a) for a in jax.vmap(
        lambda k: paint_boxes(k, IMAGE, ranges, 5, paint == "out"))(many_keys(6, 20_000)))
    assert corner.shape[-1] == size.shape[-1] == 2
    for axis, (lo, hi) in enumerate(ranges):
        sides = size[..., axis].ravel()
        assert_counts_match(np.bincount(sides - lo, minlength=hi - lo + 1), np.ones(hi - lo + 1), f"side {axis}")
        assert (corner[..., axis] >= 3).all() and (corner[..., axis] + size[..., axis] <= IMAGE[axis] - 3).all()


def test_painting_an_image_touches_only_its_rectangles():
    image = jnp.full(IMAGE, 0.123, jnp.float32)
    for seed in range(5):
        painted = np.asarray(inpaint(jax.random.key(seed), image, dims=2)) != np.float32(0.123)
        if painted.any():
            rows, cols = np.nonzero(painted)
            assert rows.min() >= 3 and cols.min() >= 3 and rows.max() < IMAGE[0] - 3 and cols.max() < IMAGE[1] - 3
        kept = np.asarray(outpaint(jax.random.key(seed), image, dims=2)) == np.float32(0.123)
        assert not kept[:3].any() and not kept[:, :3].any() and 0.05 < kept.mean() < 0.9


def test_the_image_pipeline_matches_the_reference_in_distribution():
    """400 images each through the whole pipeline: the share left uncorrupted, and the
    distributions of each corrupted image's mean and of its share of changed pixels
    (two-sample Kolmogorov-Smirnov, p > 1e-4)."""
    n = 400
    batch = images(n, seed=7)
    corrupted, target = (np.asarray(a) for a in genesis_batch(jax.random.key(7), batch, TWO_D))
    reference = ReferencePipeline(seed=7, local_blocks=TWO_D.local_blocks)
    ref = [reference.pair(c) for c in np.asarray(batch)]
    ref_corrupted, ref_target = np.stack([p[0] for p in ref]), np.stack([p[1] for p in ref])
    for name, ours, theirs in (
            ("mean", corrupted.mean(axis=(1, 2)), ref_corrupted.mean(axis=(1, 2))),
            ("changed share", (corrupted != target).mean(axis=(1, 2)), (ref_corrupted != ref_target).mean(axis=(1, 2)))):
        p = scipy_stats.ks_2samp(ours, theirs).pvalue
        assert p > P_MIN, f"{name}: KS p={p:.2e} (ours median {np.median(ours):.3f}, reference {np.median(theirs):.3f})"


def test_images_with_channels_share_geometry_and_channel_zero_is_the_one_channel_image():
    batch = images(2, IMAGE + (3,), seed=8)
    key = jax.random.key(8)
    corrupted, target = genesis_batch(key, batch, TWO_D)
    alone, alone_target = genesis_batch(key, batch[..., 0], TWO_D)
    np.testing.assert_array_equal(np.asarray(corrupted[..., 0]), np.asarray(alone))
    np.testing.assert_array_equal(np.asarray(target[..., 0]), np.asarray(alone_target))
    assert len(describe_draws(key, 2, TWO_D)) == 2


def test_an_image_too_small_to_paint_is_refused_naming_the_shape():
    with pytest.raises(ValueError, match=r"2D image with every dim >= 14, got shape \(12, 64\)"):
        genesis_pair(jax.random.key(0), jnp.zeros((12, 64)), TWO_D)
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        DeformConfig(dims=4)
