"""The Models Genesis deformations as pure, jit-able, vmappable JAX functions.

Every function takes one cube (X, Y, Z) float32 in [0, 1] and a jax.random key and
applies its deformation unconditionally; the probabilities live in `genesis_pair`.
"""

from genesis_jax.deform.config import DeformConfig
from genesis_jax.deform.flip import flip
from genesis_jax.deform.intensity import nonlinear_intensity
from genesis_jax.deform.paint import inpaint, outpaint
from genesis_jax.deform.pipeline import (corrupt_examples, example_keys, genesis_batch, genesis_pair,
                                      sharded_genesis_batch)
from genesis_jax.deform.shuffle import local_pixel_shuffle

__all__ = [
    "DeformConfig", "flip", "local_pixel_shuffle", "nonlinear_intensity", "inpaint", "outpaint",
    "genesis_pair", "genesis_batch", "sharded_genesis_batch", "corrupt_examples", "example_keys",
]
