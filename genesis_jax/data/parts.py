"""A cube store prepared in parts that survive a kill: journals, shards, finalize, commit.

Every prepare is shard I of N (a single run is 0/1). A shard takes inputs I, I + N,
I + 2N, ... of the input list and appends their cubes, in that order, to its part
array; after each input's cubes are written, a journal entry records it (its source
record, where its cubes are, or why it was skipped). A killed shard, run again with the
same command, keeps the journaled inputs, cuts its part back to them and goes on: the
cubes of an input depend only on the seed and its position, so the part ends as an
uninterrupted run's would. Each journal holds its plan (the inputs and every option
that shapes the cubes); a run with another plan is refused, naming the change.

Where the work lives (store.work_location): beside a local store, `.NAME.preparing/`;
inside a URL's prefix, `prepare/`. In it: `journal/I-of-N/` (plan.json, owner.json,
done/NNNNNNNN.json, complete.json) and, for N > 1, `parts/I-of-N/` (zarr arrays in the
store's format). A single run's part is the store being built (`.NAME.preparing/store`,
or the URL's own array): nothing is copied at the end. With N > 1, finalize copies the
parts' cubes into one array in input order, the order a single run writes.

Commit (a single run's end, or finalize): the store's attributes (sources and skipped
inputs of every part, count, sha256 of the cubes in order), then `commit.json` with the
digest of the finished zarr.json, then the store is put in place (local: renamed over
the previous one, data/publish.py; a URL: its attributes lose `complete: false`), then
the work is removed. A kill between these steps is finished by the next prepare or
finalize of the store, which recognises the digest.

One process writes a shard at a time: owner.json names it (host, pid, start time) and is
refreshed every BEAT_SECONDS; a second process is refused while the owner lives on the
same host, and waits while an owner on another host (whose processes it cannot see) has
been seen in the last STALE_SECONDS: a task requeued on another node takes over once
its killed predecessor has gone quiet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tensorstore as ts

from genesis_jax.data.publish import host_name, process_alive, process_start, publish, remove_tree
from genesis_jax.data.store import (ATTRIBUTES_KEY, child_location, create_cube_array, metadata_digest, open_cube_array,
                                    open_kvstore, read_metadata, reset_array, resize_cubes, store_attributes, store_location,
                                    work_location, write_attributes, write_cubes)
from genesis_jax.errors import UserError

BEAT_SECONDS = 30
STALE_SECONDS = 120
READ_CUBES = 64  # cubes read at a time when hashing or copying parts


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """'I/N' (0 <= I < N); ValueError otherwise."""
        index, count = (int(v) for v in text.split("/"))
        if not 0 <= index < count:
            raise ValueError(text)
        return cls(index, count)

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    @property
    def label(self) -> str:
        return f"shard {self.index}/{self.count}"

    def indices(self, total: int) -> range:
        """The input positions this shard prepares."""
        return range(self.index, total, self.count)


def _shard_of(name: str) -> Shard:
    index, count = name.split("-of-")
    return Shard(int(index), int(count))


class Journal:
    """One shard's record of its work (keys under work/journal/I-of-N/)."""

    def __init__(self, location, shard: Shard):
        self.shard, self.location = shard, location
        self.kv = open_kvstore(location)

    def read(self, key: str) -> dict | None:
        result = self.kv.read(key).result()
        return json.loads(result.value) if result.state == "value" else None

    def write(self, key: str, value: dict) -> None:
        self.kv.write(key, json.dumps(value, indent=1).encode()).result()

    def entries(self) -> list[dict]:
        """The inputs done (prepared or skipped), in input order."""
        keys = sorted(k.decode() for k in self.kv.list(ts.KvStore.KeyRange("done/", "done0")).result())
        reads = [self.kv.read(k) for k in keys]  # all at once: one round trip's wait on an object store, not one each
        return [json.loads(r.result().value) for r in reads]

    def add(self, entry: dict) -> None:
        self.write(f"done/{entry['index']:08d}.json", entry)

    def clear(self) -> None:
        self.kv.delete_range(ts.KvStore.KeyRange()).result()

    def owner_problem(self) -> tuple[str | None, float | None]:
        """(why this process may not take the shard now, or None; the seconds until it may:
        None while its writer runs on this machine)."""
        owner = self.read("owner.json")
        if owner is None or owner["pid"] == os.getpid() and owner["host"] == host_name():
            return None, None
        if owner["host"] == host_name():
            if not process_alive(owner["pid"]) or process_start(owner["pid"]) != owner.get("started"):
                return None, None
            return f"process {owner['pid']} on this machine is preparing it", None
        seen = time.time() - owner["beat"]
        if seen > STALE_SECONDS:
            return None, None
        return f"process {owner['pid']} on {owner['host']} was preparing it {seen:.0f} s ago", STALE_SECONDS - seen

    def _beat_until(self, stop: threading.Event) -> None:
        while not stop.wait(BEAT_SECONDS):
            self.beat()

    def beat(self) -> None:
        self.write("owner.json", {"host": host_name(), "pid": os.getpid(), "started": process_start(os.getpid()),
                                  "beat": time.time()})

    @contextlib.contextmanager
    def owned(self, out):
        """Hold the shard while the block runs: refuse if another process does, refresh the
        claim every BEAT_SECONDS, let it go at the end (a kill leaves it to expire)."""
        problem, wait = self.owner_problem()
        while problem:
            if wait is None:
                raise UserError(f"{out}: {self.shard.label} is taken: {problem}")
            print(f"{out}: {self.shard.label}: {problem}; waiting {wait:.0f} s, until it has not been seen for "
                  f"{STALE_SECONDS} s (then it is taken to have died)", file=sys.stderr, flush=True)
            time.sleep(wait + 0.5)
            problem, wait = self.owner_problem()
        self.beat()
        stop = threading.Event()
        beating = threading.Thread(target=self._beat_until, args=(stop,), daemon=True)
        beating.start()
        try:
            yield self
        finally:
            stop.set()
            beating.join()
            self.kv.write("owner.json", None).result()


class Site:
    """Where the store `out` is prepared: its work area and the array being built."""

    def __init__(self, out):
        self.out = str(out)
        self.target = store_location(out)
        self.local = isinstance(self.target, Path)
        self.work = work_location(self.target)
        self.build = child_location(self.work, "store") if self.local else self.target

    def journal(self, shard: Shard) -> Journal:
        return Journal(child_location(child_location(self.work, "journal"), shard.name), shard)

    def part(self, shard: Shard):
        """The array a shard writes: the store being built for a single run, its own otherwise."""
        return self.build if shard.count == 1 else child_location(child_location(self.work, "parts"), shard.name)

    def journals(self) -> dict[str, Journal]:
        """Every shard journal in the work area, by name (I-of-N)."""
        kv = open_kvstore(child_location(self.work, "journal"))
        names = {k.decode().split("/")[0] for k in kv.list().result()}
        return {name: self.journal(_shard_of(name)) for name in sorted(names)}

    def discard(self, shard: Shard) -> None:
        """Forget a shard's work: its journal and its part; the whole work area once no
        shard has any left."""
        self.journal(shard).clear()
        if shard.count > 1:
            open_kvstore(self.part(shard)).delete_range(ts.KvStore.KeyRange()).result()
        else:  # the store being built: a URL's lives beside the work, at its root
            reset_array(self.build)
        if not self.journals():
            self.remove()

    def remove(self) -> None:
        """The work area, gone (a URL's array stays: it is the store)."""
        if self.local:
            remove_tree(self.work)
        else:
            open_kvstore(self.work).delete_range(ts.KvStore.KeyRange()).result()

    def finish_interrupted_commit(self) -> dict | None:
        """Finish a commit that a kill interrupted (see the module's docstring): the plan of
        the store now in place, or None if there was none to finish."""
        kv = open_kvstore(self.work)
        result = kv.read("commit.json").result()
        if result.state != "value":
            return None
        record = json.loads(result.value)
        if _digest(self.target) == record["digest"]:  # put in place; only the work was left
            self.remove()
            return record["plan"]
        if self.local and _digest(self.build) == record["digest"]:  # finished, not yet in place
            publish(self.build, self.target)
            self.remove()
            return record["plan"]
        kv.write("commit.json", None).result()  # killed before the attributes: the commit is redone
        return None


def _digest(location) -> str | None:
    meta = read_metadata(location)
    return None if meta is None else metadata_digest(meta)


def plan_changes(before: dict, now: dict) -> list[str]:
    """What differs between two plans, one phrase each (inputs, then options)."""
    changes = []
    old, new = before["inputs"], now["inputs"]
    if old != new:
        added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
        what = [f"{len(old)} inputs before, {len(new)} now"]
        what += [f"added {_some(added)}"] if added else []
        what += [f"missing {_some(removed)}"] if removed else []
        what += ["the same inputs in another order"] if not added and not removed else []
        changes.append("the input list changed (" + "; ".join(what) + ")")
    for group in ("attributes", "options"):
        for key in sorted(set(before[group]) | set(now[group])):
            if before[group].get(key) != now[group].get(key):
                changes.append(f"{key} was {before[group].get(key)!r}, now {now[group].get(key)!r}")
    for key in ("channels", "skipped", "version"):
        if before[key] != now[key]:
            changes.append(f"{key} was {before[key]!r}, now {now[key]!r}")
    return changes


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_other_journals(site: Site, shard: Shard, plan: dict, restart: bool) -> None:
    """Before a shard starts: work of another shard count, or (without --restart) a
    journal of this prepare with another plan, is refused naming what differs;
    --restart discards this shard's work and any of another shard count."""
    for name, journal in site.journals().items():
        other = journal.shard
        if other.count != shard.count:
            if not restart:
                how = "in one process" if other.count == 1 else f"in {other.count} shards"
                raise UserError(f"{site.out}: an unfinished prepare of it {how} is in {site.work}; run it to the "
                                f"end, or pass --restart to discard it")
            site.discard(other)
        elif other == shard and restart:
            site.discard(shard)
        elif not restart:
            before = journal.read("plan.json")
            changes = plan_changes(before, plan) if before else []
            if changes:
                rerun = "" if other == shard else f" (by {other.label})"
                raise UserError(f"{site.out}: an unfinished prepare of it{rerun} ran with other inputs or options: "
                                f"{'; '.join(changes)}. Run the same command to finish it, or pass --restart to "
                                f"start over")


class PartWriter:
    """A shard's part array, appended to input by input, each input journaled after its cubes."""

    def __init__(self, site: Site, journal: Journal, plan: dict, entries: list[dict], hashed: bool):
        self.journal, self.location = journal, site.part(journal.shard)
        self.entries = list(entries)  # the journal's, in input order, kept as they are added
        self.count = sum(e.get("cubes", 0) for e in entries)
        self.hash = hashlib.sha256() if hashed else None
        if entries:
            self.array = resize_cubes(open_cube_array(self.location), self.count)  # cut back to the journaled
            if self.hash is not None:
                _hash_rows(self.hash, self.array, 0, self.count)
        else:
            fresh = {"complete": False} if self.location == site.target else {}
            self.array = create_cube_array(self.location, plan_cube_shape(plan), fresh)
            journal.write("plan.json", plan)

    def add(self, prepared, skipped: bool = False) -> None:
        """Journal an input: its cubes appended first, or the problem it was skipped for."""
        entry = {"index": prepared.index, "name": prepared.name}
        if skipped:
            entry["skipped"] = prepared.problem
        else:
            self.array = write_cubes(self.array, self.count, prepared.cubes)
            if self.hash is not None:
                self.hash.update(prepared.cubes.tobytes())
            entry.update(offset=self.count, cubes=len(prepared.cubes), record=prepared.record)
            self.count += len(prepared.cubes)
        self.journal.add(entry)
        self.entries.append(entry)


def plan_cube_shape(plan: dict) -> tuple[int, ...]:
    return (*plan["attributes"]["cube_shape"], len(plan["channels"]))


def _hash_rows(hasher, array, start: int, stop: int) -> None:
    for low in range(start, stop, READ_CUBES):
        hasher.update(np.ascontiguousarray(array[low:min(stop, low + READ_CUBES)].read().result()).tobytes())


def commit(site: Site, plan: dict, entries: list[dict], count: int, cubes_sha256: str) -> None:
    """The store's attributes written, the store put in place, the work removed."""
    sources = [e["record"] for e in entries if "record" in e]
    skipped = list(plan["skipped"]) + [e["skipped"] for e in entries if "skipped" in e]
    attributes = store_attributes({"package": "genesis-jax", "version": plan["version"], **plan["attributes"],
                                   "sources": sources, "skipped": skipped}, plan["channels"], plan_cube_shape(plan),
                                  count, cubes_sha256)
    meta = read_metadata(site.build)
    meta.setdefault("attributes", {})[ATTRIBUTES_KEY] = attributes
    record = {"digest": metadata_digest(meta), "plan": plan}
    open_kvstore(site.work).write("commit.json", json.dumps(record).encode()).result()
    write_attributes(site.build, attributes)
    if site.local:
        publish(site.build, site.target)
    site.remove()


def finalize_problems(site: Site) -> tuple[list[Journal], dict | None, str | None]:
    """(the shards' journals in order and their plan, or why the shards cannot be finalized yet)."""
    journals = site.journals()
    if not journals:
        return [], None, (f"{site.out}: no shards to finalize (no prepare --shard I/N has written to it; its work would "
                    f"be in {site.work})")
    counts = sorted({j.shard.count for j in journals.values()})
    if len(counts) > 1:
        return [], None, (f"{site.out}: shards of {' and '.join(map(str, counts))}-way prepares are mixed in {site.work}; "
                    f"rerun every shard of one with --restart")
    count = counts[0]
    ordered = [journals.get(Shard(i, count).name) for i in range(count)]
    missing = [Shard(i, count).label for i, j in enumerate(ordered) if j is None]
    if missing:
        return [], None, f"{site.out}: {', '.join(missing)} never ran: run {'them' if len(missing) > 1 else 'it'} first"
    plans = [j.read("plan.json") for j in ordered]
    for journal, plan in zip(ordered[1:], plans[1:]):
        changes = plan_changes(plans[0], plan) if plan and plans[0] else []
        if changes:
            return [], None, f"{site.out}: {journal.shard.label} ran with other inputs or options than shard 0: " \
                       f"{'; '.join(changes)}; rerun it with --restart and the same command as the others"
    unfinished = [f"{j.shard.label} ({len(j.entries())} of {len(j.shard.indices(len(plans[0]['inputs'])))} "
                  f"inputs done)" for j in ordered if j.read("complete.json") is None]
    if unfinished:
        return [], None, f"{site.out}: not every shard has finished: {', '.join(unfinished)}; run the same command again"
    return ordered, plans[0], None


def assemble(site: Site, journals: list[Journal], plan: dict, progress) -> tuple[list[dict], int, str]:
    """The shards' cubes copied into the store being built, in input order: (entries in
    input order, cube count, sha256 of the cubes). The array is sized once; a few writes
    stay in flight while the next cubes are read."""
    entries = sorted((dict(e, shard=j.shard.index) for j in journals for e in j.entries()), key=lambda e: e["index"])
    if [e["index"] for e in entries] != list(range(len(plan["inputs"]))):
        raise UserError(f"{site.out}: the shards' journals in {site.work} do not cover the inputs once each; rerun "
                        f"every shard with --restart")
    parts = {j.shard.index: open_cube_array(site.part(j.shard)) for j in journals}
    total = sum(e.get("cubes", 0) for e in entries)
    array = create_cube_array(site.build, plan_cube_shape(plan), {} if site.local else {"complete": False})
    array = resize_cubes(array, total)
    hasher, count, writing = hashlib.sha256(), 0, []
    for entry in entries:
        for low in range(0, entry.get("cubes", 0), READ_CUBES):
            start, rows = entry["offset"] + low, min(READ_CUBES, entry["cubes"] - low)
            cubes = np.ascontiguousarray(parts[entry["shard"]][start:start + rows].read().result())
            writing.append(array[count:count + rows].write(cubes))
            hasher.update(cubes.tobytes())
            count += rows
            if len(writing) > 8:
                writing.pop(0).result()
        progress(entry)
    for future in writing:
        future.result()
    return [{k: v for k, v in e.items() if k != "shard"} for e in entries], count, hasher.hexdigest()
