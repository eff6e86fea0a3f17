"""Counter-based random numbers for the per-voxel and per-block draws.

One cube needs ~130k noise values and ~70k block parameters. jax.random's threefry
costs ~1 ms per 131k values on a 2-core CPU, more than the whole rest of a deformation,
so the bulk draws come from a counter hash instead: two rounds of the murmur3
finaliser (a bijection on uint32 with full avalanche) keyed by a 64-bit per-cube seed
that is itself drawn with jax.random from the caller's key. For a fixed seed the map
counter -> value is injective, and every (stream, index) pair has its own counter, so
no two draws of one cube are the same hash input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Streams: each kind of draw gets its own counter lane, counter = index * N_STREAMS + stream.
N_STREAMS = 32


def mix32(h: jax.Array) -> jax.Array:
    """murmur3 fmix32: a bijection on uint32 whose output bits each depend on all input bits."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def seed_from_key(key: jax.Array) -> jax.Array:
    """Two uint32 words drawn from a jax.random key: the per-cube hash seed."""
    return jax.random.bits(key, (2,), jnp.uint32)


def hash_u32(seed: jax.Array, stream: int, index: jax.Array) -> jax.Array:
    """Uniform uint32 for (seed, stream, index); index < 2**27."""
    counter = index.astype(jnp.uint32) * jnp.uint32(N_STREAMS) + jnp.uint32(stream)
    return mix32(mix32(counter ^ seed[0]) ^ seed[1])


def uniform(seed: jax.Array, stream: int, index: jax.Array) -> jax.Array:
    """Float32 uniform in [0, 1) with 24 random bits."""
    return (hash_u32(seed, stream, index) >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def randint(seed: jax.Array, stream: int, index: jax.Array, low, high) -> jax.Array:
    """Integer uniform in [low, high] (both inclusive, like Python's random.randint).

    low/high may be arrays broadcasting against index (per-element bounds).
    """
    n = jnp.asarray(high - low + 1, jnp.int32)
    draw = jnp.floor(uniform(seed, stream, index) * n.astype(jnp.float32)).astype(jnp.int32)
    return low + jnp.minimum(draw, n - 1)


# Stream ids. Stages draw from their own keys, so ids only need to be unique within a stage;
# they are unique overall anyway to keep the bookkeeping simple.
class Stream:
    FLIP_CONTINUE = 0
    FLIP_CHOICE = 1
    BLOCK_SIZE_X, BLOCK_SIZE_Y, BLOCK_SIZE_Z = 2, 3, 4
    BLOCK_CORNER_X, BLOCK_CORNER_Y, BLOCK_CORNER_Z = 5, 6, 7
    BLOCK_KEY = 8
    BEZIER = 9
    NOISE = 10
    PAINT_CONTINUE = 11
    PAINT_SIZE_X, PAINT_SIZE_Y, PAINT_SIZE_Z = 12, 13, 14
    PAINT_CORNER_X, PAINT_CORNER_Y, PAINT_CORNER_Z = 15, 16, 17
