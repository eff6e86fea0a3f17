"""The restoration training step: U-Net forward, MSE against the uncorrupted cube, SGD.

Functional NNX: the (model, optimizer) state is split outside jit, merged inside, and
returned split again, so the step is a pure function of (state, batch) whose state
buffers are donated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genesis_jax.models import UNet3D


def sgd(learning_rate=1.0, momentum: float = 0.9) -> optax.GradientTransformation:
    """The official recipe: SGD, lr 1.0, momentum 0.9, no weight decay."""
    return optax.sgd(learning_rate, momentum=momentum)


def restoration_loss(model: UNet3D, corrupted: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error between the sigmoid output and the target cube, in float32.

    corrupted, target: (N, X, Y, Z) or (N, X, Y, Z, 1) in [0, 1].
    """
    if corrupted.ndim == 4:
        corrupted, target = corrupted[..., None], target[..., None]
    return jnp.mean(jnp.square(model(corrupted) - target.astype(jnp.float32)))


def init_train_state(model: UNet3D, tx: optax.GradientTransformation):
    """(graphdef, state) of (model, optimizer), for make_train_step."""
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    return nnx.split((model, optimizer))


def make_train_step(graphdef):
    """jit(step)(state, corrupted, target) -> (state, loss); the input state is donated."""

    def step(state, corrupted, target):
        model, optimizer = nnx.merge(graphdef, state)
        model.train()
        loss, grads = nnx.value_and_grad(restoration_loss)(model, corrupted, target)
        optimizer.update(model, grads)
        return nnx.split((model, optimizer))[1], loss

    return jax.jit(step, donate_argnums=0)
