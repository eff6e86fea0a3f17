"""Orbax checkpoints: the latest N (async) plus the best by validation loss.

Saved per checkpoint: the train state (parameters, BatchNorm statistics, momentum), and
JSON metadata (step, learning rate, schedule and early-stopping state, data cursor,
seed). Restoring needs the abstract state of the current mesh, so a run can resume on
another device count. An unreadable latest checkpoint (half-written, corrupt) is
skipped with a warning in favour of the one before.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def abstract_like(tree):
    """ShapeDtypeStructs carrying each leaf's sharding: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
    def __init__(self, directory, keep: int = 3):
        directory = Path(directory).absolute()
        self.directory = directory
        def options(keep_n, name):
            # Both managers may save the same step at once; across processes their barriers
            # must not share names (seen: "Barrier _async_write_complete.2 is already ongoing").
            return ocp.CheckpointManagerOptions(
                max_to_keep=keep_n, enable_async_checkpointing=True, create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name))

        self.latest = ocp.CheckpointManager(directory / "latest", options=options(keep, "latest"))
        self.best = ocp.CheckpointManager(directory / "best", options=options(1, "best"))

    @staticmethod
    def _args(state, meta):
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state, meta: dict) -> None:
        self._save(self.latest, step, state, meta)

    def save_best(self, step: int, state, meta: dict) -> None:
        self._save(self.best, step, state, meta)

    def _save(self, manager, step, state, meta) -> None:
        # A resumed run can reach a step saved before (the best of a run that fell back
        # past a corrupt checkpoint): the new state replaces it.
        if step in manager.all_steps():
            manager.wait_until_finished()
            manager.delete(step)
        manager.save(step, args=self._args(state, meta), force=True)

    def restore_latest(self, abstract_state):
        """(state, meta) of the newest readable checkpoint, or None when there is none.

        Unreadable newer steps are moved aside (renamed `<step>.unreadable`), so the run
        can write those steps again.
        """
        self.latest.reload()
        unreadable = []
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                restored = self._restore(self.latest, step, abstract_state)
                self._move_aside(unreadable)
                return restored
            except Exception as e:  # a half-written or corrupt step: try the one before
                unreadable.append(step)
                log.warning("checkpoint at step %d is unreadable (%s: %s); falling back to an earlier one",
                            step, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
                print(f"warning: checkpoint at step {step} is unreadable ({type(e).__name__}); "
                      f"falling back to an earlier one", flush=True)
        self._move_aside(unreadable)
        return None

    def _move_aside(self, steps) -> None:
        if not steps or jax.process_index() != 0:
            return
        for step in steps:
            path = self.directory / "latest" / str(step)
            if path.exists():
                path.rename(path.with_name(f"{step}.unreadable-{int(time.time())}"))
        self.latest.reload()

    def restore_best(self, abstract_state):
        self.best.reload()
        step = self.best.latest_step()
        if step is None:
            return None
        return self._restore(self.best, step, abstract_state)

    @staticmethod
    def _restore(manager, step, abstract_state):
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()
