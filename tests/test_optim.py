"""Optimizers and schedules built from config (genesis_jax/optim.py) against torch.optim,
over several steps on a loss whose gradient depends on the parameters (so momentum,
the Adam moments, weight decay and clipping all change the trajectory)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from genesis_jax.configs.base import base_config
from genesis_jax.errors import UserError
from genesis_jax.optim import Plateau, current_learning_rate, make_optimizer, with_learning_rate

torch = pytest.importorskip("torch")

STEPS = 6
RNG = np.random.default_rng(0)
A = RNG.uniform(0.5, 2.0, size=(3, 4)).astype(np.float32)   # loss = sum(A * p^2) / 2 + sum(B * p)
B = RNG.normal(size=(3, 4)).astype(np.float32)
P0 = {"w": RNG.normal(size=(3, 4)).astype(np.float32), "b": RNG.normal(size=(4,)).astype(np.float32)}


def grads_of(params):
    return {"w": A * params["w"] + B, "b": 2.0 * params["b"] - 1.0}


def config(**optimizer):
    c = base_config()
    opt = ConfigDict({**c.optimizer.to_dict(), **optimizer})
    return opt, ConfigDict({**c.schedule.to_dict(), "kind": "constant"})


def run_optax(optimizer, schedule, steps=STEPS, steps_per_epoch=1):
    tx = make_optimizer(optimizer, schedule, steps_per_epoch, total_steps=steps)
    params = jax.tree.map(jnp.asarray, P0)
    state = tx.init(params)
    rates = []
    for _ in range(steps):
        updates, state = tx.update(jax.tree.map(jnp.asarray, grads_of(jax.tree.map(np.asarray, params))),
                                   state, params)
        params = optax.apply_updates(params, updates)
        rates.append(float(current_learning_rate(state)))
    return jax.tree.map(np.asarray, params), rates


def run_torch(make, clip=0.0, steps=STEPS, scheduler=None):
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in P0.items()}
    opt = make(list(params.values()))
    sched = scheduler(opt) if scheduler else None
    rates = []
    for _ in range(steps):
        grads = grads_of({k: p.detach().numpy() for k, p in params.items()})
        for k, p in params.items():
            p.grad = torch.from_numpy(grads[k].copy())
        if clip:
            torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched:
            sched.step()
    return {k: p.detach().numpy() for k, p in params.items()}, rates


def assert_same(ours, theirs, rtol=2e-5, atol=2e-6):
    for k in P0:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("fields,make", [
    (dict(name="sgd", learning_rate=0.1, momentum=0.9),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (dict(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
    (dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.05),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.05)),
    (dict(name="sgd", learning_rate=0.1, momentum=0.0),
     lambda p: torch.optim.SGD(p, lr=0.1)),
    (dict(name="adam", learning_rate=0.05),
     lambda p: torch.optim.Adam(p, lr=0.05)),
    (dict(name="adam", learning_rate=0.05, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.01),
     lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
    (dict(name="adamw", learning_rate=0.05, weight_decay=0.1),
     lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1)),
], ids=["sgd-momentum", "sgd-nesterov", "sgd-l2", "sgd-plain", "adam", "adam-l2-betas", "adamw"])
def test_optimizer_matches_torch_over_several_steps(fields, make):
    ours, _ = run_optax(*config(**fields))
    theirs, _ = run_torch(make)
    assert_same(ours, theirs)


def test_momentum_is_visible_in_the_trajectory():
    """The parity above means something: with momentum 0.9 the parameters end far from plain SGD's."""
    with_momentum, _ = run_optax(*config(name="sgd", learning_rate=0.1, momentum=0.9))
    without, _ = run_optax(*config(name="sgd", learning_rate=0.1, momentum=0.0))
    assert np.abs(with_momentum["w"] - without["w"]).max() > 0.05


def test_gradient_clipping_matches_torch_clip_grad_norm():
    ours, _ = run_optax(*config(name="sgd", learning_rate=0.1, momentum=0.9, clip_norm=0.5))
    theirs, _ = run_torch(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), clip=0.5)
    unclipped, _ = run_optax(*config(name="sgd", learning_rate=0.1, momentum=0.9))
    assert_same(ours, theirs)
    assert np.abs(ours["w"] - unclipped["w"]).max() > 1e-3


def test_step_schedule_matches_torch_steplr():
    """StepLR every step_epochs epochs: with 2 steps per epoch and step_epochs 2, the rate
    halves every 4 steps; the parameters follow torch's through two drops."""
    optimizer, schedule = config(name="sgd", learning_rate=0.2, momentum=0.9)
    schedule.kind, schedule.step_epochs, schedule.gamma = "step", 2, 0.5
    ours, rates = run_optax(optimizer, schedule, steps=10, steps_per_epoch=2)
    theirs, torch_rates = run_torch(lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9), steps=10,
                                    scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5))
    np.testing.assert_allclose(rates, torch_rates, rtol=1e-6)
    assert rates[3] == pytest.approx(0.2) and rates[4] == pytest.approx(0.1) and rates[8] == pytest.approx(0.05)
    assert_same(ours, theirs)


def test_cosine_schedule_warms_up_then_decays_to_the_final_fraction():
    optimizer, schedule = config(name="adam", learning_rate=1.0)
    schedule.kind, schedule.warmup_epochs, schedule.final_fraction = "cosine", 2, 0.1
    _, rates = run_optax(optimizer, schedule, steps=20, steps_per_epoch=2)  # warm-up: 4 steps
    np.testing.assert_allclose(rates[:5], [0.0, 0.25, 0.5, 0.75, 1.0], atol=1e-6)
    assert all(a > b for a, b in zip(rates[4:], rates[5:]))
    halfway = 4 + (20 - 4) // 2  # cosine midpoint: halfway between peak and end
    assert rates[halfway] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)


def test_plateau_rule_matches_torch_reduce_lr_on_plateau():
    """One validation loss per epoch, factor 0.5, torch's default threshold (1e-4
    relative): the same rates after every evaluation. plateau_epochs counts like keras
    (the original's ReduceLROnPlateau): the rate drops on the plateau_epochs-th flat
    epoch; torch drops after `patience` flat epochs, on the next one, so
    plateau_epochs=2 is torch's patience=1."""
    _, schedule = config()
    schedule.kind, schedule.plateau_epochs, schedule.gamma = "plateau", 2, 0.5
    plateau = Plateau(schedule, steps_per_epoch=4, eval_every=4)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.89995, 0.9, 0.9, 0.8, 0.81, 0.82, 0.83, 0.84]
    ours, theirs = [], []
    for loss in losses:
        ours.append(plateau.update(loss))
        reference.step(loss)
        theirs.append(opt.param_groups[0]["lr"])
    assert ours == pytest.approx(theirs)
    assert min(ours) < 0.5  # two drops happened


def test_plateau_patience_counts_epochs_not_evaluations():
    _, schedule = config()
    schedule.kind, schedule.plateau_epochs = "plateau", 3
    assert Plateau(schedule, steps_per_epoch=10, eval_every=5).patience == 6   # two evaluations per epoch
    assert Plateau(schedule, steps_per_epoch=10, eval_every=10).patience == 3


def test_plateau_state_round_trips_through_json():
    _, schedule = config()
    schedule.kind = "plateau"
    first = Plateau(schedule, 1, 1)
    for loss in (1.0, 1.0, 1.0):
        first.update(loss)
    again = Plateau(schedule, 1, 1, state=first.to_json())
    assert again.to_json() == first.to_json()


def test_the_rate_can_be_set_in_the_state():
    tx = make_optimizer(*config(name="sgd", learning_rate=0.1), steps_per_epoch=1, total_steps=1)
    state = with_learning_rate(tx.init({"w": jnp.zeros(2)}), 0.025)
    updates, state = tx.update({"w": jnp.ones(2)}, state, {"w": jnp.zeros(2)})
    np.testing.assert_allclose(updates["w"], -0.025)
    assert float(current_learning_rate(state)) == pytest.approx(0.025)


@pytest.mark.parametrize("field,value,words", [
    ("name", "lamb", "optimizer.name must be one of sgd, adam, adamw"),
    ("learning_rate", -1.0, "optimizer.learning_rate must be >= 0"),
    ("b2", 1.0, "optimizer.b2 must be in [0, 1)"),
    ("nesterov", True, "optimizer.nesterov needs optimizer.name='sgd'"),
])
def test_bad_optimizer_fields_are_named(field, value, words):
    optimizer, schedule = config()
    optimizer[field] = value
    if field == "nesterov":
        optimizer.name = "adam"
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        make_optimizer(optimizer, schedule, 1, 1)


def test_unknown_schedule_is_named():
    optimizer, schedule = config()
    schedule.kind = "linear"
    with pytest.raises(UserError, match="schedule.kind must be one of constant, step, cosine, plateau"):
        make_optimizer(optimizer, schedule, 1, 1)


def updates_over(optimizer, steps, pretrained=("down_tr64",)):
    """The updates of `steps` optimizer steps on a 'pre-trained' and a 'new' module, with
    gradients that change each step."""
    _, schedule = config()
    tx = make_optimizer(optimizer, schedule, 1, steps, pretrained)
    params = {"down_tr64": jnp.ones(3), "out_tr": jnp.ones(3)}
    state, out = tx.init(params), []
    for s in range(steps):
        grads = {name: jnp.arange(1.0, 4.0) * (s + 1) * (1 if name == "out_tr" else -0.5) for name in params}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append({k: np.asarray(v) for k, v in updates.items()})
    return out


def test_pretrained_updates_are_frozen_for_k_steps_then_scaled():
    sgd, _ = config(name="sgd", learning_rate=0.1, momentum=0.0)
    plain = updates_over(sgd, 4)
    tuned = updates_over(ConfigDict({**sgd.to_dict(), "pretrained_lr_multiplier": 0.25,
                                     "freeze_pretrained_steps": 2}), 4)
    for step in range(4):
        np.testing.assert_array_equal(tuned[step]["out_tr"], plain[step]["out_tr"])  # new layers: untouched
        expected = 0.0 if step < 2 else 0.25 * plain[step]["down_tr64"]
        np.testing.assert_allclose(tuned[step]["down_tr64"], expected, rtol=1e-6)
    assert updates_over(sgd, 1, pretrained=())[0]["down_tr64"].any()  # scratch: nothing is frozen


def test_adam_keeps_tracking_frozen_gradients_so_unfreezing_is_a_normal_step():
    adam, _ = config(name="adam", learning_rate=0.1)
    plain = updates_over(adam, 4)
    frozen = updates_over(ConfigDict({**adam.to_dict(), "freeze_pretrained_steps": 3}), 4)
    assert not frozen[2]["down_tr64"].any()
    np.testing.assert_allclose(frozen[3]["down_tr64"], plain[3]["down_tr64"], rtol=1e-6)
