"""The batch really splits over devices: proven from the compiled programs, not from outputs.

Equal losses on 1 and 8 devices prove nothing (replicated work gives the same numbers).
What does: per-device FLOPs of the SPMD program (cost_analysis is per device), the
collectives in the optimised HLO (a replicated stage shows up as an all-gather of the
batch), and the trip count of the per-example loop on CPU (which cost_analysis counts
once, so FLOPs alone cannot see it). Every jitted step of the trainer is checked:
the pre-training step (both deformation code paths), the evaluation step, and the
frozen validation corruption.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genesis_jax import program, sharding
from genesis_jax.deform import DeformConfig, genesis_batch, sharded_genesis_batch
from genesis_jax.models import UNet3D
from genesis_jax.configs.base import base_config
from genesis_jax.optim import recipe_sgd
from genesis_jax.step import init_train_state, make_eval_step, make_train_step
from genesis_jax.tasks import PretrainTask

# What the compiled programs do is the point here: XLA's optimisations on (conftest.py).
pytestmark = pytest.mark.optimized

BATCH, CUBE = 16, (16, 16, 16)
DEFORM = dict(local_blocks=300)


def mesh_of(n):
    return sharding.make_mesh(jax.devices()[:n])


def cubes_spec(mesh, batch=BATCH):
    return jax.ShapeDtypeStruct((batch, *CUBE), jnp.float32, sharding=sharding.batch_sharded(mesh))


def local_batch_bytes(n_devices):
    return BATCH // n_devices * int(np.prod(CUBE)) * 4


TX = recipe_sgd()


@pytest.fixture(scope="module")
def model_state():
    graphdef, state = init_train_state(UNet3D(width=4, rngs=nnx.Rngs(0)), TX)
    return graphdef, jax.tree.map(np.asarray, state)


def pretrain_task(mode):
    task = PretrainTask(base_config())
    task.deform = DeformConfig(batch_mode=mode, **DEFORM)
    return task


def compile_pretrain(model_state, n, mode):
    graphdef, state = model_state
    mesh = mesh_of(n)
    step = make_train_step(graphdef, TX, pretrain_task(mode), jax.random.key(0), mesh)
    compiled = step.lower(sharding.replicated_specs(state, mesh), cubes_spec(mesh), 0).compile()
    return program.analyse(compiled), compiled.as_text()


def per_example_trip_counts(hlo_text):
    """Trip counts of the while loops that carry a stack of cubes: lax.map over examples
    (the other loops, e.g. threefry's rounds, carry only small keys)."""
    cube_stack = re.compile(r"f32\[\d+,%s(,\d+)?\]" % ",".join(map(str, CUBE)))  # channels or not
    return [int(n) for line in hlo_text.splitlines() if " while(" in line and cube_stack.search(line)
            for n in re.findall(r'known_trip_count":\{"n":"(\d+)"', line)]


def assert_split(one, eight, n=8):
    assert eight.flops <= 1.1 * one.flops / n, (eight.flops, one.flops)


def assert_no_batch_gather(report, n=8):
    """No all-gather / all-to-all moves as much as one device's share of the batch."""
    moved = report.largest("all-gather", "all-to-all", "ragged-all-to-all")
    assert moved < local_batch_bytes(n), report.collective_summary()


# ---------------------------------------------------------------- the HLO reader itself

HLO = """
ENTRY %main {
  %p = f32[4,8]{1,0} parameter(0)
  %all-reduce.3 = (f32[3,3,3,1,4]{4,3,2,1,0}, f32[4]{0}) all-reduce(f32[3,3,3,1,4]{4,3,2,1,0} %a, f32[4]{0} %b), to_apply=%add
  %ag = (bf16[2,16]{1,0}, bf16[16,16]{1,0}) all-gather-start(bf16[2,16]{1,0} %p), dimensions={0}
  %agd = bf16[16,16]{1,0} all-gather-done(%ag)
  ROOT %a2a = s32[8,2]{1,0} all-to-all(s32[8,2]{1,0} %q), dimensions={0}
  %notme = f32[4]{0} add(%x, %y)
}
"""


def test_hlo_reader_counts_collectives_and_their_bytes():
    found = program.collectives_in_hlo(HLO)
    assert [(c.kind, c.bytes) for c in found] == [
        ("all-reduce", (108 + 4) * 4), ("all-gather", 16 * 16 * 2), ("all-to-all", 8 * 2 * 4)]
    assert found[0].shapes == ("f32[3,3,3,1,4]", "f32[4]")


def test_the_check_sees_a_replicated_deformation():
    """The trap of GUIDE.md section 4: the single-device genesis_batch (per-example
    lax.map, the CPU path) given a sharded batch compiles to an all-gather of the whole
    batch and a loop over all 16 examples on every device. The checks used below must
    flag it, or they prove nothing."""
    cfg = DeformConfig(batch_mode="map", **DEFORM)
    mesh = mesh_of(8)
    gathered = jax.jit(lambda k, c: genesis_batch(k, c, cfg), out_shardings=sharding.batch_sharded(mesh)) \
        .lower(jax.random.key(0), cubes_spec(mesh)).compile()
    split = jax.jit(lambda k, c: sharded_genesis_batch(k, c, cfg, mesh)).lower(jax.random.key(0),
                                                                               cubes_spec(mesh)).compile()
    assert program.analyse(gathered).largest("all-gather") >= BATCH * np.prod(CUBE) * 4
    assert per_example_trip_counts(gathered.as_text()) == [BATCH]
    assert program.analyse(split).collectives == []
    assert per_example_trip_counts(split.as_text()) == [BATCH // 8]


def test_vmapped_deformation_flops_split():
    """The accelerator path (vmap): per-device FLOPs of the deformations alone are 1/8."""
    cfg = DeformConfig(batch_mode="vmap", **DEFORM)
    mesh = mesh_of(8)
    one = program.analyse(jax.jit(lambda k, c: genesis_batch(k, c, cfg)).lower(
        jax.random.key(0), jax.ShapeDtypeStruct((BATCH, *CUBE), jnp.float32)).compile())
    split = program.analyse(jax.jit(lambda k, c: sharded_genesis_batch(k, c, cfg, mesh))
                            .lower(jax.random.key(0), cubes_spec(mesh)).compile())
    assert split.collectives == []
    assert_split(one, split)


# ---------------------------------------------------------------- the trainer's programs

@pytest.mark.parametrize("mode", ["map", "vmap"])
def test_pretrain_step_splits_the_batch_over_8_devices(model_state, mode):
    one, _ = compile_pretrain(model_state, 1, mode)
    eight, hlo = compile_pretrain(model_state, 8, mode)
    assert_split(one, eight)
    assert_no_batch_gather(eight)
    assert one.collectives == []
    # The gradient all-reduce: every parameter once (plus BatchNorm's per-channel sums and the loss).
    param_bytes = program.tree_bytes(model_state[1].params)
    reduced = eight.collective_summary()["all-reduce"]["bytes"]
    assert param_bytes <= reduced <= 1.05 * param_bytes, (reduced, param_bytes)
    if mode == "map":  # the CPU path loops over examples: only this device's 2
        assert per_example_trip_counts(hlo) == [BATCH // 8]


@pytest.mark.parametrize("mode", ["map", "vmap"])
def test_eval_step_splits_the_batch(model_state, mode):
    """The validation step (frozen corruption, forward, loss, the arrays it scored)."""
    graphdef, state = model_state
    reports = {}
    for n in (1, 8):
        mesh = mesh_of(n)
        compiled = make_eval_step(graphdef, pretrain_task(mode), jax.random.key(0), mesh).lower(
            sharding.replicated_specs(state, mesh), cubes_spec(mesh), 0).compile()
        reports[n] = program.analyse(compiled)
    assert_split(reports[1], reports[8])
    assert_no_batch_gather(reports[8])
    # Only BatchNorm's statistics and the loss are reduced, never activations.
    assert reports[8].largest("all-reduce") < local_batch_bytes(8)
    if mode == "map":
        assert per_example_trip_counts(compiled.as_text()) == [BATCH // 8]


def test_a_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="12 cubes does not split over 8 devices"):
        sharded_genesis_batch(jax.random.key(0), jnp.zeros((12, *CUBE)), DeformConfig(), mesh_of(8))


def test_the_2d_pretrain_step_splits_the_batch_over_8_devices():
    """Models Genesis 2D runs the same step: a UNet2D on 16x16 images, the deformations with
    dims=2; per-device FLOPs 1/8 and no gather of the images."""
    from genesis_jax.models import UNet2D
    graphdef, state = init_train_state(UNet2D(width=4, rngs=nnx.Rngs(0)), TX)
    task = PretrainTask(base_config())
    task.deform = DeformConfig(dims=2, batch_mode="vmap", local_blocks=10)
    images = (BATCH, 16, 16)
    reports = []
    for n in (1, 8):
        mesh = mesh_of(n)
        step = make_train_step(graphdef, TX, task, jax.random.key(0), mesh)
        spec = jax.ShapeDtypeStruct(images, jnp.float32, sharding=sharding.batch_sharded(mesh))
        reports.append(program.analyse(step.lower(sharding.replicated_specs(state, mesh), spec, 0).compile()))
    assert_split(*reports)
    assert reports[1].largest("all-gather", "all-to-all", "ragged-all-to-all") < BATCH // 8 * 16 * 16 * 4, \
        reports[1].collective_summary()
