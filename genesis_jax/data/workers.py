"""prepare's worker processes: inputs prepared in parallel, handed back in input order.

Order is what makes a store independent of the worker count: the main process writes
input k's cubes after those of every input before it, whichever worker finished first.
At most 2 x workers inputs are in flight, so finished cubes waiting for a slow input
before them stay bounded in memory.

A worker that dies (a reader's crash, the kernel's out-of-memory killer) takes the pool
with it and does not say which input it held; the inputs that were in flight are then
prepared again one at a time, each in a process of its own, so the one that kills its
process is named with its exit signal, and the others go on.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from genesis_jax.data.preparing import Prepared, input_name, prepare_input

# Workers are spawned, not forked: the main process holds TensorStore's threads.
_CONTEXT = multiprocessing.get_context("spawn")
# Bytes a worker may need at its peak for one full-size CT (the reading, the [0, 1] copy and
# the filter's integer tables; docs/data.md, "Many cores"): the default worker count keeps
# this much memory per worker.
WORKER_MEMORY_BYTES = 4 << 30


def cores() -> int:
    """The cores this process may run on (a SLURM allocation or taskset, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes this process may still use: the machine's available memory, or the cgroup's
    limit (a container, a SLURM job) where that is lower; None where unknown."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as used:
            text = limit.read().strip()
            if text != "max":
                found.append(int(text) - int(used.read().strip()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def default_workers() -> tuple[int, str]:
    """(worker count, why): one per core, as many as memory holds at WORKER_MEMORY_BYTES each."""
    count, memory = cores(), available_memory()
    if memory is None:
        return count, f"{count} core(s)"
    fit = max(1, memory // WORKER_MEMORY_BYTES)
    why = f"{count} core(s), memory for {fit} at {WORKER_MEMORY_BYTES >> 30} GiB each"
    return min(count, fit), why


def prepared_in_order(items: list[tuple[int, object]], recipe, workers: int):
    """Prepared results of (index, input) items, in the items' order; workers == 1
    prepares them here, in this process."""
    if workers == 1:
        for index, item in items:
            yield prepare_input(item, index, recipe)
        return
    todo = deque(items)
    while todo:
        yield from _pool(todo, recipe, workers)


def _pool(todo: deque, recipe, workers: int):
    """Results from one pool until `todo` is empty or a worker died (then the inputs in
    flight are prepared alone, and the caller starts a new pool for the rest)."""
    pool, flight = ProcessPoolExecutor(max_workers=workers, mp_context=_CONTEXT), deque()
    try:
        while todo or flight:
            while todo and len(flight) < 2 * workers:
                index, item = todo.popleft()
                flight.append((index, item, pool.submit(prepare_input, item, index, recipe)))
            index, item, future = flight[0]
            try:
                result = future.result()
            except BrokenProcessPool:
                break
            except BaseException as e:  # a bug, not a bad input: stop, naming the input it happened on
                e.add_note(f"while preparing {input_name(item)} in a worker process")
                raise
            flight.popleft()
            yield result
    finally:  # also when the caller stops early: queued inputs are dropped, not prepared
        pool.shutdown(wait=True, cancel_futures=True)
    for index, item, _ in flight:
        yield _alone(index, item, recipe)


def _alone(index: int, item, recipe) -> Prepared:
    """Input `index` prepared in a process of its own: its result, or, if the process
    dies, a Prepared whose problem names the input and how its process ended."""
    receive, send = _CONTEXT.Pipe(duplex=False)
    process = _CONTEXT.Process(target=_send_prepared, args=(send, item, index, recipe), daemon=True)
    process.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:  # the process ended without sending (its exit code is read after the join below)
        result = None
    finally:
        process.join()
        receive.close()
    if result is None:
        return Prepared(index, input_name(item), problem=f"{input_name(item)}: the worker preparing it died "
                                                         f"({_how_it_ended(process.exitcode)})")
    if isinstance(result, BaseException):
        result.add_note(f"while preparing {input_name(item)} in a worker process")
        raise result
    return result


def _send_prepared(send, item, index, recipe) -> None:
    try:
        result = prepare_input(item, index, recipe)
    except Exception as e:  # a bug: the main process raises it
        result = e
    send.send(result)
    send.close()


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = ": out of memory? use fewer --workers" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"
