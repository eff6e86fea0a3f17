"""Orbax checkpoints of a run: one CheckpointManager keeps the latest N and the best.

Layout (format 2): checkpoints/<step>/{state, meta}. `state` is the train state
(parameters, BatchNorm statistics, optimizer state with its learning rate); `meta` is
JSON: format, step, the run identity (task, model, optimizer, schedule, data, batch,
seed), the data digest, RNG key, data cursor, early-stopping and plateau state.
Evaluation steps that improved the validation loss are saved with it as the Orbax
metric `val_loss`; the preservation policy keeps the latest `keep` checkpoints plus the
one with the lowest `val_loss`.

Resume is careful with what it finds: the identity of the newest checkpoint is compared
with the config before anything is read or moved, and a mismatch is refused naming the
fields. Only a checkpoint shown to be damaged (its metadata unreadable, or its arrays
failing to decode) is set aside, renamed `<step>.unreadable-<time>`, and only once an
older one has been restored; if none can be restored the run stops with an error.
Half-written saves are never listed by Orbax (it writes `<step>.orbax-checkpoint-tmp-*`
and renames on commit); any found are reported and removed.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import shutil
import sys
import time
import traceback
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from genesis_jax.errors import UserError, write_failure

FORMAT = 2
# What damaged files look like when Orbax reads them (seen here: zeroed, truncated or
# deleted files): TensorStore status codes and read errors, a missing item. A shape or
# structure mismatch ("Requested shape ... is not compatible") is not among them: that
# is a bug or a config change, and it propagates.
_DAMAGE_MARKERS = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "Error reading", "Error opening",
                   "was not found in the checkpoint", "checksum", "corrupt")


# TensorStore reports a failed file write as a ValueError carrying one of these.
_WRITE_FAILURES = ("os_error_code", "OUT_OF_RANGE", "RESOURCE_EXHAUSTED", "PERMISSION_DENIED",
                   "No space left", "Read-only file system", "File too large", "Disk quota")


def abstract_like(tree):
    """ShapeDtypeStructs carrying each leaf's sharding: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def identity_mismatch(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """'field=old, the config says new' for every leaf that differs (JSON-normalised)."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        name = f"{prefix}{key}"
        old, new = recorded.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(old, dict) and isinstance(new, dict):
            out.extend(identity_mismatch(old, new, name + "."))
        elif _canonical(old) != _canonical(new):
            out.append(f"{name}={_show(old)}, the config says {_show(new)}")
    return out


def _canonical(value):
    return json.loads(json.dumps(value, default=str))


def _show(value) -> str:
    value = _canonical(value)
    return json.dumps(value) if isinstance(value, str) and not value else \
        (",".join(map(str, value)) if isinstance(value, list) else str(value))


def _val_loss(metrics: dict) -> float:
    return metrics["val_loss"]


class _SavesWithoutMetricsAreIntended(logging.Filter):
    """With best_fn set, Orbax warns at every save that carries no metrics; ours carry
    val_loss only when it improved (the best checkpoint), so that warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_SavesWithoutMetricsAreIntended())


class _EchoesOfAFailedWrite(logging.Filter):
    """A checkpoint write that fails (a full disk) makes Orbax's background threads log it
    once per array fragment and per thread, with tracebacks: thousands of lines, seen.
    The failure reaches the main thread at the next save or wait, which reports it once
    as CheckpointWriteError; these records of the same failure are dropped. Records of
    anything else pass."""

    seen = False  # a write failure was logged in this process (the thread echoes below follow it)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        if record.levelno >= logging.ERROR and any(m in text for m in _WRITE_FAILURES):
            _EchoesOfAFailedWrite.seen = True
            return False
        return True


def _closed_loop(error) -> bool:
    return isinstance(error, RuntimeError) and "Event loop is closed" in str(error)


class _UnraisableEchoes:
    """After a failed write, Orbax's futures still post to event loops already closed;
    TensorStore's callbacks report what that raises as unraisable (one traceback each,
    dozens of them). Those that follow a failed write are dropped. One may also come
    before anything has logged or raised the failure (seen: `seen` still False), so
    they are held, not printed, and printed at exit only if no write failed."""

    def __init__(self, previous):
        self.previous, self.held = previous, []
        atexit.register(self.release)

    def __call__(self, args):
        if not _closed_loop(args.exc_value):
            self.previous(args)
        elif not _EchoesOfAFailedWrite.seen:
            self.held.append("".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))

    def release(self) -> None:
        if not _EchoesOfAFailedWrite.seen:
            sys.stderr.write("".join(self.held))


for _name in ("absl", "asyncio"):
    logging.getLogger(_name).addFilter(_EchoesOfAFailedWrite())
sys.unraisablehook = _UnraisableEchoes(sys.unraisablehook)


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, file size limit, read-only directory);
    the earlier checkpoints are intact."""


@functools.cache  # once per process, after jax.distributed (the Checkpointer comes after it)
def _save_one_copy_of_replicated_arrays() -> None:
    """In one process, let Orbax copy each replicated array to the host once.

    Its default on CPU and TPU (replica-parallel saving) cuts every replicated array into
    one slice per device, so that several hosts can write parts of it in parallel; in one
    process the slices only add an eager slice op and a transfer per device per array. On
    8 simulated CPU devices, width 4: 3 saves of a run took 3.47 s with the slices and
    under 1 s without (cProfile, this machine). Several processes keep Orbax's default.
    """
    if jax.process_count() == 1:
        from orbax.checkpoint._src.metadata import array_metadata_store  # the store the default handler has
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)  # Orbax warns "... overriding jax.Array" on every run otherwise
        try:
            ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
                use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()), override=True)
        finally:
            absl.setLevel(level)


class Checkpointer:
    def __init__(self, directory, keep: int = 3):
        _save_one_copy_of_replicated_arrays()
        self.directory = Path(directory).absolute()
        self.failed = False
        _refuse_old_layout(self.directory)
        self.incomplete = sorted(p.name for p in self.directory.glob("*.orbax-checkpoint-tmp*")) \
            if self.directory.is_dir() else []
        # best_fn is what makes Orbax write a step's metrics at all (without it they are
        # dropped silently, and BestN then has nothing to keep); which steps are kept is
        # decided by the preservation policy alone.
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=True, create=True, cleanup_tmp_directories=True,
            best_fn=_val_loss, best_mode="min",
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=keep),
                policies.BestN(get_metric_fn=_val_loss, reverse=True, n=1,
                               keep_checkpoints_without_metrics=False)]))
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        for name in self.incomplete:
            print(f"warning: {self.directory / name} is a checkpoint whose write never finished; removed",
                  flush=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, meta: dict, val_loss: float | None = None) -> None:
        """Start writing the checkpoint of `step` (asynchronously). CheckpointWriteError when
        the disk cannot take it: before writing when the free space is visibly short, else
        when the write fails (reported here or by the next save or wait)."""
        self._check_free_space(step, state)
        with self._write_errors():
            # A run that fell back past a damaged checkpoint reaches its step again: replace it.
            if step in self.manager.all_steps():
                self.manager.wait_until_finished()
                self.manager.delete(step)
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(meta)),
                              metrics=None if val_loss is None else {"val_loss": float(val_loss)}, force=True)

    def _check_free_space(self, step: int, state) -> None:
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:  # not a local directory: nothing to measure
            return
        # A checkpoint is the state's arrays and a little metadata (width 4: 2.39 MB of
        # arrays, 2.60 MB on disk): no need to measure one on disk at every save.
        needed = int(sum(x.nbytes for x in jax.tree.leaves(state)) * 1.1) + (1 << 20)
        if free < needed:
            self.failed = True
            raise CheckpointWriteError(f"{self.directory}: not enough free space for the checkpoint of step {step} "
                                       f"(about {needed / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free); "
                                       f"nothing was written. {self._intact()}")

    @contextlib.contextmanager
    def _write_errors(self):
        """Orbax's failed background writes, as one CheckpointWriteError naming the directory
        and the system's reason (a full disk, a file size limit, a read-only directory)."""
        try:
            yield
        except (OSError, ValueError) as e:
            text = str(e)
            if not isinstance(e, OSError) and not any(m in text for m in _WRITE_FAILURES):
                raise  # not a failed write: a bug, which keeps its traceback
            self.failed = _EchoesOfAFailedWrite.seen = True
            raise CheckpointWriteError(f"{self.directory}: writing a checkpoint failed ({write_failure(e)}). "
                                       f"{self._intact()}") from None

    def _intact(self) -> str:
        # From the disk, not self.steps(): Orbax lists a step as soon as its asynchronous
        # write starts (CheckpointManager.save adds it before the write finishes), so a write
        # that failed in the background would be named intact. A step directory is renamed
        # into place only when its write is complete.
        steps = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        if not steps:
            return "No complete checkpoint yet; free space or fix the directory, then start again"
        which = f"checkpoints of steps {', '.join(map(str, steps))} are" if len(steps) > 1 else \
            f"checkpoint of step {steps[0]} is"
        return (f"The {which} intact: free space (or fix the permissions) and run the same command to resume "
                f"from step {steps[-1]}")

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_state):
        return self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))["state"]

    def best_step(self) -> int | None:
        metrics = {step: self.manager.metrics(step) for step in self.steps()}
        scored = [(m["val_loss"], step) for step, m in metrics.items() if m]
        return min(scored)[1] if scored else None

    def restore_latest(self, abstract_state, check_meta):
        """(state, meta) of the newest checkpoint that can be restored, None when there is none.

        check_meta(meta) raises UserError when the run cannot continue from it (another
        model, optimizer, data...): that stops the resume with nothing touched. A damaged
        newer checkpoint is set aside after an older one restored; when all are damaged,
        UserError.
        """
        self.manager.reload()
        damaged = []
        for step in reversed(self.steps()):
            try:
                meta = self.read_meta(step)
            except Exception as e:  # noqa: BLE001 - classified below; anything else propagates
                damaged.append((step, _damage(e)))
                continue
            check_meta(meta)
            try:
                state = self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001
                damaged.append((step, _damage(e)))
                continue
            self._set_aside(damaged)
            return state, meta
        if damaged:
            listed = "; ".join(f"step {s}: {why}" for s, why in damaged)
            raise UserError(f"{self.directory}: no checkpoint can be restored ({listed}); nothing was changed. "
                            f"Move the directory away to start over, or use a new --workdir")
        return None

    def _set_aside(self, damaged) -> None:
        for step, why in damaged:
            print(f"warning: the checkpoint of step {step} is damaged ({why}); set aside, resuming from an "
                  f"earlier one", flush=True)
        if not damaged or jax.process_index() != 0:
            return
        for step, _ in damaged:
            path = self.directory / str(step)
            if path.exists():
                path.rename(path.with_name(f"{step}.unreadable-{int(time.time())}"))
        self.manager.reload()

    def reached_preemption(self, step: int) -> bool:
        """Several processes: JAX's preemption sync point (every process stops at the same step)."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        if self.failed:  # already reported; Orbax would raise the same failure again
            return
        with self._write_errors():
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()


def _damage(error: Exception) -> str:
    """One line on what is damaged; re-raises errors that do not look like damaged files (bugs)."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, (OSError, json.JSONDecodeError, EOFError)) or any(m in text for m in _DAMAGE_MARKERS):
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"{type(error).__name__}: {first[:160]}"
    raise error


def _refuse_old_layout(directory: Path) -> None:
    if (directory / "latest").is_dir() or (directory / "best").is_dir():
        raise UserError(f"{directory}: checkpoints in the layout of genesis-jax before 0.2 (latest/, best/), "
                        f"which this version cannot resume; start a new --workdir (the old best weights can still "
                        f"be exported with an older genesis-jax)")
