"""Cubes of C channels (X, Y, Z, C), or images (H, W, C): which key each channel's own draws come from."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def channel_keys(key: jax.Array, n_channels: int) -> list:
    """One key per channel: channel 0 gets `key` itself (so it is corrupted as a one-channel
    cube would be), channel c > 0 gets fold_in(key, c)."""
    return [key] + [jax.random.fold_in(key, c) for c in range(1, n_channels)]


def per_channel(stage, key: jax.Array, x: jax.Array, dims: int = 3) -> jax.Array:
    """stage(key, cube) on every channel of x (dims spatial axes, then C) with
    channel_keys, or on x itself when it has no channel axis. A loop, not vmap: under
    lax.map (CPU) each channel keeps its real branches, and C is a handful."""
    if x.ndim == dims:
        return stage(key, x)
    return jnp.stack([stage(k, x[..., c]) for c, k in enumerate(channel_keys(key, x.shape[-1]))], axis=-1)
