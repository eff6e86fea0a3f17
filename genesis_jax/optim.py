"""The optimizer and learning-rate schedule of a run, built from config with optax.

    optimizer.name      sgd (momentum, nesterov; torch.optim.SGD), adam (torch.optim.Adam),
                        adamw (torch.optim.AdamW: decoupled weight decay)
    optimizer.weight_decay   sgd/adam: L2 added to the gradient, as torch does; adamw: decoupled
    optimizer.clip_norm      > 0: clip the gradient's global norm first (torch.nn.utils.clip_grad_norm_)
    optimizer.pretrained_lr_multiplier   fine-tuning: the pre-trained parameters' updates x this
    optimizer.freeze_pretrained_steps    fine-tuning: the pre-trained parameters stay as loaded for
                        the first K steps (their updates are zeroed after the optimizer, so Adam's
                        moments keep tracking their gradients and the first unfrozen step is a
                        normal Adam step, not a cold start; weight decay is zeroed with them)
    schedule.kind       constant; step (x gamma every step_epochs epochs, torch StepLR);
                        cosine (linear warm-up over warmup_epochs, then cosine to
                        final_fraction x the rate at total_steps); plateau (x gamma on
                        the plateau_epochs-th epoch without a better validation loss, as
                        keras ReduceLROnPlateau counts (torch's patience p is plateau_epochs
                        p + 1); better means lower by 1e-4 relative, torch's default)

The learning rate lives in the optimizer state (optax.inject_hyperparams), so it is
checkpointed with it and logged from it. Schedules of the step count run inside the
train step; the plateau rule needs the validation loss, so it runs on the host after
each evaluation (optax.contrib.reduce_on_plateau, fed one value per evaluation) and
writes the new rate into the state.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genesis_jax.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "plateau")


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer fields of a config, frozen (static for optax.inject_hyperparams)."""

    name: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 0.0
    pretrained_lr_multiplier: float = 1.0
    freeze_pretrained_steps: int = 0
    pretrained: tuple = ()           # top-level module names holding pre-trained weights

    @classmethod
    def from_config(cls, optimizer, pretrained=()) -> "OptimizerSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(optimizer).items() if k in fields}, pretrained=tuple(pretrained))


def check_optimizer_config(optimizer, schedule) -> None:
    """UserError naming the field for a value no optimizer or schedule could use."""
    if optimizer.name not in OPTIMIZERS:
        raise UserError(f"optimizer.name must be one of {', '.join(OPTIMIZERS)}, got {optimizer.name!r}")
    if schedule.kind not in SCHEDULES:
        raise UserError(f"schedule.kind must be one of {', '.join(SCHEDULES)}, got {schedule.kind!r}")
    for name in ("learning_rate", "weight_decay", "clip_norm", "momentum", "eps"):
        if optimizer[name] < 0:
            raise UserError(f"optimizer.{name} must be >= 0, got {optimizer[name]}")
    if optimizer.momentum >= 1:
        raise UserError(f"optimizer.momentum must be in [0, 1), got {optimizer.momentum}")
    if optimizer.nesterov and (optimizer.name != "sgd" or optimizer.momentum == 0):
        raise UserError("optimizer.nesterov needs optimizer.name='sgd' with optimizer.momentum > 0")
    for name in ("b1", "b2"):
        if not 0 <= optimizer[name] < 1:
            raise UserError(f"optimizer.{name} must be in [0, 1), got {optimizer[name]}")
    if optimizer.get("pretrained_lr_multiplier", 1.0) < 0 or optimizer.get("freeze_pretrained_steps", 0) < 0:
        raise UserError("optimizer.pretrained_lr_multiplier and optimizer.freeze_pretrained_steps must be >= 0")
    if not 0 < schedule.gamma <= 1:
        raise UserError(f"schedule.gamma must be in (0, 1], got {schedule.gamma}")
    for name in ("step_epochs", "plateau_epochs"):
        if schedule[name] <= 0:
            raise UserError(f"schedule.{name} must be > 0, got {schedule[name]}")
    if schedule.warmup_epochs < 0 or not 0 <= schedule.final_fraction <= 1:
        raise UserError("schedule.warmup_epochs must be >= 0 and schedule.final_fraction in [0, 1]")


def _transform(learning_rate, *, spec: OptimizerSpec) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(spec.clip_norm)] if spec.clip_norm > 0 else []
    if spec.name == "adamw":
        parts.append(optax.adamw(learning_rate, b1=spec.b1, b2=spec.b2, eps=spec.eps, weight_decay=spec.weight_decay))
        return optax.chain(*parts)
    if spec.weight_decay > 0:  # torch SGD/Adam: weight_decay * param joins the gradient
        parts.append(optax.add_decayed_weights(spec.weight_decay))
    if spec.name == "sgd":
        parts.append(optax.sgd(learning_rate, momentum=spec.momentum or None, nesterov=spec.nesterov))
    else:
        parts.append(optax.adam(learning_rate, b1=spec.b1, b2=spec.b2, eps=spec.eps))
    return optax.chain(*parts, *_pretrained_scaling(spec))


class _StepCount(NamedTuple):
    count: jax.Array


def _pretrained_scaling(spec: OptimizerSpec) -> list:
    """[] or one transformation that scales the pre-trained parameters' updates: 0 for the
    first freeze_pretrained_steps updates, pretrained_lr_multiplier after."""
    if not spec.pretrained or (spec.pretrained_lr_multiplier == 1.0 and spec.freeze_pretrained_steps == 0):
        return []

    def is_pretrained(path) -> bool:
        return str(getattr(path[0], "key", path[0])) in spec.pretrained

    def update(updates, state, params=None):
        factor = jnp.where(state.count < spec.freeze_pretrained_steps, 0.0, spec.pretrained_lr_multiplier)
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, u: u * factor.astype(u.dtype) if is_pretrained(path) else u, updates)
        return scaled, _StepCount(optax.safe_increment(state.count))

    return [optax.GradientTransformation(lambda params: _StepCount(jnp.zeros([], jnp.int32)), update)]


def learning_rate_schedule(optimizer, schedule, steps_per_epoch: int, total_steps: int):
    """The rate as a function of the update count (a float for constant and plateau)."""
    lr = float(optimizer.learning_rate)
    if schedule.kind == "step":
        return optax.exponential_decay(lr, transition_steps=int(schedule.step_epochs * steps_per_epoch),
                                       decay_rate=schedule.gamma, staircase=True)
    if schedule.kind == "cosine":
        warmup = int(round(schedule.warmup_epochs * steps_per_epoch))
        return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(total_steps, warmup + 1),
                                                  end_value=lr * schedule.final_fraction)
    return lr


def make_optimizer(optimizer, schedule, steps_per_epoch: int, total_steps: int,
                   pretrained=()) -> optax.GradientTransformation:
    """optax transformation for the config's optimizer and schedule; call update(grads, state, params).
    pretrained: the top-level module names whose weights were loaded (the task's), which
    optimizer.pretrained_lr_multiplier and optimizer.freeze_pretrained_steps act on."""
    check_optimizer_config(optimizer, schedule)
    inner = functools.partial(_transform, spec=OptimizerSpec.from_config(optimizer, pretrained))
    return optax.inject_hyperparams(inner)(
        learning_rate=learning_rate_schedule(optimizer, schedule, steps_per_epoch, total_steps))


def current_learning_rate(opt_state) -> jax.Array:
    """The rate of the last update (before the first: the rate of the first)."""
    return opt_state.hyperparams["learning_rate"]


def with_learning_rate(opt_state, learning_rate: float):
    """opt_state with another rate (constant and plateau schedules), on the old value's devices."""
    old = opt_state.hyperparams["learning_rate"]
    new = jax.device_put(jnp.asarray(learning_rate, old.dtype), old.sharding)
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": new})


class Plateau:
    """The plateau rule on the host: optax.contrib.reduce_on_plateau fed one validation
    loss per evaluation; patience converted from epochs to evaluations."""

    def __init__(self, schedule, steps_per_epoch: int, eval_every: int, state: dict | None = None):
        self.patience = max(1, math.ceil(schedule.plateau_epochs * steps_per_epoch / eval_every))
        self.rule = optax.contrib.reduce_on_plateau(factor=schedule.gamma, patience=self.patience)
        self.state = self.rule.init({})
        if state is not None:
            self.state = type(self.state)(**{k: jnp.asarray(v, getattr(self.state, k).dtype)
                                             for k, v in state.items()})

    def update(self, val_loss: float) -> float:
        """Record one evaluation; the factor to apply to the base rate from now on."""
        _, self.state = self.rule.update({}, self.state, value=jnp.float32(val_loss))
        return float(self.state.scale)

    def to_json(self) -> dict:
        return {k: np.asarray(v).item() for k, v in self.state._asdict().items()}


def recipe_sgd(learning_rate: float = 1.0, momentum: float = 0.9) -> optax.GradientTransformation:
    """The recipe's SGD at a constant rate, built like a config's (benchmarks, tests)."""
    from ml_collections import ConfigDict
    from genesis_jax.configs.base import base_config
    c = base_config()
    optimizer = ConfigDict({**c.optimizer.to_dict(), "learning_rate": learning_rate, "momentum": momentum})
    return make_optimizer(optimizer, ConfigDict({**c.schedule.to_dict(), "kind": "constant"}), 1, 1)
