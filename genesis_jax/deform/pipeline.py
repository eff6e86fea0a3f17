"""The per-cube Genesis pipeline and its batched, jit-compiled form."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from genesis_jax.deform.channels import channel_keys, per_channel
from genesis_jax.deform.config import DeformConfig
from genesis_jax.deform.flip import apply_flips, random_flip_mask
from genesis_jax.deform.intensity import nonlinear_intensity
from genesis_jax.deform.paint import check_paint_shape, inpaint, outpaint
from genesis_jax.deform.shuffle import local_pixel_shuffle


def draws(key: jax.Array, cfg: DeformConfig):
    """What one cube's key decides: (stage keys (shuffle, intensity, paint), flipped axes
    bool (cfg.dims,), stages drawn bool (4,): shuffle, intensity, paint, in-paint rather than
    out-paint). genesis_pair applies them; describe_draws names them."""
    k_flip, k_shuffle, k_intensity, k_paint, k_stage = jax.random.split(key, 5)
    drawn = jax.random.uniform(k_stage, (4,)) < jnp.array([cfg.local_rate, cfg.nonlinear_rate, cfg.paint_rate,
                                                           cfg.inpaint_rate])
    flips = random_flip_mask(k_flip, flip_rate=cfg.flip_rate, max_flips=cfg.max_flips, flip_axes=cfg.flip_axes,
                             dims=cfg.dims)
    return (k_shuffle, k_intensity, k_paint), flips, drawn


def describe_draws(key: jax.Array, n: int, cfg: DeformConfig, first_index: int = 0) -> list[str]:
    """Examples first_index .. first_index + n - 1 of a batch prepared with key: what was
    done to each, e.g. 'flip x,z + shuffle + in-paint' or 'none' (picture labels); with
    deform.channels "independent", what was done to channel 0."""
    import numpy as np
    flips, drawn = _drawn(key, cfg, n, first_index)
    names = []
    for flipped, (shuffled, intensity, painted, inside) in zip(np.asarray(flips), np.asarray(drawn)):
        parts = [f"flip {','.join(a for a, f in zip('xyz', flipped) if f)}"] if flipped.any() else []
        parts += [name for name, on in (("shuffle", shuffled), ("intensity", intensity),
                                        ("in-paint" if inside else "out-paint", painted)) if on]
        names.append(" + ".join(parts) or "none")
    return names


@functools.partial(jax.jit, static_argnames=("cfg", "n"))
def _drawn(key, cfg: DeformConfig, n: int, first_index):
    """(flipped axes (n, cfg.dims), stages drawn (n, 4)) of examples first_index .. + n - 1: one
    compiled program, not an eager op per primitive."""
    return jax.vmap(lambda k: draws(k, cfg)[1:])(example_keys(key, n, first_index))


def genesis_pair(key: jax.Array, cube: jax.Array, cfg: DeformConfig = DeformConfig()):
    """(corrupted, target) for one cube (X, Y, Z) or (X, Y, Z, C) in [0, 1], or with
    cfg.dims = 2 one image (H, W) or (H, W, C), in the spec's order.

    flip (input and target) -> local shuffle (p=local_rate) -> Bezier intensity
    (p=nonlinear_rate) -> painting (p=paint_rate; in-paint with p=inpaint_rate, else
    out-paint). C channels: cfg.channels says which draws they share (DeformConfig).
    """
    if cube.ndim == cfg.dims + 1 and cfg.channels == "independent":
        pairs = [genesis_pair(k, cube[..., c], cfg) for c, k in enumerate(channel_keys(key, cube.shape[-1]))]
        return tuple(jnp.stack(side, axis=-1) for side in zip(*pairs))
    check_paint_shape(cube.shape[:cfg.dims], cfg.dims)
    (k_shuffle, k_intensity, k_paint), flips, drawn = draws(key, cfg)
    use_shuffle, use_intensity, use_paint, use_inpaint = drawn

    # Input and target are the same flipped cube: flip once.
    target = apply_flips(cube, flips)
    x = target
    in_paint = functools.partial(inpaint, max_boxes=cfg.inpaint_max_boxes, continue_rate=cfg.paint_continue_rate,
                                 dims=cfg.dims)
    out_paint = functools.partial(outpaint, max_windows=cfg.outpaint_max_windows,
                                  continue_rate=cfg.paint_continue_rate, dims=cfg.dims)
    intensity = functools.partial(nonlinear_intensity, table_size=cfg.bezier_table_size, lookups=cfg.lookups)
    # lax.cond: a real branch when this runs per cube (lax.map), a select under vmap.
    x = lax.cond(use_shuffle, lambda v: local_pixel_shuffle(k_shuffle, v, n_blocks=cfg.local_blocks,
                                                            rounds=cfg.shuffle_rounds, lookups=cfg.lookups,
                                                            dims=cfg.dims), lambda v: v, x)
    x = lax.cond(use_intensity, lambda v: per_channel(intensity, k_intensity, v, cfg.dims), lambda v: v, x)
    x = lax.cond(use_paint, lambda v: lax.cond(use_inpaint, in_paint, out_paint, k_paint, v),
                 lambda v: v, x)
    return x, target


def example_keys(key: jax.Array, n: int, first_index=0) -> jax.Array:
    """Per-example keys fold_in(key, first_index + i): example i's key never depends on n,
    on where the batch was cut, or on devices."""
    return jax.vmap(lambda i: jax.random.fold_in(key, first_index + i))(jnp.arange(n))


def corrupt_examples(key: jax.Array, cubes: jax.Array, cfg: DeformConfig, first_index=0):
    """(corrupted, target) of cubes (n, X, Y, Z) or (n, X, Y, Z, C) that are examples first_index ..
    first_index + n - 1 of a batch. Not jitted: the building block of genesis_batch and
    of sharded_genesis_batch, where each device passes its own first index."""
    keys = example_keys(key, cubes.shape[0], first_index)
    if _batch_mode(cfg) == "map":
        return lax.map(lambda kc: genesis_pair(kc[0], kc[1], cfg), (keys, cubes))
    return jax.vmap(genesis_pair, in_axes=(0, 0, None))(keys, cubes, cfg)


@functools.partial(jax.jit, static_argnames=("cfg",))
def genesis_batch(key: jax.Array, cubes: jax.Array, cfg: DeformConfig = DeformConfig()):
    """(corrupted, target), each shaped like cubes: (N, X, Y, Z) or (N, X, Y, Z, C), on one device.

    Example i is corrupted with fold_in(key, i): the result depends only on (key, i).
    A batch split over devices goes through `sharded_genesis_batch` instead: given a
    sharded batch, this function's per-example loop makes XLA gather the whole batch
    onto every device.

    On accelerators the batch is vmapped (stages not drawn for a cube are computed and
    discarded by a select). On CPU, where the 2 to 64 cores gain nothing from a wider
    batch, cubes go one at a time through lax.map, and a stage that is not drawn is
    skipped by a real branch: half the cubes skip the costly local shuffle.
    """
    return corrupt_examples(key, cubes, cfg)


def sharded_genesis_batch(key: jax.Array, cubes: jax.Array, cfg: DeformConfig, mesh: Mesh, axis: str = "data",
                          first_index=0):
    """genesis_batch for a batch split over `axis` of `mesh`: each device corrupts only
    its own rows, with their global example indices, so the arrays equal genesis_batch's
    bitwise and the work is 1/n per device.

    Why shard_map: the SPMD partitioner cannot split the per-example loop (lax.map, the
    CPU path) along the batch, and for TPU it did not split the vmapped per-voxel gathers
    either; it all-gathers the batch instead and everything after runs replicated.
    Inside shard_map every op sees only the local rows, whatever the backend. Usable inside jit (the train
    step) or on its own; cubes' first dim must divide by the axis size. first_index: the
    index of the batch's first example (validation batches after the first).
    """
    n_shards = mesh.shape[axis]
    if cubes.shape[0] % n_shards:
        raise ValueError(f"a batch of {cubes.shape[0]} cubes does not split over {n_shards} devices")

    def local(key, local_cubes, first_index):
        return corrupt_examples(key, local_cubes, cfg, first_index + lax.axis_index(axis) * local_cubes.shape[0])

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P()), out_specs=(P(axis), P(axis)))(
        key, cubes, jnp.asarray(first_index, jnp.int32))


def _batch_mode(cfg: DeformConfig) -> str:
    if cfg.batch_mode != "auto":
        return cfg.batch_mode
    return "map" if jax.default_backend() == "cpu" else "vmap"


__all__ = ["genesis_pair", "genesis_batch", "sharded_genesis_batch", "corrupt_examples", "example_keys"]
