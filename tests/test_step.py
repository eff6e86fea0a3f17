"""The restoration train step: loss goes down, state is donated, MSE is the loss."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genesis_jax.models import UNet3D
from genesis_jax.step import init_train_state, make_train_step, restoration_loss, sgd


def test_step_lowers_the_loss_and_donates_its_state():
    model = UNet3D(width=4, rngs=nnx.Rngs(0))
    graphdef, state = init_train_state(model, sgd(0.1))
    step = make_train_step(graphdef)
    cubes = jax.random.uniform(jax.random.key(0), (4, 16, 16, 8))
    first_leaf = jax.tree.leaves(state)[0]
    losses = []
    for _ in range(6):
        state, loss = step(state, cubes, cubes)
        losses.append(float(loss))
    assert first_leaf.is_deleted(), "the step should donate the incoming state"
    assert losses[-1] < losses[0], losses
    assert all(np.isfinite(losses))


def test_restoration_loss_is_mse_of_the_sigmoid_output():
    model = UNet3D(width=4, rngs=nnx.Rngs(0))
    model.eval()
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 8))
    target = jax.random.uniform(jax.random.key(2), (2, 16, 16, 8))
    expected = jnp.mean((model(x[..., None])[..., 0] - target) ** 2)
    np.testing.assert_allclose(restoration_loss(model, x, target), expected, rtol=1e-6)
