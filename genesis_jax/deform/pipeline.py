"""The per-cube Genesis pipeline and its batched, jit-compiled form."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from genesis_jax.deform.config import DeformConfig
from genesis_jax.deform.flip import apply_flips, random_flip_mask
from genesis_jax.deform.intensity import nonlinear_intensity
from genesis_jax.deform.paint import check_paint_shape, inpaint, outpaint
from genesis_jax.deform.shuffle import local_pixel_shuffle


def genesis_pair(key: jax.Array, cube: jax.Array, cfg: DeformConfig = DeformConfig()):
    """(corrupted, target) for one cube (X, Y, Z) in [0, 1], in the spec's order.

    flip (input and target) -> local shuffle (p=local_rate) -> Bezier intensity
    (p=nonlinear_rate) -> painting (p=paint_rate; in-paint with p=inpaint_rate, else
    out-paint).
    """
    check_paint_shape(cube.shape)
    k_flip, k_shuffle, k_intensity, k_paint, k_stage = jax.random.split(key, 5)
    use_shuffle, use_intensity, use_paint, use_inpaint = (
        jax.random.uniform(k_stage, (4,)) < jnp.array([cfg.local_rate, cfg.nonlinear_rate, cfg.paint_rate, cfg.inpaint_rate]))

    # Input and target are the same flipped cube: flip once.
    target = apply_flips(cube, random_flip_mask(k_flip, flip_rate=cfg.flip_rate, max_flips=cfg.max_flips,
                                                flip_axes=cfg.flip_axes))
    x = target
    in_paint = functools.partial(inpaint, max_boxes=cfg.inpaint_max_boxes, continue_rate=cfg.paint_continue_rate)
    out_paint = functools.partial(outpaint, max_windows=cfg.outpaint_max_windows, continue_rate=cfg.paint_continue_rate)
    # lax.cond: a real branch when this runs per cube (lax.map), a select under vmap.
    x = lax.cond(use_shuffle, lambda v: local_pixel_shuffle(k_shuffle, v, n_blocks=cfg.local_blocks,
                                                            rounds=cfg.shuffle_rounds), lambda v: v, x)
    x = lax.cond(use_intensity, lambda v: nonlinear_intensity(k_intensity, v, table_size=cfg.bezier_table_size),
                 lambda v: v, x)
    x = lax.cond(use_paint, lambda v: lax.cond(use_inpaint, in_paint, out_paint, k_paint, v),
                 lambda v: v, x)
    return x, target


def example_keys(key: jax.Array, n: int) -> jax.Array:
    """Per-example keys fold_in(key, i): example i's key never depends on n or devices."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


@functools.partial(jax.jit, static_argnames=("cfg",))
def genesis_batch(key: jax.Array, cubes: jax.Array, cfg: DeformConfig = DeformConfig()):
    """(corrupted, target), each (N, X, Y, Z), for cubes (N, X, Y, Z).

    Example i is corrupted with fold_in(key, i): the result depends only on (key, i),
    so a batch sharded over any number of devices gives the same arrays.

    On accelerators the batch is vmapped (stages not drawn for a cube are computed and
    discarded by a select). On CPU, where the 2 to 64 cores gain nothing from a wider
    batch, cubes go one at a time through lax.map, and a stage that is not drawn is
    skipped by a real branch: half the cubes skip the costly local shuffle.
    """
    keys = example_keys(key, cubes.shape[0])
    if _batch_mode(cfg) == "map":
        return lax.map(lambda kc: genesis_pair(kc[0], kc[1], cfg), (keys, cubes))
    return jax.vmap(genesis_pair, in_axes=(0, 0, None))(keys, cubes, cfg)


def _batch_mode(cfg: DeformConfig) -> str:
    if cfg.batch_mode != "auto":
        return cfg.batch_mode
    return "map" if jax.default_backend() == "cpu" else "vmap"


__all__ = ["genesis_pair", "genesis_batch", "example_keys"]
