"""The pre-training loop: sharded jitted step, frozen validation, schedule, checkpoints, logs.

Everything random is a function of (seed, step, example): the corruption of example i
at step s uses fold_in(fold_in(root, s), i) and the data source serves step s
deterministically, so a resumed run repeats exactly what the uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import genesis_jax
from genesis_jax import sharding
from genesis_jax.checkpoint import Checkpointer, abstract_like
from genesis_jax.data.sources import load_run_data
from genesis_jax.deform import DeformConfig, sharded_genesis_batch
from genesis_jax.metrics import MetricWriter, restoration_grid
from genesis_jax.models import UNet3D
from genesis_jax.step import apply_gradients, init_train_state, model_from_state, restoration_mse

_VALIDATION_KEY = 2**31 - 1  # fold_in tag of the frozen validation corruptions


class TrainingDiverged(RuntimeError):
    pass


@dataclasses.dataclass
class Schedule:
    """Host-side state of the learning-rate schedule and early stopping (checkpointed)."""

    learning_rate: float
    best_val: float = math.inf
    best_step: int = -1
    last_drop_step: int = 0
    stopped_early: bool = False

    def after_eval(self, step: int, val_loss: float, cfg, steps_per_epoch: int) -> bool:
        """Update on a validation result at `step`; True when this is the best so far."""
        improved = val_loss < self.best_val
        if improved:
            self.best_val, self.best_step = val_loss, step
        flat_epochs = (step - max(self.best_step, 0)) / steps_per_epoch
        if cfg.schedule.kind == "plateau":
            since_drop = (step - max(self.best_step, self.last_drop_step)) / steps_per_epoch
            if not improved and since_drop >= cfg.schedule.plateau_epochs:
                self.learning_rate *= cfg.schedule.gamma
                self.last_drop_step = step
        if flat_epochs >= cfg.early_stopping_patience:
            self.stopped_early = True
        return improved

    def lr_at(self, step: int, cfg, steps_per_epoch: int) -> float:
        if cfg.schedule.kind == "step":
            epoch = step // steps_per_epoch
            return cfg.optimizer.learning_rate * cfg.schedule.gamma ** (epoch // cfg.schedule.step_epochs)
        return self.learning_rate


def _dtype(name: str):
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"model.dtype must be 'float32' or 'bfloat16', got {name!r}")
    return jnp.dtype(name)


def validate_config(cfg, require_data: bool = True) -> None:
    """Fail before any work on values the run could not use (require_data=False: the
    dry run, which compiles without reading data)."""
    if cfg.schedule.kind not in ("step", "plateau"):
        raise ValueError(f"schedule.kind must be 'step' or 'plateau', got {cfg.schedule.kind!r}")
    for name in ("batch_size", "total_steps", "log_every"):
        if cfg[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {cfg[name]}")
    for name in ("steps_per_epoch", "eval_every", "checkpoint_every"):
        if cfg[name] < 0:
            raise ValueError(f"{name} must be >= 0 (0: once per epoch), got {cfg[name]}")
    _dtype(cfg.model.dtype)
    DeformConfig(**cfg.deform)
    if cfg.data.source not in ("sample", "store", "volumes"):
        raise ValueError(f"data.source must be 'sample', 'store' or 'volumes', got {cfg.data.source!r}")
    if require_data and cfg.data.source == "store" and not cfg.data.store:
        raise ValueError("data.source is 'store' but data.store is empty: pass --config.data.store=PATH")
    if require_data and cfg.data.source == "volumes" and not cfg.data.volumes:
        raise ValueError("data.source is 'volumes' but data.volumes is empty: pass --config.data.volumes=A,B")
    if any(d % 8 for d in cfg.data.cube_shape):
        raise ValueError(f"data.cube_shape {tuple(cfg.data.cube_shape)}: every dim must be divisible by 8")


class Preemption:
    """SIGTERM sets a flag; the loop saves at the next step boundary and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)

    def reached(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils  # every process must agree to stop at the same step
        return bool(multihost_utils.process_allgather(np.array(self.requested)).any())


def make_pretrain_step(graphdef, root_key, deform_cfg: DeformConfig, momentum: float, mesh):
    """jit(step)(state, cubes, step, learning_rate) -> (state, metrics): corrupt the clean
    batch on device (example i of step s with fold_in(fold_in(root, s), i), each device
    only its own rows), then one SGD step. State replicated and donated, batch split over
    'data'; the only collectives are the gradient and BatchNorm all-reduces
    (tests/test_data_parallel.py checks it in the compiled program)."""

    def step_fn(state, cubes, step, learning_rate):
        corrupted, target = sharded_genesis_batch(jax.random.fold_in(root_key, step), cubes, deform_cfg, mesh)
        state, loss = apply_gradients(graphdef, state, corrupted, target, learning_rate, momentum)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(state.params)]))
        return state, {"loss": loss, "params_finite": finite}

    replicated = sharding.replicated(mesh)
    return jax.jit(step_fn, in_shardings=(replicated, sharding.batch_sharded(mesh), None, None),
                   out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(graphdef, mesh):
    """jit(eval)(state, corrupted, target) -> (loss, restored): the validation loss and
    the restorations it scored (split over 'data' like the batch; the PNG grid takes
    its rows from them)."""

    def eval_fn(state, corrupted, target):
        model = model_from_state(graphdef, state)
        model.eval()
        restored = model(corrupted[..., None])[..., 0]
        return restoration_mse(restored, target), restored

    batched = sharding.batch_sharded(mesh)
    return jax.jit(eval_fn, in_shardings=(sharding.replicated(mesh), batched, batched),
                   out_shardings=(sharding.replicated(mesh), batched))


def make_validation_corruption(root_key, deform_cfg: DeformConfig, mesh):
    """jit(corrupt)(clean) -> (corrupted, target): the frozen validation set, corrupted
    once with fixed keys (the same for every evaluation), split over 'data'."""
    key = jax.random.fold_in(root_key, _VALIDATION_KEY)
    batched = sharding.batch_sharded(mesh)
    return jax.jit(lambda clean: sharded_genesis_batch(key, clean, deform_cfg, mesh),
                   in_shardings=batched, out_shardings=(batched, batched))


def write_run_info(workdir: Path, cfg, data, mesh) -> None:
    (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
    info = {
        "genesis_jax": genesis_jax.__version__, "jax": jax.__version__, "python": platform.python_version(),
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(), "mesh": dict(mesh.shape), "seed": cfg.seed,
        "data": data.description, "data_sha256": data.digest,
    }
    (workdir / "run_info.json").write_text(json.dumps(info, indent=2))


def train(cfg, workdir) -> dict:
    """Run (or resume) the pre-training described by cfg in workdir; returns a summary."""
    validate_config(cfg)
    workdir = Path(workdir)
    mesh = sharding.make_mesh(jax.devices()[: cfg.num_devices] if cfg.num_devices else None)
    sharding.check_batch_size(cfg.batch_size, mesh)
    data = load_run_data(cfg.data, cfg.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = cfg.steps_per_epoch or max(1, (data.train_cubes or cfg.batch_size) // cfg.batch_size)
    eval_every = cfg.eval_every or steps_per_epoch
    checkpoint_every = cfg.checkpoint_every or steps_per_epoch
    if jax.process_index() == 0:
        write_run_info(workdir, cfg, data, mesh)

    deform_cfg = DeformConfig(**cfg.deform)
    model = UNet3D(width=cfg.model.width, bn_mode=cfg.model.bn_mode, dtype=_dtype(cfg.model.dtype),
                   rngs=nnx.Rngs(cfg.seed))
    graphdef, state = init_train_state(model, cfg.optimizer.momentum)
    state = sharding.replicate(state, mesh)
    root_key = jax.random.key(cfg.seed)
    train_step = make_pretrain_step(graphdef, root_key, deform_cfg, cfg.optimizer.momentum, mesh)
    eval_step = make_eval_step(graphdef, mesh)

    # Frozen validation: corrupted once with fixed keys, so every evaluation compares like with like.
    n_val = len(data.validation) - len(data.validation) % mesh.size
    if n_val == 0:
        raise ValueError(f"{len(data.validation)} validation cubes do not split over {mesh.size} devices")
    val_clean = jax.device_put(jnp.asarray(data.validation[:n_val]), sharding.batch_sharded(mesh))
    val_corrupted, val_target = make_validation_corruption(root_key, deform_cfg, mesh)(val_clean)
    val_images = np.asarray(val_corrupted[: cfg.images]), np.asarray(val_target[: cfg.images])  # host copy, once

    checkpointer = Checkpointer(workdir / "checkpoints", keep=cfg.keep_checkpoints)
    schedule = Schedule(cfg.optimizer.learning_rate)
    start_step = 0
    restored = checkpointer.restore_latest(abstract_like(state))
    if restored is not None:
        state, meta = restored
        if meta["seed"] != cfg.seed:
            checkpointer.close()
            raise ValueError(f"{workdir}: the checkpoint was written with seed {meta['seed']}, the config says "
                             f"{cfg.seed}; resume with --config.seed={meta['seed']} or use a new --workdir")
        start_step = meta["step"]
        schedule = Schedule(**meta["schedule"])
        print(f"resumed from step {start_step} in {workdir / 'checkpoints'}", flush=True)

    rng_key_data = np.asarray(jax.random.key_data(root_key)).tolist()

    def checkpoint_meta(step):
        # The RNG is (root key, step): every draw of step s derives from fold_in(root, s).
        return {"step": step, "seed": cfg.seed, "rng_key": rng_key_data, "data_cursor": step,
                "schedule": dataclasses.asdict(schedule)}

    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    preemption = Preemption()
    pending = []  # (step, metrics on device) not yet checked for NaN
    summary = {"workdir": str(workdir), "start_step": start_step, "val_losses": [], "train_losses": []}

    def check_losses():
        """Fetch pending metrics; stop at the first non-finite loss or parameters, naming the step
        (checked before every save, so no checkpoint holds a diverged state)."""
        fetched = jax.device_get([metrics for _, metrics in pending])
        for (step, _), metrics in zip(pending, fetched):
            if not (np.isfinite(metrics["loss"]) and metrics["params_finite"]):
                checkpointer.wait()
                what = f"loss became {metrics['loss']}" if not np.isfinite(metrics["loss"]) else \
                    "parameters became non-finite"
                raise TrainingDiverged(f"{what} at step {step}; the last good checkpoint is in "
                                       f"{workdir / 'checkpoints' / 'latest'} (lower the learning rate?)")
        pending.clear()
        return [float(m["loss"]) for m in fetched]

    process_rows = dict(process_index=jax.process_index(), process_count=jax.process_count())
    bar = tqdm(total=cfg.total_steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0, mininterval=1.0)
    window_start, window_steps = time.perf_counter(), 0
    step = start_step
    try:
        while step < cfg.total_steps:
            lr = schedule.lr_at(step, cfg, steps_per_epoch)
            local = data.train.batch(step, cfg.batch_size, **process_rows)
            state, metrics = train_step(state, sharding.global_batch(local, mesh), step, jnp.float32(lr))
            step += 1  # from here on, `step` counts completed steps (checkpoints are numbered so)
            pending.append((step, metrics))
            window_steps += 1
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.total_steps:
                values = check_losses()
                elapsed = time.perf_counter() - window_start
                samples_per_s = window_steps * cfg.batch_size / max(elapsed, 1e-9)
                summary["train_losses"].extend(zip(range(step - len(values), step), values))
                writer.scalars(step, {"train/loss": float(np.mean(values)), "train/learning_rate": lr,
                                      "train/samples_per_s": samples_per_s})
                bar.set_postfix(loss=f"{values[-1]:.4f}", lr=f"{lr:.3g}", samples_s=f"{samples_per_s:.1f}")
                window_start, window_steps = time.perf_counter(), 0

            if step % eval_every == 0 or step == cfg.total_steps:
                val_loss, restored_images = eval_step(state, val_corrupted, val_target)
                val_loss = float(val_loss)
                improved = schedule.after_eval(step, val_loss, cfg, steps_per_epoch)
                summary["val_losses"].append((step, val_loss))
                writer.scalars(step, {"val/loss": val_loss, "val/best": schedule.best_val})
                writer.image(step, "val/restoration", restoration_grid(*val_images, np.asarray(restored_images[: cfg.images])))
                tqdm.write(f"step {step}: val loss {val_loss:.5f}{' (best)' if improved else ''}, lr {lr:.3g}")
                if improved:
                    check_losses()
                    checkpointer.save_best(step, state, checkpoint_meta(step))

            # Several processes must agree on a stop: that is a collective, so they only ask on
            # logging steps; a lone process reads its flag every step.
            preempted = preemption.reached() if jax.process_count() == 1 or step % cfg.log_every == 0 else False
            if step % checkpoint_every == 0 or preempted or schedule.stopped_early or step == cfg.total_steps:
                check_losses()
                checkpointer.save(step, state, checkpoint_meta(step))
            if preempted:
                checkpointer.wait()
                print(f"SIGTERM: saved the checkpoint of step {step} in {workdir / 'checkpoints'}; exiting "
                      f"(run the same command to resume)", flush=True)
                summary.update(preempted=True, end_step=step)
                return summary
            if schedule.stopped_early:
                tqdm.write(f"early stopping at step {step}: no better validation loss for "
                           f"{cfg.early_stopping_patience} epochs (best {schedule.best_val:.5f} at step "
                           f"{schedule.best_step})")
                break
    finally:
        bar.close()
        writer.close()
        checkpointer.wait()
        preemption.restore()

    summary.update(end_step=step, best_val=schedule.best_val, best_step=schedule.best_step, preempted=False)
    if cfg.export_pytorch and jax.process_index() == 0:
        summary["pytorch_export"] = export_best(checkpointer, graphdef, state, workdir)
    checkpointer.close()
    return summary


def load_checkpoint(cfg, workdir, best: bool = False):
    """(UNet3D, meta) from a run directory's latest (or best) checkpoint, on this host's devices."""
    model = UNet3D(width=cfg.model.width, bn_mode=cfg.model.bn_mode, dtype=_dtype(cfg.model.dtype),
                   rngs=nnx.Rngs(0))
    graphdef, state = init_train_state(model, cfg.optimizer.momentum)
    state = sharding.replicate(state, sharding.make_mesh())
    checkpointer = Checkpointer(Path(workdir) / "checkpoints", keep=cfg.keep_checkpoints)
    try:
        restored = (checkpointer.restore_best if best else checkpointer.restore_latest)(abstract_like(state))
    finally:
        checkpointer.close()
    if restored is None:
        raise ValueError(f"{workdir}: no checkpoint found")
    return model_from_state(graphdef, restored[0]), restored[1]


def export_best(checkpointer, graphdef, state, workdir: Path) -> str | None:
    """Write the best weights as a PyTorch checkpoint; skipped (with a note) without torch."""
    try:
        from genesis_jax.models import save_pytorch_checkpoint
        import torch  # noqa: F401
    except ImportError:
        print("note: torch is not installed; skipping the PyTorch export (pip install 'genesis-jax[torch]')")
        return None
    best = checkpointer.restore_best(abstract_like(state))
    path = workdir / "genesis_unet3d_best.pt"
    save_pytorch_checkpoint(model_from_state(graphdef, best[0] if best else state), path)
    return str(path)
