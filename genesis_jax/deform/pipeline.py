"""The per-cube Genesis pipeline and its batched, jit-compiled form."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from genesis_jax.deform.config import DeformConfig
from genesis_jax.deform.flip import flip
from genesis_jax.deform.intensity import nonlinear_intensity
from genesis_jax.deform.paint import check_paint_shape, inpaint_mask, noise_like, outpaint_mask
from genesis_jax.deform.shuffle import local_pixel_shuffle


def genesis_pair(key: jax.Array, cube: jax.Array, cfg: DeformConfig = DeformConfig()):
    """(corrupted, target) for one cube (X, Y, Z) in [0, 1], in the spec's order.

    flip (input and target) -> local shuffle (p=local_rate) -> Bezier intensity
    (p=nonlinear_rate) -> painting (p=paint_rate; in-paint with p=inpaint_rate, else
    out-paint). Stages not drawn are computed and discarded (a select): under vmap
    there is no cheaper branch.
    """
    check_paint_shape(cube.shape)
    k_flip, k_shuffle, k_intensity, k_paint, k_stage = jax.random.split(key, 5)
    use_shuffle, use_intensity, use_paint, use_inpaint = (
        jax.random.uniform(k_stage, (4,)) < jnp.array([cfg.local_rate, cfg.nonlinear_rate, cfg.paint_rate, cfg.inpaint_rate]))

    x, target = flip(k_flip, cube, cube, flip_rate=cfg.flip_rate, max_flips=cfg.max_flips, flip_axes=cfg.flip_axes)
    x = jnp.where(use_shuffle, local_pixel_shuffle(k_shuffle, x, n_blocks=cfg.local_blocks,
                                                   rounds=cfg.shuffle_rounds), x)
    x = jnp.where(use_intensity, nonlinear_intensity(k_intensity, x, table_size=cfg.bezier_table_size), x)

    # In- and out-painting share one noise field: only one of them is applied.
    k_in, k_out = jax.random.split(k_paint)
    noise = noise_like(k_paint, x)
    painted = jnp.where(
        use_inpaint,
        jnp.where(inpaint_mask(k_in, x.shape, max_boxes=cfg.inpaint_max_boxes,
                               continue_rate=cfg.paint_continue_rate), noise, x),
        jnp.where(outpaint_mask(k_out, x.shape, max_windows=cfg.outpaint_max_windows,
                                continue_rate=cfg.paint_continue_rate), x, noise))
    return jnp.where(use_paint, painted, x), target


def example_keys(key: jax.Array, n: int, offset: int | jax.Array = 0) -> jax.Array:
    """Per-example keys fold_in(key, offset + i): example i's key never depends on n or devices."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(n))


@functools.partial(jax.jit, static_argnames=("cfg",))
def genesis_batch(key: jax.Array, cubes: jax.Array, cfg: DeformConfig = DeformConfig()):
    """(corrupted, target), each (N, X, Y, Z), for cubes (N, X, Y, Z).

    Example i is corrupted with fold_in(key, i): the result depends only on (key, i),
    so a batch sharded over any number of devices gives the same arrays.
    """
    return jax.vmap(genesis_pair, in_axes=(0, 0, None))(example_keys(key, cubes.shape[0]), cubes, cfg)


__all__ = ["genesis_pair", "genesis_batch", "example_keys"]
