"""The train step: loss goes down, state is donated, MSE is the loss, and the optimizer
update inside the jitted step is the torch SGD-momentum rule over several steps."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genesis_jax.models import UNet3D
from genesis_jax.models.init import flat_draw
from genesis_jax.optim import recipe_sgd
from genesis_jax.step import init_train_state, make_model_step
from genesis_jax.tasks import restoration_loss


def test_step_lowers_the_loss_and_donates_its_state():
    tx = recipe_sgd(learning_rate=0.1)
    graphdef, state = init_train_state(UNet3D(width=4, rngs=nnx.Rngs(0)), tx)
    step = make_model_step(graphdef, tx, restoration_loss)
    cubes = flat_draw(jax.random.uniform, jax.random.key(0), (4, 16, 16, 8))
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
    x = flat_draw(jax.random.uniform, jax.random.key(1), (2, 16, 16, 8))
    target = flat_draw(jax.random.uniform, jax.random.key(2), (2, 16, 16, 8))
    restored = model(x[..., None])[..., 0]
    loss, outputs = restoration_loss(model, x, target)
    np.testing.assert_allclose(loss, jnp.mean((restored - target) ** 2), rtol=1e-6)
    np.testing.assert_allclose(outputs, restored, rtol=1e-6)


def test_sgd_momentum_inside_the_step_over_three_steps():
    """buf = 0.9 * buf + grad; p -= lr * buf (torch.optim.SGD), by hand from the
    gradients at each step's parameters, against three jitted steps. From the second
    step on, momentum is what separates the two (checked: plain SGD would differ)."""
    lr, momentum = 0.05, 0.9
    tx = recipe_sgd(learning_rate=lr, momentum=momentum)
    graphdef, state = init_train_state(UNet3D(width=4, rngs=nnx.Rngs(0)), tx)
    step = make_model_step(graphdef, tx, restoration_loss)
    x = flat_draw(jax.random.uniform, jax.random.key(3), (2, 16, 16, 8))

    @jax.jit
    def grads_at(params, stats):
        model = nnx.merge(graphdef, params, stats)
        model.train()
        return nnx.grad(lambda m: restoration_loss(m, x, x)[0])(model)

    params = jax.tree.map(np.asarray, state.params)
    stats = jax.tree.map(np.asarray, state.batch_stats)
    buf = jax.tree.map(np.zeros_like, params)
    for _ in range(3):
        grads = jax.tree.map(np.asarray, grads_at(params, stats))
        buf = jax.tree.map(lambda b, g: momentum * b + g, buf, grads)
        params = jax.tree.map(lambda p, b: p - lr * b, params, buf)
        state, _ = step(state, x, x)
        stats = jax.tree.map(np.asarray, state.batch_stats)
    for ours, expected in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=1e-6)
    # The last update with momentum and without it (lr * grads) differ by far more than the tolerance.
    gap = max(np.abs(lr * (b - g)).max() for b, g in zip(jax.tree.leaves(buf), jax.tree.leaves(grads)))
    assert gap > 100 * 1e-6, "momentum left no trace: the check above could not tell SGD from SGD-momentum"
