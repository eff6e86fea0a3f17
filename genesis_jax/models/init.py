"""Weight initialisers that draw a flat vector and reshape it: the same numbers, cheaper compiles.

JAX's threefry (partitionable, the default since jax 0.5) gives element i of a draw the
same bits whatever the draw's shape, so `draw(key, (n,)).reshape(shape)` equals
`draw(key, shape)` bit for bit (tests/test_models.py checks it for every initialiser
here). Yet XLA:CPU compiles a rank-5 draw slowly: on 2 cores (jax 0.10.2),
`jax.random.normal(key, (3, 3, 3, 8, 16))` took 9.7 s to compile and a (3, 3, 3, 4, 8)
truncated normal 13.8 s, against ~1 s for any rank-1 draw. Building a U-Net eagerly
compiles one draw per distinct kernel shape: 71 programs, 82 s of compiling for the
width-4 U-Net before this module, most of it the conv kernels' truncated normals.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def flat_draw(sampler, key, shape, **kwargs) -> jax.Array:
    """sampler(key, shape=shape, **kwargs) (a jax.random function), drawn as a rank-1
    array and reshaped: the same values."""
    shape = tuple(int(d) for d in shape)
    return sampler(key, shape=(math.prod(shape),), **kwargs).reshape(shape)


def lecun_normal(key, shape, dtype=jnp.float32) -> jax.Array:
    """flax's default kernel initialiser (variance_scaling(1, "fan_in", "truncated_normal"),
    input axis -2, output axis -1), its arithmetic step for step, drawn flat."""
    shape = tuple(int(d) for d in shape)
    receptive_field = math.prod(shape) / shape[-2] / shape[-1]
    variance = jnp.array(1.0 / (shape[-2] * receptive_field), dtype=dtype)
    # the constant is the stddev of a standard normal truncated to (-2, 2)
    stddev = jnp.sqrt(variance) / jnp.array(.87962566103423978, dtype)
    return flat_draw(jax.random.truncated_normal, key, shape, lower=-2, upper=2, dtype=dtype) * stddev


def uniform(key, shape, low: float, high: float, dtype=jnp.float32) -> jax.Array:
    """jax.random.uniform(key, shape, dtype, low, high), drawn flat."""
    return flat_draw(jax.random.uniform, key, shape, dtype=dtype, minval=low, maxval=high)
