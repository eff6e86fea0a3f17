"""In-painting and out-painting (spec step 4).

In-paint: while U < 0.95 (at most 5 times) a box of U[0, 1) noise is painted in; box
size per axis uniform in [dim // 6, dim // 3], corner in [3, dim - size - 3].
Out-paint: the whole cube becomes U[0, 1) noise, then one window and, while U < 0.95,
up to 4 more are restored from the cube; window size per axis is dim minus a uniform
integer in [3 * dim // 7, 4 * dim // 7], corner in [3, dim - size - 3].

The rules are per axis, so they hold as written for 2D images (H, W): boxes become
rectangles, sized by the same fractions of each side.

All boxes are drawn at once and combined as a union of masks. Overlapping in-paint
boxes are painted twice in the original; the noise is i.i.d. either way, so one noise
field covers all boxes with the same distribution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from genesis_jax.deform.channels import per_channel
from genesis_jax.deform._random import Stream, randint, seed_from_key, uniform

_MARGIN = 3
_SIZE_STREAMS = (Stream.PAINT_SIZE_X, Stream.PAINT_SIZE_Y, Stream.PAINT_SIZE_Z)
_CORNER_STREAMS = (Stream.PAINT_CORNER_X, Stream.PAINT_CORNER_Y, Stream.PAINT_CORNER_Z)


def check_paint_shape(shape, dims: int = 3) -> None:
    """Painting needs room for its 3-voxel margins: every dim >= 14 (out-paint is the tightest)."""
    what = "3D cube" if dims == 3 else "2D image"
    if len(shape) != dims or min(shape) < 14:
        raise ValueError(f"Genesis deformations need a {what} with every dim >= 14, got shape {tuple(shape)}")


def inpaint_size_range(dim: int) -> tuple[int, int]:
    return dim // 6, dim // 3


def outpaint_size_range(dim: int) -> tuple[int, int]:
    return dim - 4 * dim // 7, dim - 3 * dim // 7


def paint_boxes(key: jax.Array, shape, size_ranges, max_boxes: int, first_always: bool,
                continue_rate: float = 0.95):
    """Random boxes: (active bool (max_boxes,), corner int32 (max_boxes, D), size int32 (max_boxes, D)),
    D = len(shape).

    Box k is active when the continuation draws 0..k all passed (draw 0 is skipped when
    first_always, as for the out-paint window that is always restored).
    """
    seed = seed_from_key(key)
    index = jnp.arange(max_boxes)
    goes_on = uniform(seed, Stream.PAINT_CONTINUE, index) < continue_rate
    if first_always:
        goes_on = goes_on.at[0].set(True)
    active = jnp.cumprod(goes_on.astype(jnp.int32)) == 1
    size = jnp.stack([randint(seed, s, index, lo, hi) for s, (lo, hi) in zip(_SIZE_STREAMS, size_ranges)], -1)
    corner = jnp.stack([
        randint(seed, s, index, _MARGIN, dim - size[:, axis] - _MARGIN)
        for axis, (s, dim) in enumerate(zip(_CORNER_STREAMS, shape))
    ], -1)
    return active, corner, size


def boxes_mask(active, corner, size, shape) -> jax.Array:
    """bool shape ((X, Y, Z) or (H, W)): union of the active boxes."""
    in_box = active.reshape((-1,) + (1,) * len(shape))
    for axis, dim in enumerate(shape):
        coord = jnp.arange(dim)[None, :]
        inside = (coord >= corner[:, axis, None]) & (coord < corner[:, axis, None] + size[:, axis, None])
        # box axis, then this spatial axis in its place among len(shape) axes
        in_box = in_box & inside.reshape((-1,) + tuple(dim if a == axis else 1 for a in range(len(shape))))
    return jnp.any(in_box, axis=0)


def inpaint_mask(key, shape, *, max_boxes: int = 5, continue_rate: float = 0.95) -> jax.Array:
    check_paint_shape(shape, len(shape))
    boxes = paint_boxes(key, shape, [inpaint_size_range(d) for d in shape], max_boxes, False, continue_rate)
    return boxes_mask(*boxes, shape)


def outpaint_mask(key, shape, *, max_windows: int = 5, continue_rate: float = 0.95) -> jax.Array:
    """bool shape: voxels restored from the cube (True) versus left as noise."""
    check_paint_shape(shape, len(shape))
    boxes = paint_boxes(key, shape, [outpaint_size_range(d) for d in shape], max_windows, True, continue_rate)
    return boxes_mask(*boxes, shape)


def noise_like(key: jax.Array, x: jax.Array, dims: int = 3) -> jax.Array:
    """U[0, 1) noise of x's shape and dtype; for x with channels (X, Y, Z, C) or (H, W, C)
    each channel's from its own key (channels.channel_keys), so channel 0 gets what a
    one-channel cube gets."""
    def one_channel(key, cube):
        seed = seed_from_key(jax.random.fold_in(key, Stream.NOISE))
        return uniform(seed, Stream.NOISE, jnp.arange(cube.size)).reshape(cube.shape).astype(cube.dtype)
    return per_channel(one_channel, key, x, dims)


def inpaint(key: jax.Array, x: jax.Array, *, max_boxes: int = 5, continue_rate: float = 0.95,
            dims: int = 3) -> jax.Array:
    """Fill 0..max_boxes random boxes of x (dims spatial axes, then C if any) with uniform
    noise (the same boxes in every channel)."""
    mask = _spatial(inpaint_mask(key, x.shape[:dims], max_boxes=max_boxes, continue_rate=continue_rate), x)
    return jnp.where(mask, noise_like(key, x, dims), x)


def outpaint(key: jax.Array, x: jax.Array, *, max_windows: int = 5, continue_rate: float = 0.95,
             dims: int = 3) -> jax.Array:
    """Replace x (dims spatial axes, then C if any) by noise except 1..max_windows random
    windows (the same windows in every channel)."""
    mask = _spatial(outpaint_mask(key, x.shape[:dims], max_windows=max_windows, continue_rate=continue_rate), x)
    return jnp.where(mask, x, noise_like(key, x, dims))


def _spatial(mask: jax.Array, x: jax.Array) -> jax.Array:
    """A spatial mask shaped to broadcast against x's channels, if it has any."""
    return mask if x.ndim == mask.ndim else mask[..., None]
