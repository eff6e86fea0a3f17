"""The one training loop: any task (tasks/), sharded jitted steps, frozen validation,
schedules, checkpoints with exact resume, preemption, logs and progress.

Everything random is a function of (seed, step, example): step s prepares example i
with fold_in(fold_in(root, s), i) and the data source serves step s deterministically,
so a resumed run repeats exactly what the uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import platform
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

import genesis_jax
from genesis_jax import sharding
from genesis_jax.checkpoint import FORMAT, Checkpointer, abstract_like, identity_mismatch
from genesis_jax.errors import UserError, write_failure
from genesis_jax.evaluation import FrozenValidation
from genesis_jax.metrics import MetricWriter
from genesis_jax.optim import Plateau, check_optimizer_config, with_learning_rate
from genesis_jax.preemption import Preemption
from genesis_jax.processes import LinedUp
from genesis_jax.rundir import build_state, checkpoint_dir, export_best, has_checkpoints, new_workdir, \
    task_optimizer, write_run_files
from genesis_jax.step import RECENT_STEPS, make_eval_step, make_train_step, model_from_state
from genesis_jax.tasks import task_for
from genesis_jax.tasks.base import mesh_space

_VALIDATION_KEY = 2**31 - 1  # fold_in tag of the frozen validation preparation


class TrainingDiverged(RuntimeError):
    pass


def validate_config(cfg, task=None, require_data: bool = True) -> None:
    """UserError naming the field, before any work, for values the run could not use
    (require_data=False: the dry run, which compiles for another machine without reading
    data: its devices and batch split are checked against its topology instead)."""
    for name in ("batch_size", "total_steps", "log_every"):
        if cfg[name] < 1:
            raise UserError(f"{name} must be >= 1, got {cfg[name]}")
    for name in ("steps_per_epoch", "eval_every", "checkpoint_every"):
        if cfg[name] < 0:
            raise UserError(f"{name} must be >= 0 (0: once per epoch), got {cfg[name]}")
    for name in ("seed", "images", "log_seconds"):
        if cfg[name] < 0:
            raise UserError(f"{name} must be >= 0, got {cfg[name]}")
    if cfg.keep_checkpoints < 1:
        raise UserError(f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}")
    if cfg.early_stopping_patience <= 0:
        raise UserError(f"early_stopping_patience must be > 0, got {cfg.early_stopping_patience}")
    check_optimizer_config(cfg.optimizer, cfg.schedule)
    task = task or task_for(cfg)
    task.check_config()
    if require_data:
        check_devices(cfg)
    task.check_data(require_data)


def check_devices(cfg) -> None:
    """num_devices exists here, mesh.space divides it and the batch splits over the rest."""
    if not 0 <= cfg.num_devices <= jax.device_count():
        raise UserError(f"num_devices must be in [0, {jax.device_count()}] (0: every device; this machine has "
                        f"{jax.device_count()}), got {cfg.num_devices}")
    devices = cfg.num_devices or jax.device_count()
    sharding.check_space(mesh_space(cfg), devices)
    sharding.check_batch_size(cfg.batch_size, devices, mesh_space(cfg))


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When the loop logs, evaluates and saves; epochs in steps."""

    total_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, cfg, train_cubes: int) -> "Cadence":
        steps_per_epoch = cfg.steps_per_epoch or max(1, train_cubes // cfg.batch_size)
        return cls(cfg.total_steps, steps_per_epoch, cfg.log_every, cfg.eval_every or steps_per_epoch,
                   cfg.checkpoint_every or steps_per_epoch)

    def due(self, every: int, step: int) -> bool:
        return step % every == 0 or step == self.total_steps


@dataclasses.dataclass
class EarlyStopping:
    """Stop after `patience_epochs` epochs without a lower validation loss (checkpointed)."""

    patience_epochs: float
    best_val: float = math.inf
    best_step: int = -1
    stopped: bool = False

    def update(self, step: int, val_loss: float, steps_per_epoch: int) -> bool:
        """Record a validation loss at `step`; True when it is the best so far."""
        improved = val_loss < self.best_val
        if improved:
            self.best_val, self.best_step = val_loss, step
        self.stopped = (step - max(self.best_step, 0)) / steps_per_epoch >= self.patience_epochs
        return improved


def run_identity(cfg, task, cadence: Cadence) -> dict:
    """What a checkpoint must share with the config to be resumed exactly."""
    identity = {"task": task.name, "seed": cfg.seed, "batch_size": cfg.batch_size,
                "steps_per_epoch": cadence.steps_per_epoch, "optimizer": dict(cfg.optimizer),
                "schedule": dict(cfg.schedule), **task.identity()}
    if cfg.schedule.kind == "cosine":  # the cosine's length is the run's
        identity["total_steps"] = cfg.total_steps
    return json.loads(json.dumps(identity, default=list))


@dataclasses.dataclass
class Run:
    """Everything the loop needs, built once by setup_run."""

    cfg: object
    task: object
    workdir: Path
    mesh: object
    data: object
    cadence: Cadence
    graphdef: object
    tx: object
    train_step: object
    eval_step: object
    validation_key: object      # the frozen validation examples' preparation key
    validation: FrozenValidation
    checkpointer: Checkpointer
    identity: dict
    rng_key: list
    early: EarlyStopping
    plateau: Plateau | None

    def batch(self, step: int):
        local = self.data.train.batch(step, self.cfg.batch_size, process_index=jax.process_index(),
                                      process_count=jax.process_count())
        return sharding.global_batch(local, self.mesh)

    def meta(self, step: int) -> dict:
        # The RNG is (root key, step): every draw of step s derives from fold_in(root, s).
        return {"format": FORMAT, "step": step, "identity": self.identity, "data_sha256": self.data.digest,
                "rng_key": self.rng_key, "data_cursor": step, "early_stopping": dataclasses.asdict(self.early),
                "plateau": self.plateau.to_json() if self.plateau else None}


# Config fields only the loop reads (logging, checkpoint cadence, early stopping): runs
# that differ only in these trace the same train and eval programs.
_LOOP_ONLY_FIELDS = ("log_every", "log_seconds", "checkpoint_every", "keep_checkpoints", "images", "export_pytorch",
                     "allow_data_change", "early_stopping_patience")


def program_key(cfg, task, cadence: Cadence, graphdef, mesh) -> tuple:
    """What the jitted steps of setup_run depend on: the task, the config (the seed gives the
    keys they close over; total_steps only reaches the optimizer through the cosine
    schedule), the steps per epoch (step schedules), the model's structure and the mesh."""
    fields = {k: v for k, v in cfg.to_dict().items() if k not in _LOOP_ONLY_FIELDS}
    if cfg.schedule.kind != "cosine":
        fields.pop("total_steps")
    # jax_disable_most_optimizations (tests) changes the compiled programs, not the traced ones
    return (type(task).__name__, task.platform, json.dumps(fields, sort_keys=True, default=str),
            cadence.steps_per_epoch, graphdef, mesh, jax.config.read("jax_disable_most_optimizations"))


def setup_run(cfg, workdir: Path, task):
    """(Run, initial state): mesh, data, model, optimizer, steps, validation, checkpointer."""
    mesh = sharding.make_mesh(jax.devices()[: cfg.num_devices] if cfg.num_devices else None, mesh_space(cfg))
    data = task.load_data()
    cadence = Cadence.from_config(cfg, data.train_cubes)
    tx = task_optimizer(cfg, task, cadence.steps_per_epoch)
    # A run that will resume gets its weights from its checkpoint: pre-trained weights are
    # copied in only for a fresh start (so a moved or deleted init source does not stop a resume).
    graphdef, state = build_state(task, tx, cfg.seed, mesh, initialize=not has_checkpoints(workdir))
    root_key = jax.random.key(cfg.seed)
    validation_key = jax.random.fold_in(root_key, _VALIDATION_KEY)
    train_step, eval_step = RECENT_STEPS.get(program_key(cfg, task, cadence, graphdef, mesh), lambda: (
        LinedUp(make_train_step(graphdef, tx, task, root_key, mesh), "train step"),
        LinedUp(make_eval_step(graphdef, task, validation_key, mesh), "eval step")))
    run = Run(cfg, task, workdir, mesh, data, cadence, graphdef, tx, train_step=train_step, eval_step=eval_step,
              validation_key=validation_key,
              validation=FrozenValidation(data.validation, cfg.batch_size, mesh, cfg.images),
              checkpointer=Checkpointer(checkpoint_dir(workdir), keep=cfg.keep_checkpoints),
              identity=run_identity(cfg, task, cadence),
              rng_key=np.asarray(jax.random.key_data(root_key)).tolist(),
              early=EarlyStopping(cfg.early_stopping_patience),
              plateau=Plateau(cfg.schedule, cadence.steps_per_epoch, cadence.eval_every)
              if cfg.schedule.kind == "plateau" else None)
    return run, state


def resume(run: Run, state):
    """(state, start step): the latest checkpoint's, after checking it belongs to this config."""
    def check(meta):
        if meta.get("format") != FORMAT:
            raise UserError(f"{run.workdir}: the checkpoint has format {meta.get('format', 1)}, this genesis-jax "
                            f"reads format {FORMAT}; start a new --workdir")
        mismatch = identity_mismatch(meta["identity"], run.identity)
        if mismatch:
            raise UserError(f"{run.workdir} was trained with {'; '.join(mismatch)}. Resume with the recorded "
                            f"values (see {run.workdir / 'config.json'}) or use a new --workdir")
        recorded = meta.get("data_sha256")
        if recorded and recorded != run.data.digest and not run.cfg.allow_data_change:
            raise UserError(f"{run.workdir}: the data changed since the run started (sha256 {recorded[:16]}... "
                            f"recorded, {run.data.digest[:16]}... now: {run.data.description}); the resume would "
                            f"not repeat the run. Use a new --workdir, or pass --config.allow_data_change=True to "
                            f"go on with the new data")

    restored = run.checkpointer.restore_latest(abstract_like(state), check)
    if restored is None:
        return state, 0
    state, meta = restored
    run.early = EarlyStopping(**meta["early_stopping"])
    if run.plateau is not None:
        run.plateau = Plateau(run.cfg.schedule, run.cadence.steps_per_epoch, run.cadence.eval_every, meta["plateau"])
    print(f"resumed from step {meta['step']} in {run.checkpointer.directory}", flush=True)
    return state, meta["step"]


def write_run_info(run: Run) -> None:
    if jax.process_index() != 0:
        return
    write_run_files(run.workdir, run.cfg, {
        "genesis_jax": genesis_jax.__version__, "jax": jax.__version__, "python": platform.python_version(),
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(), "mesh": dict(run.mesh.shape), "seed": run.cfg.seed,
        "task": run.task.name, "steps_per_epoch": run.cadence.steps_per_epoch,
        "data": run.data.description, "data_sha256": run.data.digest, "channels": list(run.data.channels),
    })


class TrainLog:
    """Train metrics still on device, fetched at logging steps and before every save: a
    non-finite loss or parameter stops the run naming the step, so no checkpoint holds a
    diverged state."""

    def __init__(self, run: Run, writer: MetricWriter, summary: dict):
        self.run, self.writer, self.summary = run, writer, summary
        self.pending = []
        self.window_start = time.perf_counter()

    def add(self, step: int, metrics) -> None:
        self.pending.append((step, metrics))

    def due(self, step: int) -> bool:
        """Every log_every steps, and after log_seconds without a log on slow hardware (one
        process only: the non-finite check must happen at the same step on every process)."""
        overdue = jax.process_count() == 1 and time.perf_counter() - self.window_start >= self.run.cfg.log_seconds
        return self.run.cadence.due(self.run.cadence.log_every, step) or overdue

    def check(self) -> list[dict]:
        fetched = jax.device_get([metrics for _, metrics in self.pending])
        for (step, _), metrics in zip(self.pending, fetched):
            if not (np.isfinite(metrics["loss"]) and metrics["params_finite"]):
                self.run.checkpointer.wait()
                what = f"loss became {metrics['loss']}" if not np.isfinite(metrics["loss"]) else \
                    "parameters became non-finite"
                raise TrainingDiverged(f"{what} at step {step}; the last good checkpoint is in "
                                       f"{self.run.checkpointer.directory} (lower the learning rate?)")
            self.summary["train_losses"].append((step - 1, float(metrics["loss"])))
            self.summary["learning_rates"].append((step - 1, float(metrics["learning_rate"])))
        self.pending.clear()
        return fetched

    def log(self, step: int, bar) -> None:
        fetched = self.check()
        if not fetched:
            return
        elapsed = time.perf_counter() - self.window_start
        samples_per_s = len(fetched) * self.run.cfg.batch_size / max(elapsed, 1e-9)
        lr = float(fetched[-1]["learning_rate"])
        loss = float(np.mean([m["loss"] for m in fetched]))  # the bar and TensorBoard: the mean since the last log
        self.writer.scalars(step, {"train/loss": loss, "train/learning_rate": lr, "train/samples_per_s": samples_per_s})
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", samples_s=f"{samples_per_s:.1f}")
        self.window_start = time.perf_counter()


def evaluate(run: Run, state, step: int, writer: MetricWriter, summary: dict):
    """(state, val loss, improved): score the frozen set, update early stopping and the
    plateau rule (which may set a new learning rate in the state), log, picture."""
    whole_set = hasattr(run.task, "set_metrics")  # scores of the whole set at once (classification's AUC)
    metrics, (inputs, targets, outputs), scored = run.validation.evaluate(run.eval_step, state, keep=whole_set)
    if whole_set:
        metrics.update(run.task.set_metrics(*scored))
    if hasattr(run.task, "volume_metrics"):  # scores that need whole volumes (segmentation's Dice)
        metrics.update(run.task.volume_metrics(model_from_state(run.graphdef, state), run.mesh, run.cfg.batch_size))
    val_loss = metrics["loss"]
    improved = run.early.update(step, val_loss, run.cadence.steps_per_epoch)
    if run.plateau is not None:
        scale = run.plateau.update(val_loss)
        state = state._replace(opt_state=with_learning_rate(state.opt_state, run.cfg.optimizer.learning_rate * scale))
    summary["val_losses"].append((step, val_loss))
    writer.scalars(step, {**{f"val/{k}": v for k, v in metrics.items()}, "val/best": run.early.best_val})
    title = f"step {step}: validation loss {val_loss:.5f} (best {run.early.best_val:.5f})"
    writer.image(step, f"val/{run.task.picture_name}",
                 run.task.picture(inputs, targets, outputs, title, run.validation_key))
    extra = "".join(f", {name} {value:.4f}" for name, value in metrics.items() if name != "loss")
    tqdm.write(f"step {step}: val loss {val_loss:.5f}{extra}{' (best)' if improved else ''}")
    return state, val_loss, improved


# A disk that is full, read-only or over quota, or a file size limit: the user's to fix.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def disk_errors(run: Run):
    """A log, picture or event file that cannot be written stops the run with one line; the
    checkpoints (written separately, their failures reported by the Checkpointer) are intact."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        raise UserError(f"{write_failure(e)}; the run stopped there. Its checkpoints in {run.checkpointer.directory} "
                        f"are intact: free space (or fix the permissions) and run the same command to resume") from None


def train(cfg, workdir, task=None) -> dict:
    """Run (or resume) the task (default: pre-training) described by cfg in workdir."""
    task = task or task_for(cfg)
    validate_config(cfg, task)
    with new_workdir(Path(workdir)):
        run, state = setup_run(cfg, Path(workdir), task)
    state, step = resume(run, state)
    write_run_info(run)
    if jax.process_index() == 0:
        print(f"run directory: {run.workdir}", flush=True)
    summary = {"workdir": str(workdir), "start_step": step, "val_losses": [], "train_losses": [],
               "learning_rates": [], "preempted": False}
    writer = MetricWriter(run.workdir, enabled=jax.process_index() == 0)
    log, preemption = TrainLog(run, writer, summary), Preemption(run.checkpointer)
    bar = tqdm(total=cfg.total_steps, initial=step, unit="step", dynamic_ncols=True, mininterval=1.0,
               disable=jax.process_index() != 0)
    try:
        with disk_errors(run):
            while step < cfg.total_steps and not run.early.stopped:
                state, metrics = run.train_step(state, run.batch(step), step)
                step += 1  # from here on, `step` counts completed steps (checkpoints are numbered so)
                log.add(step, metrics)
                bar.update(1)
                if log.due(step):
                    log.log(step, bar)
                val_loss, improved = None, False
                if run.cadence.due(run.cadence.eval_every, step):
                    state, val_loss, improved = evaluate(run, state, step, writer, summary)
                summary["preempted"] = preemption.reached(step) and (preemption.requested or "SIGTERM")
                if run.cadence.due(run.cadence.checkpoint_every, step) or improved or summary["preempted"] \
                        or run.early.stopped:
                    log.check()
                    run.checkpointer.save(step, state, run.meta(step), val_loss if improved else None)
                if summary["preempted"]:
                    break
    finally:
        bar.close()
        writer.close()
        run.checkpointer.wait()
        preemption.restore()
    return finish(run, state, step, summary)


def finish(run: Run, state, step: int, summary: dict) -> dict:
    if summary["preempted"]:
        print(f"{summary['preempted']}: saved the checkpoint of step {step} in {run.checkpointer.directory}; "
              f"exiting (run the same command to resume)", flush=True)
    elif run.early.stopped:
        tqdm.write(f"early stopping at step {step}: no better validation loss for {run.cfg.early_stopping_patience} "
                   f"epochs (best {run.early.best_val:.5f} at step {run.early.best_step})")
    summary.update(end_step=step, best_val=run.early.best_val, best_step=run.early.best_step)
    if run.cfg.export_pytorch and not summary["preempted"] and jax.process_index() == 0:
        summary["pytorch_export"] = export_best(run.workdir, run.checkpointer, run.graphdef, state)
    run.checkpointer.close()
    return summary


