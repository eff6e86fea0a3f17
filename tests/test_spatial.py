"""Spatial partitioning (config.mesh.space): one patch's X axis split over devices, proven
from the compiled programs on 8 simulated CPU devices.

What shows the split is the program, not its outputs (an unsplit step gives the same
numbers): per-device FLOPs about 1/space of the unsplit step's; collective-permutes
moving exactly the convolutions' halos predicted from the layer shapes
(program.halo_bytes); no all-gather of an activation; all-reduces no larger than the
gradients and BatchNorm statistics. The same checks fail on a step that gathers (the
stacked 2D convolution, which folds X into the batch). The numbers then equal the
unsplit step's: loss, gradients and BatchNorm statistics, at (data 1, space 4) and
(data 2, space 4).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genesis_jax import program, sharding
from genesis_jax.configs.segmentation import get_config
from genesis_jax.errors import UserError
from genesis_jax.models import UNet3D
from genesis_jax.optim import recipe_sgd
from genesis_jax.step import init_train_state, make_eval_step, make_train_step, model_from_state
from genesis_jax.tasks import SegmentationTask

# What a compiled program does (FLOPs, collectives) is read from programs compiled as users
# compile them (marker `optimized`); the numbers (losses, gradients, runs) need no
# optimisations: XLA's doubled kernel gradient shows without them too.

PATCH, WIDTH, SPACE = (32, 16, 16), 4, 4
TX = recipe_sgd()


def task_with(space=SPACE, **model):
    cfg = get_config()
    cfg.data.patch_shape, cfg.model.width, cfg.mesh.space = PATCH, WIDTH, space
    cfg.model.update(model)
    task = SegmentationTask(cfg)
    task.check_config()
    return task


def mesh_of(data, space):
    return sharding.make_mesh(jax.devices()[:data * space], space)


def batch_of(rows, seed=0):
    """Patches with a ball-ish label: image channel then label value index."""
    rng = np.random.default_rng(seed)
    image = rng.random((rows, *PATCH, 1), np.float32)
    return np.concatenate([image, (image > 0.6).astype(np.float32)], axis=-1)


def compiled_train_step(task, graphdef, state, mesh, rows):
    step = make_train_step(graphdef, TX, task, jax.random.key(0), mesh)
    spec = jax.ShapeDtypeStruct((rows, *PATCH, 2), jnp.float32, sharding=sharding.batch_sharded(mesh))
    traced = step.trace(jax.tree.map(np.asarray, state), spec, jnp.int32(0))
    return traced, traced.lower().compile()


@pytest.fixture(scope="module")
def built():
    task = task_with()
    graphdef, state = init_train_state(task.build_model(nnx.Rngs(0)), TX)
    return task, graphdef, jax.tree.map(np.asarray, state)


def smallest_activation_share(rows_per_device, space):
    """The U-Net's smallest activation, one device's share: the bottleneck, 16w channels
    at 1/8 resolution."""
    x, y, z = (s // 8 for s in PATCH)
    return rows_per_device * x / space * y * z * 16 * WIDTH * 4


def reduce_limit(state, data=1):
    """Gradients (fp32, one per parameter) and the BatchNorm statistics' sums (mean and
    variance forward, two more backward), with 10% for the loss's few sums; on a (data,
    space) mesh XLA reduces each over 'space', then over 'data' (seen in the replica
    groups): twice the bytes."""
    return (1 if data == 1 else 2) * 1.1 * (program.tree_bytes(state.params) + 2 * program.tree_bytes(state.batch_stats))


@pytest.fixture(scope="module")
def unsplit_flops(built):
    task, graphdef, state = built
    mesh = mesh_of(1, 1)
    return program.analyse(compiled_train_step(task_with(space=1), graphdef, state, mesh, 2)[1]).flops


@pytest.mark.optimized
@pytest.mark.parametrize("data", [1, 2])
def test_the_train_step_splits_x_and_exchanges_only_halos(built, unsplit_flops, data):
    task, graphdef, state = built
    traced, compiled = compiled_train_step(task, graphdef, state, mesh_of(data, SPACE), 2 * data)
    split = program.analyse(compiled)
    halo = program.halo_bytes(traced.jaxpr, data)
    problems = program.spatial_split_problems(split, unsplit_flops, SPACE, halo,
                                              smallest_activation_share(2, SPACE), reduce_limit(state, data))
    assert problems == []
    kinds = split.collective_summary()
    assert set(kinds) <= {"collective-permute", "all-reduce"}, kinds
    # every permute is one plane of one convolution's input: (rows, 1, Y', Z', C)
    assert all(c.shapes[0].split("[")[1].split(",")[1] == "1" for c in split.collectives
               if c.kind == "collective-permute")
    assert split.flops == pytest.approx(unsplit_flops / SPACE, rel=0.15)


@pytest.mark.optimized
def test_the_checks_fail_on_a_step_that_gathers(built, unsplit_flops):
    """The stacked 2D convolution folds X into the batch: the partitioner can only gather
    every activation, and each check that sees it says so."""
    task, _, state = built
    graphdef, state = init_train_state(UNet3D(width=WIDTH, conv="stacked2d", rngs=nnx.Rngs(0)), TX)
    traced, compiled = compiled_train_step(task, graphdef, state, mesh_of(1, SPACE), 2)
    problems = program.spatial_split_problems(program.analyse(compiled), unsplit_flops, SPACE,
                                              program.halo_bytes(traced.jaxpr), smallest_activation_share(2, SPACE),
                                              reduce_limit(state))
    said = " ".join(problems)
    assert "per-device FLOPs" in said and "an activation was gathered" in said and "collective-permutes" in said


@pytest.mark.optimized
def test_evaluation_splits_x_too(built):
    task, graphdef, state = built
    mesh = mesh_of(2, SPACE)
    step = make_eval_step(graphdef, task, jax.random.key(1), mesh)
    spec = jax.ShapeDtypeStruct((4, *PATCH, 2), jnp.float32, sharding=sharding.batch_sharded(mesh))
    traced = step.trace(jax.tree.map(np.asarray, state), spec, 0)
    split = program.analyse(traced.lower().compile())
    unsplit = make_eval_step(graphdef, task, jax.random.key(1), mesh_of(1, 1))
    whole = program.analyse(unsplit.lower(jax.tree.map(np.asarray, state), jnp.zeros((2, *PATCH, 2)), 0).compile())
    assert program.spatial_split_problems(split, whole.flops, SPACE, program.halo_bytes(traced.jaxpr, 2),
                                          smallest_activation_share(2, SPACE), reduce_limit(state, 2)) == []


def loss_grads_stats(task, graphdef, state, batch, mesh):
    """(loss, gradients, BatchNorm statistics after a training forward) on this mesh."""
    def fn(state, batch):
        inputs, targets = task.prepare(None, batch, mesh)
        model = model_from_state(graphdef, state)
        model.train()
        (loss, _), grads = nnx.value_and_grad(task.loss, has_aux=True)(model, inputs, targets)
        return loss, grads, nnx.state(model, nnx.BatchStat)

    replicated = sharding.replicated(mesh)
    out = jax.jit(fn, in_shardings=(replicated, sharding.batch_sharded(mesh)), out_shardings=replicated)(
        sharding.replicate(state, mesh), sharding.global_batch(batch, mesh))
    return jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("data, per_row", [(2, 1), (2, 2)])
def test_loss_gradients_and_batchnorm_equal_the_unsplit_step(built, data, per_row):
    """Also a guard: XLA 0.10.2 doubles a convolution's kernel gradient when its input is
    split over one mesh axis and replicated over another (docs/scaling.md); the step's
    activations are split over both axes, and these equalities would see a doubling."""
    task, graphdef, state = built
    batch = batch_of(per_row * data)
    whole = loss_grads_stats(task_with(space=1), graphdef, state, batch, mesh_of(1, 1))
    split = loss_grads_stats(task, graphdef, state, batch, mesh_of(data, SPACE))
    for whole_part, split_part in zip(whole, split):  # loss, gradients, statistics
        # conv biases before BatchNorm have mathematically zero gradients (float noise of
        # ~1e-10): those are compared at 1e-6 of the part's largest value, the rest at rtol 1e-5
        scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(whole_part))
        for a, b in zip(jax.tree.leaves(whole_part), jax.tree.leaves(split_part)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("changes, message", [
    (dict(patch_shape=(48, 16, 16)), "X = 48 must be a multiple of 8 x 4 = 32"),
    (dict(conv="stacked2d"), "model.conv=stacked2d with mesh.space=4"),
    (dict(patch_shape=(64, 64)), "splits 3D patches; 2D patches"),
])
def test_patches_that_do_not_split_are_refused_naming_the_field(changes, message):
    cfg = get_config()
    cfg.model.width, cfg.mesh.space = WIDTH, SPACE
    cfg.data.patch_shape = changes.get("patch_shape", PATCH)
    cfg.model.conv = changes.get("conv", "auto")
    with pytest.raises(UserError, match=message):
        SegmentationTask(cfg).check_config()


def test_pre_training_and_classification_keep_the_data_axis():
    from genesis_jax.configs import base
    from genesis_jax.tasks import ClassificationTask, PretrainTask
    for task, cfg in ((PretrainTask, base.base_config()), (ClassificationTask, base.classification_base())):
        cfg.mesh.space = 2
        with pytest.raises(UserError, match="keeps the data axis only"):
            task(cfg).check_config()


def test_the_mesh_keeps_each_patch_within_one_group_of_consecutive_devices():
    mesh = mesh_of(2, 4)
    assert dict(mesh.shape) == {"data": 2, "space": 4}
    assert [d.id for d in mesh.devices[1]] == [d.id for d in jax.devices()[4:8]]
    with pytest.raises(UserError, match="mesh.space=3 must be >= 1 and divide the device count"):
        sharding.make_mesh(jax.devices(), 3)
    with pytest.raises(UserError, match="does not split over 2 data-parallel groups"):
        sharding.check_batch_size(3, 8, 4)


@pytest.fixture(scope="module")
def spatial_run(tmp_path_factory):
    """A tiny segmentation fine-tuning run on (data 2, space 4): 2 steps of 2 patches of
    (32, 16, 16), each split over 4 devices; validation and the whole-volume Dice too."""
    import nibabel as nib

    from genesis_jax.trainer import train
    root = tmp_path_factory.mktemp("spatial")
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (40, 40, 24)), indexing="ij"), -1)
    for i, centre in enumerate(([14, 20, 12], [24, 18, 12])):
        ball = np.sum((grid - centre) ** 2, -1) < 36
        nib.save(nib.Nifti1Image((rng.normal(-500, 100, ball.shape) + 700 * ball).astype(np.float32), np.eye(4)),
                 str(root / f"ct{i}.nii.gz"))
        nib.save(nib.Nifti1Image(ball.astype(np.float32), np.eye(4)), str(root / f"seg{i}.nii.gz"))
    cfg = task_with().cfg
    cfg.batch_size, cfg.total_steps, cfg.steps_per_epoch, cfg.data.val_patches = 2, 2, 2, 4
    cfg.data.train_images, cfg.data.train_labels = str(root / "ct0.nii.gz"), str(root / "seg0.nii.gz")
    cfg.data.val_images, cfg.data.val_labels = str(root / "ct1.nii.gz"), str(root / "seg1.nii.gz")
    summary = train(cfg, root / "run")
    return root, summary


def test_finetuning_runs_on_a_space_mesh_and_records_it(spatial_run):
    import json
    root, summary = spatial_run
    assert summary["end_step"] == 2 and np.isfinite(summary["best_val"])
    info = json.loads((root / "run" / "run_info.json").read_text())
    assert info["mesh"] == {"data": 2, "space": 4}


def test_predict_splits_each_window_and_gives_the_unsplit_answer(spatial_run, tmp_path, capsys):
    """The same windows per call (8: BatchNorm in the official "batch" mode normalises
    with each call's statistics) give the same probabilities on (data 8) and (data 2,
    space 4); the CLI writes the map, and refuses a split the patch cannot take."""
    from genesis_jax import predict
    from genesis_jax.data.volumes import read_volume, to_unit_range
    root, _ = spatial_run
    volume = to_unit_range(read_volume(root / "ct1.nii.gz").array, "ct")[0]
    probabilities = {}
    for space in (1, 4):
        model, task, _ = predict.load_model(root / "run", space)
        probabilities[space] = task.probabilities(model, volume, sharding.make_mesh(space=space), 8)
    np.testing.assert_allclose(probabilities[4], probabilities[1], rtol=1e-5, atol=1e-5)
    out = tmp_path / "pred.nii.gz"
    assert predict.main(["--workdir", str(root / "run"), "--input", str(root / "ct1.nii.gz"), "--out", str(out),
                         "--mesh-space", "4"]) == 0
    assert out.is_file()
    assert predict.main(["--workdir", str(root / "run"), "--input", str(root / "ct1.nii.gz"), "--out",
                         str(tmp_path / "bad.nii.gz"), "--mesh-space", "8"]) == 1
    assert "data.patch_shape (32, 16, 16) with --mesh-space 8: X = 32 must be a multiple of 8 x 8 = 64" \
        in capsys.readouterr().err
    assert not (tmp_path / "bad.nii.gz").exists()


def test_the_strong_scaling_benchmark_splits_one_patch(capsys):
    from benchmarks import scaling
    result = scaling.main(["--series", "space", "--space-patch", "32", "16", "16", "--space-width", "4",
                           "--devices", "1", "4", "--steps", "1", "--warmup", "0"])
    rows = {row["devices"]: row for row in result["space"]["rows"]}
    assert rows[4]["per_device_gflops"] == pytest.approx(rows[1]["per_device_gflops"] / 4, rel=0.15)
    assert "collective-permute" in rows[4]["collectives"] and not rows[1]["collectives"]
    assert "space, 4 devices vs 1: per-device FLOPs" in capsys.readouterr().out


class OnHost:
    """A device seen as belonging to process `process_index` (4 devices per host)."""

    def __init__(self, device, process_index):
        self._device, self.process_index = device, process_index

    def __getattr__(self, name):
        return getattr(self._device, name)


def test_a_patch_group_spanning_hosts_is_refused_for_training_and_noted_by_the_dry_run():
    devices = [OnHost(d, i // 4) for i, d in enumerate(jax.devices())]
    with pytest.raises(UserError, match="would span processes; keep mesh.space within one host"):
        sharding.make_mesh(devices, 8)
    assert sharding.spans_hosts(sharding.make_mesh(devices, 8, within_hosts=False))
    assert not sharding.spans_hosts(sharding.make_mesh(devices, 4))
