"""Preemption and Ctrl-C for the loop: save at the next step boundary, then exit; a second
Ctrl-C aborts at once."""

from __future__ import annotations

import os
import signal
import sys

import jax
from tqdm import tqdm

from genesis_jax.checkpoint import Checkpointer


class Preemption:
    """SIGTERM and Ctrl-C (SIGINT): save at the next step boundary and exit cleanly; a
    second Ctrl-C ends the process at once (exit 130, nothing saved). One process reads
    its own flag; several ask JAX's preemption sync point (through Orbax), which agrees on
    one step for all of them without a collective per step (there, SIGINT keeps its
    default: a cluster delivers SIGTERM)."""

    SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}

    def __init__(self, checkpointer: Checkpointer):
        self.checkpointer, self.requested = checkpointer, None
        self.single = jax.process_count() == 1
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS} if self.single else {}

    def _handle(self, signum, frame):
        if self.requested == "Ctrl-C" and signum == signal.SIGINT:
            self._abort()
        self.requested = self.SIGNALS[signum]
        tqdm.write(f"{self.requested}: saving a checkpoint at the end of this step, then exiting"
                   + (" (Ctrl-C again aborts now, without saving)" if signum == signal.SIGINT else ""))

    def reached(self, step: int) -> bool:
        return bool(self.requested) if self.single else self.checkpointer.reached_preemption(step)

    def restore(self):
        """The handlers from before the loop; after a Ctrl-C, SIGINT keeps this one (a second
        Ctrl-C while the run exits still aborts in one line, never a KeyboardInterrupt)."""
        for sig, previous in self._previous.items():
            if not (sig == signal.SIGINT and self.requested == "Ctrl-C"):
                signal.signal(sig, previous)

    def _abort(self):
        abort_now(f"nothing saved since the last checkpoint in {self.checkpointer.directory} (run the same "
                  f"command to resume from it)")


def abort_now(why: str) -> None:
    """End the process at once, exit code 130, one line. Not an exception: one raised from
    a signal handler can land where it is swallowed (a weakref callback, a finally that
    waits on the async save). An unfinished checkpoint write is removed, with a warning,
    by the next run."""
    sys.stderr.write(f"\naborted: {why}\n")
    sys.stderr.flush()
    os._exit(130)
