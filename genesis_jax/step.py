"""The restoration training step: U-Net forward, MSE against the uncorrupted cube, SGD.

The train state is a plain pytree (parameters, BatchNorm statistics, momentum buffers)
split from the NNX model once; the graph definition stays outside jit. The learning
rate is an argument of the step, so schedules that react to validation (plateau,
early stopping) are decided on the host without recompiling. SGD with momentum as in
torch: buf = momentum * buf + grad; param -= lr * buf.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genesis_jax.models import UNet3D


class TrainState(NamedTuple):
    params: nnx.State
    batch_stats: nnx.State
    momentum: optax.OptState


def restoration_mse(restored: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error between a restoration and its target, in float32."""
    return jnp.mean(jnp.square(restored - target.astype(jnp.float32)))


def restoration_loss(model: UNet3D, corrupted: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error between the sigmoid output and the target cube, in float32.

    corrupted, target: (N, X, Y, Z) or (N, X, Y, Z, 1) in [0, 1].
    """
    if corrupted.ndim == 4:
        corrupted, target = corrupted[..., None], target[..., None]
    return restoration_mse(model(corrupted), target)


def momentum_transform(momentum: float = 0.9) -> optax.GradientTransformation:
    return optax.trace(decay=momentum)


def init_train_state(model: UNet3D, momentum: float = 0.9):
    """(graphdef, TrainState) for make_train_step."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, TrainState(params, batch_stats, momentum_transform(momentum).init(params))


def model_from_state(graphdef, state: TrainState) -> UNet3D:
    return nnx.merge(graphdef, state.params, state.batch_stats)


def apply_gradients(graphdef, state: TrainState, corrupted, target, learning_rate, momentum: float = 0.9):
    """One SGD step on (corrupted, target): (new state, loss). Pure; call inside jit."""
    model = model_from_state(graphdef, state)
    model.train()
    loss, grads = nnx.value_and_grad(restoration_loss)(model, corrupted, target)
    trace, momentum_state = momentum_transform(momentum).update(grads, state.momentum)
    params = jax.tree.map(lambda p, t: p - learning_rate * t, state.params, trace)
    return TrainState(params, nnx.state(model, nnx.BatchStat), momentum_state), loss


def make_train_step(graphdef, momentum: float = 0.9):
    """jit(step)(state, corrupted, target, learning_rate) -> (state, loss); the state is donated."""

    def step(state, corrupted, target, learning_rate):
        return apply_gradients(graphdef, state, corrupted, target, learning_rate, momentum)

    return jax.jit(step, donate_argnums=0)
