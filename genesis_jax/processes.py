"""Several processes in one run: line them up before the collectives that would give up
waiting.

On CPU hosts, JAX's collectives go through gloo, whose every connection and operation
gives up after 30 s. The processes drift apart by more than that where one of them
compiles what another loads: JAX writes its persistent compilation cache from process 0
only, so on a rerun process 0 loads the model's initialisers and the steps in a second
while the others compile them for a minute (seen on 2 cores: process 0 failed waiting
for process 1 at the first transfer of the model, 2.5 min apart). The coordination
service's barriers wait as long as we ask, so each collective phase starts behind one.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import orbax.checkpoint as ocp

BARRIER_TIMEOUT_S = 1800  # a cold compile of the full model on a slow host, with room to spare
_barriers = itertools.count()


def wait_for_all_processes(what: str) -> None:
    """Block until every process of the run got here (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        ocp.multihost.get_barrier_sync_fn()(key=f"genesis_jax {what} #{next(_barriers)}",
                                            timeout_ms=BARRIER_TIMEOUT_S * 1000)


def signature(args) -> tuple:
    """What a compiled program is specific to: the arguments' tree, shapes, dtypes and
    shardings (read from the arrays' metadata: a global array cannot come to the host)."""
    leaves, tree = jax.tree.flatten(args)
    return (tree, *((np.shape(x), getattr(x, "dtype", type(x)), getattr(x, "sharding", None)) for x in leaves))


class LinedUp:
    """A jitted function whose compile, in a run of several processes, ends at a barrier:
    each new argument signature is compiled ahead of time (lower + compile), every process
    waits for the others, then all run it, so no process reaches its collectives while
    another still compiles. One process: the jitted function itself."""

    def __init__(self, jitted, what: str):
        self.jitted, self.what, self.compiled = jitted, what, {}

    def __call__(self, *args):
        if jax.process_count() == 1:
            return self.jitted(*args)
        key = signature(args)
        if key not in self.compiled:
            self.compiled[key] = self.jitted.lower(*args).compile()
            wait_for_all_processes(f"{self.what} compiled")
        return self.compiled[key](*args)
