"""Random flips, applied to the input and the target alike (spec step 1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from genesis_jax.deform._random import Stream, randint, seed_from_key, uniform

def choice_axes(flip_axes: str = "original", dims: int = 3) -> tuple:
    """Which spatial axis each flip choice flips. "original": the axes 0, 1, 2 of the
    official (1, *spatial) array, so None (the channel axis, a no-op), then the first two
    spatial axes (in 3D Z is never flipped; in 2D both are). "xyz": each spatial axis."""
    return (None, 0, 1) if flip_axes == "original" else tuple(range(dims))


def flip_choices(key: jax.Array, *, flip_rate: float = 0.4, max_flips: int = 3, n_choices: int = 3) -> jax.Array:
    """The picks of the official flip loop: int32 (max_flips,), -1 where the loop had stopped.

    The loop is "while U < flip_rate and fewer than max_flips flips: pick one of
    n_choices choices", so the number of picks is the count of leading draws below flip_rate.
    """
    seed = seed_from_key(key)
    index = jnp.arange(max_flips)
    goes_on = uniform(seed, Stream.FLIP_CONTINUE, index) < flip_rate
    picked = jnp.cumprod(goes_on.astype(jnp.int32)) == 1
    choice = randint(seed, Stream.FLIP_CHOICE, index, 0, n_choices - 1)
    return jnp.where(picked, choice, -1)


def flip_axes_mask(choices: jax.Array, flip_axes: str = "original", dims: int = 3) -> jax.Array:
    """bool (dims,): whether each spatial axis ends up flipped (flips commute, so only parity counts)."""
    axis_of_choice = choice_axes(flip_axes, dims)
    flipped = []
    for axis in range(dims):
        hits = sum(((choices == c) for c, a in enumerate(axis_of_choice) if a == axis),
                   jnp.zeros(choices.shape, bool))
        flipped.append(jnp.sum(hits) % 2 == 1)
    return jnp.stack(flipped)


def apply_flips(cube: jax.Array, axes_mask: jax.Array) -> jax.Array:
    # lax.cond: skipped when not flipped if this runs per cube (lax.map), a select under vmap.
    for axis in range(axes_mask.shape[0]):
        cube = jax.lax.cond(axes_mask[axis], lambda c, a=axis: jnp.flip(c, a), lambda c: c, cube)
    return cube


def random_flip_mask(key: jax.Array, *, flip_rate: float = 0.4, max_flips: int = 3,
                     flip_axes: str = "original", dims: int = 3) -> jax.Array:
    """bool (dims,): the axes one run of the official flip loop leaves flipped."""
    n_choices = len(choice_axes(flip_axes, dims))
    choices = flip_choices(key, flip_rate=flip_rate, max_flips=max_flips, n_choices=n_choices)
    return flip_axes_mask(choices, flip_axes, dims)


def flip(key: jax.Array, x: jax.Array, y: jax.Array, *, flip_rate: float = 0.4,
         max_flips: int = 3, flip_axes: str = "original", dims: int = 3) -> tuple[jax.Array, jax.Array]:
    """Flip input x and target y (dims spatial axes first) with the same random flips; returns (x, y)."""
    mask = random_flip_mask(key, flip_rate=flip_rate, max_flips=max_flips, flip_axes=flip_axes, dims=dims)
    return apply_flips(x, mask), apply_flips(y, mask)
