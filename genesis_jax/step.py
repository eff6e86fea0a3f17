"""The jitted train and eval steps, for any task, over the 'data' mesh axis.

The train state is a plain pytree (parameters, BatchNorm statistics, optax state) split
from the NNX model once; the graph definition stays outside jit. A task (tasks/)
says how a batch becomes (inputs, targets) on device and what the loss is; the step
does the rest: value_and_grad, the optax update, the non-finite check.

Shardings: state replicated and donated, batches split over 'data'. The only
collectives are the gradient and BatchNorm all-reduces (tests/test_data_parallel.py
checks the compiled program).
"""

from __future__ import annotations

import collections
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genesis_jax import sharding
from genesis_jax.optim import current_learning_rate


class TrainState(NamedTuple):
    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation):
    """(graphdef, TrainState) for the step factories below."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, TrainState(params, batch_stats, tx.init(params))


def model_from_state(graphdef, state: TrainState) -> nnx.Module:
    return nnx.merge(graphdef, state.params, state.batch_stats)


def apply_gradients(graphdef, tx, state: TrainState, loss_fn, inputs, targets):
    """One optimizer step on loss_fn(model, inputs, targets) -> (loss, outputs):
    (new state, loss). Pure; call inside jit."""
    model = model_from_state(graphdef, state)
    model.train()
    (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, inputs, targets)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, nnx.state(model, nnx.BatchStat), opt_state), loss


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def make_train_step(graphdef, tx, task, root_key, mesh):
    """jit(step)(state, batch, step) -> (state, metrics). The task prepares step s's
    batch on device with fold_in(root, s) (each device only its own rows), then one
    optimizer step; metrics: loss, the learning rate used, whether the parameters
    stayed finite."""

    def step_fn(state, batch, step):
        inputs, targets = task.prepare(jax.random.fold_in(root_key, step), batch, mesh)
        state, loss = apply_gradients(graphdef, tx, state, task.loss, inputs, targets)
        return state, {"loss": loss, "learning_rate": current_learning_rate(state.opt_state),
                       "params_finite": all_finite(state.params)}

    replicated = sharding.replicated(mesh)
    return jax.jit(step_fn, in_shardings=(replicated, sharding.batch_sharded(mesh), None),
                   out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(graphdef, task, key, mesh):
    """jit(eval)(state, batch, first_index) -> (metrics, (inputs, targets, outputs)).

    The batch holds validation examples first_index .. first_index + n - 1, prepared with
    the frozen key (the same inputs at every evaluation). Metrics are batch means; the
    arrays are the ones scored (split over 'data'; the PNG grid takes its rows from
    them)."""

    def eval_fn(state, batch, first_index):
        inputs, targets = task.prepare(key, batch, mesh, first_index)
        model = model_from_state(graphdef, state)
        model.eval()
        loss, outputs = task.loss(model, inputs, targets)
        return {"loss": loss, **task.metrics(outputs, targets)}, (inputs, targets, outputs)

    batched = sharding.batch_sharded(mesh)
    return jax.jit(eval_fn, in_shardings=(sharding.replicated(mesh), batched, None),
                   out_shardings=(sharding.replicated(mesh), batched))


def make_model_step(graphdef, tx, loss_fn):
    """jit(step)(state, inputs, targets) -> (state, loss): the model step alone, no data
    preparation, no mesh (benchmarks/train_step.py compares it with PyTorch's)."""
    return jax.jit(lambda state, inputs, targets: apply_gradients(graphdef, tx, state, loss_fn, inputs, targets),
                   donate_argnums=0)


class RecentSteps:
    """The jitted steps of this process's last few runs, by what their programs depend on.

    jax.jit caches compiled programs per function object, and every run builds new step
    functions: without this, a second run of the same config in one process traces,
    lowers and loads from the persistent cache again what the first one compiled (the
    transfer experiment's runs, a sweep in a notebook, the test suite). The key must hold
    everything the traced programs read (trainer.program_key); the values close over the
    first run's task and optimizer, so only a few are kept.
    """

    def __init__(self, kept: int = 4):
        self.kept, self.steps = kept, collections.OrderedDict()

    def get(self, key, build: Callable[[], tuple]) -> tuple:
        if key in self.steps:
            self.steps.move_to_end(key)
        else:
            self.steps[key] = build()
            while len(self.steps) > self.kept:
                self.steps.popitem(last=False)
        return self.steps[key]


RECENT_STEPS = RecentSteps()
