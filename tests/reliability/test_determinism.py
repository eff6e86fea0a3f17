"""The same seed gives the same cubes, corruptions and losses on 1, 2, 4 and 8 devices,
with the batch really split (each device's compiled program loops over its own share of
the examples); another seed gives others.

Cubes and corruptions are per example (fold_in of the step and the example index), so
they are equal bitwise. The losses are means over the batch, reduced across devices in
an order that depends on the device count, so they are equal to float32 rounding
(rtol 1e-5); another seed moves them by far more.
"""

import jax
import numpy as np
import pytest

from genesis_jax import sharding
from genesis_jax.tasks import PretrainTask
from genesis_jax.trainer import train
from runs import tiny_config
from test_data_parallel import per_example_trip_counts

# What the compiled programs do is the point here: XLA's optimisations on (conftest.py).
pytestmark = pytest.mark.optimized

DEVICE_COUNTS = (1, 2, 4, 8)
BATCH = 16  # 2 examples per device on 8: a loop of one is compiled away


def cubes_and_corruptions(seed: int, n_devices: int, step: int = 3):
    """(cubes of step `step`, corrupted inputs, targets) as the train step makes them on n devices,
    and the per-example loop trip counts of its compiled program."""
    cfg = tiny_config(seed=seed, batch_size=BATCH)
    task = PretrainTask(cfg)
    task.check_config()
    mesh = sharding.make_mesh(jax.devices()[:n_devices])
    cubes = task.load_data().train.batch(step, BATCH)
    key = jax.random.fold_in(jax.random.key(seed), step)  # what make_train_step derives for `step`
    prepare = jax.jit(lambda k, c: task.prepare(k, c, mesh), in_shardings=(None, sharding.batch_sharded(mesh)))
    batch = sharding.global_batch(cubes, mesh)
    compiled = prepare.lower(key, batch).compile()  # one compile: the program that runs is the one read
    inputs, targets = compiled(key, batch)
    return np.asarray(cubes), np.asarray(inputs), np.asarray(targets), per_example_trip_counts(compiled.as_text())


@pytest.fixture(scope="module")
def corrupted():
    return {(seed, n): cubes_and_corruptions(seed, n) for seed in (0, 1) for n in DEVICE_COUNTS}


@pytest.mark.parametrize("n", DEVICE_COUNTS[1:])
def test_cubes_and_corruptions_are_the_same_bitwise_on_any_device_count(corrupted, n):
    one, many = corrupted[0, 1], corrupted[0, n]
    for a, b in zip(one[:3], many[:3]):
        np.testing.assert_array_equal(a, b)
    assert many[3] == [BATCH // n], "the corruption is not split over the devices"
    assert not np.array_equal(one[1], one[2]), "nothing was corrupted"


def test_another_seed_gives_other_cubes_and_corruptions(corrupted):
    for a, b in zip(corrupted[0, 8][:3], corrupted[1, 8][:3]):
        assert not np.array_equal(a, b)


@pytest.mark.slow
def test_losses_are_the_same_on_1_2_4_and_8_devices_and_differ_with_the_seed(tmp_path):
    losses = {}
    for seed, n in [(0, 1), (0, 2), (0, 4), (0, 8), (1, 8)]:
        summary = train(tiny_config(seed=seed, num_devices=n, total_steps=3), tmp_path / f"seed{seed}_{n}")
        losses[seed, n] = np.array([loss for _, loss in summary["train_losses"]] +
                                   [loss for _, loss in summary["val_losses"]])
    for n in DEVICE_COUNTS[1:]:
        np.testing.assert_allclose(losses[0, n], losses[0, 1], rtol=1e-5, err_msg=f"{n} devices")
    assert np.abs(losses[1, 8] - losses[0, 8]).max() > 1e-3
