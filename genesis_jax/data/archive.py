"""prepare's run at archive scale: a shard of a store (a single run is shard 0/1)
prepared by worker processes, resumed after a kill, with progress and a summary; and
the finalize step of a sharded store. The parts and journals: data/parts.py; the workers:
data/workers.py; one input's cubes: data/preparing.py.
"""

from __future__ import annotations

import contextlib
import sys
import time

from tqdm import tqdm

from genesis_jax.data.parts import (PartWriter, Shard, Site, assemble, check_other_journals, commit, finalize_problems,
                                    plan_changes)
from genesis_jax.data.preparing import spacing_warning
from genesis_jax.data.publish import clean_leftovers
from genesis_jax.data.store import open_kvstore, read_metadata
from genesis_jax.data.workers import default_workers, prepared_in_order
from genesis_jax.errors import UserError, write_failure

# Without a terminal (a SLURM log, CI), a progress line this often instead of a bar.
LOG_SECONDS = 30.0


def open_site(out, create: bool = True) -> Site:
    """The store's site, its location checked (and, to prepare, its work directory made);
    the leftovers of killed writers named."""
    site = Site(out)
    try:
        if site.local:
            site.target.parent.mkdir(parents=True, exist_ok=True)
            for line in clean_leftovers(site.target):
                print(line, file=sys.stderr)
            if create:
                site.work.mkdir(exist_ok=True)
        else:
            open_kvstore(site.work).list().result()
    except OSError as e:
        raise UserError(f"{out}: cannot create a cube store there ({e.strerror})") from None
    except ValueError as e:  # an unknown URL scheme, a bucket that does not exist or refuses us
        raise UserError(f"{out}: cannot create a cube store there ({str(e).splitlines()[0]})") from None
    return site


@contextlib.contextmanager
def write_errors(site: Site):
    """A full or read-only disk, a quota: one line naming the store and the system's reason."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, OSError) as e:
        raise UserError(f"{site.out}: cannot write the cube store ({write_failure(e)}); nothing was published "
                        f"there") from None


class Progress:
    """Inputs done, inputs/s, cubes/s and the time left: a bar on a terminal, else a line
    every LOG_SECONDS (none in a run shorter than that)."""

    def __init__(self, label: str, total: int, done: int, unit: str, how: str = ""):
        self.label, self.total, self.done, self.unit, self.how = label, total, done, unit, how
        self.start = self.last = time.perf_counter()
        self.inputs = self.cubes = 0
        self.bar = None
        if sys.stderr.isatty():
            if how:
                print(f"{label}: {how}", file=sys.stderr)
            self.bar = tqdm(total=total, initial=done, desc=label, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def add(self, cubes: int) -> None:
        self.inputs, self.cubes, self.done = self.inputs + 1, self.cubes + cubes, self.done + 1
        seconds = max(time.perf_counter() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.cubes / seconds:.1f} cubes/s", refresh=False)
            self.bar.update(1)
        elif time.perf_counter() - self.last >= LOG_SECONDS:
            self.last = time.perf_counter()
            left = (self.total - self.done) * seconds / self.inputs
            print(f"{self.label}: {self.done}/{self.total} {self.unit}, {self.inputs / seconds:.2f} {self.unit}/s, "
                  f"{self.cubes / seconds:.1f} cubes/s, {left / 60:.1f} min left", file=sys.stderr, flush=True)

    def say(self, line: str) -> None:
        (self.bar.write if self.bar is not None else print)(line, file=sys.stderr)

    def close(self) -> None:
        self.seconds = time.perf_counter() - self.start
        if self.bar is not None:
            self.bar.close()

    def rates(self) -> str:
        """What this run did, per second (a resumed run: since it resumed)."""
        seconds = max(self.seconds, 1e-9)
        return (f"{self.inputs} {self.unit} in {seconds:.1f} s{', ' + self.how if self.how else ''}: "
                f"{self.inputs / seconds:.2f} {self.unit}/s, {self.cubes / seconds:.1f} cubes/s")


def prepare(args, recipe, plan: dict, items: list) -> int:
    """Prepare this process's shard of the store (all of it without --shard) and, for a
    single run, commit it. Exit code."""
    start = time.perf_counter()
    site = open_site(args.out)
    shard = args.shard or Shard()
    with write_errors(site):
        finished = site.finish_interrupted_commit()
        if finished is not None and not plan_changes(finished, plan):
            print(f"{args.out}: an interrupted prepare (or finalize) of it had written every cube; its commit is now "
                  f"done", file=sys.stderr)
            return report(args.out, read_metadata(site.target), time.perf_counter() - start)
        check_other_journals(site, shard, plan, args.restart)
        workers, why = (args.workers, "--workers") if args.workers else default_workers()
        journal, claimed = site.journal(shard), False
        try:
            with journal.owned(args.out):
                claimed = True
                writer, progress = prepare_shard(args, recipe, plan, items, site, journal, workers, why)
        except BaseException:
            if claimed and not journal.entries():  # nothing done to keep: nothing left behind
                site.discard(shard)
            raise
        entries = writer.entries
        if shard.count > 1:
            print(f"{shard.label} of {args.out}: {len(entries)} input(s) done, {writer.count} cubes ({progress.rates()}); "
                  f"when every shard has finished: python -m genesis_jax.prepare --finalize --out {args.out}")
            return 0
        if writer.count == 0:
            site.discard(shard)
            sources = [e["record"] for e in entries if "record" in e]
            raise UserError(f"no cubes from {len(items)} input(s); nothing written to {args.out}"
                            + "".join(f"\n  {line}" for line in plan["skipped"] + _empty_lines(sources, args.filter)))
        commit(site, plan, entries, writer.count, writer.hash.hexdigest())
    return report(args.out, read_metadata(site.target), time.perf_counter() - start, progress)


def prepare_shard(args, recipe, plan, items, site: Site, journal, workers: int, why: str):
    """The shard's remaining inputs prepared and journaled: (its PartWriter, Progress).
    A bad input (without --skip-bad) or a failed write stops it (UserError); what was
    done stays journaled."""
    shard, entries = journal.shard, journal.entries()
    mine = shard.indices(len(items))
    if [e["index"] for e in entries] != list(mine[:len(entries)]):
        raise UserError(f"{args.out}: the journal of {shard.label} in {site.work} is damaged (its inputs are not "
                        f"the first of its share); pass --restart to start it over")
    writer = PartWriter(site, journal, plan, entries, hashed=shard.count == 1)
    label = shard.label if shard.count > 1 else ("inputs" if args.dims == 2 else "volumes")
    if entries:
        print(f"{label}: resuming: {len(entries)} of {len(mine)} input(s) already done", file=sys.stderr)
    todo = [(k, items[k]) for k in mine[len(entries):]]
    workers = min(workers, max(1, len(todo)))
    progress = Progress(label, len(mine), len(entries), "inputs" if args.dims == 2 else "volumes",
                        f"{workers} worker processes ({why})" if workers > 1 else "in this process")
    try:
        for prepared in prepared_in_order(todo, recipe, workers):
            if prepared.problem and not args.skip_bad:
                done = progress.done
                raise UserError(prepared.problem + (f" (the {done} input(s) done before it are kept in {site.work}: "
                                                    f"run the same command again once it is fixed, or with "
                                                    f"--skip-bad)" if done else ""))
            if prepared.problem:
                progress.say(f"skipped: {prepared.problem}")
            writer.add(prepared, skipped=bool(prepared.problem))
            progress.add(0 if prepared.problem else len(prepared.cubes))
    finally:
        progress.close()
    journal.write("complete.json", {"inputs": len(mine), "cubes": writer.count})
    return writer, progress


def _empty_lines(sources: list[dict], filter_name: str) -> list[str]:
    """A line for each source record whose crops the filter all rejected."""
    return [f"{s['path']}: the {filter_name} filter rejected all {s['tries']} crops"
            + (" (it keeps chest-CT crops that are mostly lung; for other scans use --filter foreground)"
               if filter_name == "lung" else "") for s in sources if s["cubes"] == 0]


def report(out, meta: dict, seconds: float, progress: Progress | None = None) -> int:
    """The summary of a committed store, from its attributes, and of what this run did.
    Exit code 0."""
    attributes = meta["attributes"]["genesis"]
    sources, skipped, count = attributes["sources"], attributes["skipped"], attributes["cubes"]
    images = attributes.get("dims") == 2
    what = "images" if images else "cubes"
    print(f"{len(sources)} {'input' if images else 'volume'}(s) read, {len(skipped)} skipped, {count} {what} "
          f"written to {out} in {seconds:.1f} s" + (f" ({progress.rates()})" if progress else ""))
    for line in _empty_lines(sources, attributes["filter"]):
        print(f"  no cubes: {line}")
    if not attributes.get("spacing") and (warning := spacing_warning(sources)):
        print(warning, file=sys.stderr)
    if skipped:
        print("skipped:")
        for line in skipped:
            print(f"  {line}")
    return 0


def finalize(args) -> int:
    """Commit a store whose shards have all finished. Exit code."""
    start = time.perf_counter()
    site = open_site(args.out, create=False)  # finalize needs the shards' work; it makes none
    with write_errors(site):
        if site.finish_interrupted_commit() is not None:
            print(f"{args.out}: its finalize had been interrupted after writing every cube; now done", file=sys.stderr)
            return report(args.out, read_metadata(site.target), time.perf_counter() - start)
        journals, plan, problem = finalize_problems(site)
        if problem:
            raise UserError(problem)
        total = len(plan["inputs"])
        progress = Progress("finalize", total, 0, "inputs")
        try:
            entries, count, digest = assemble(site, journals, plan, lambda entry: progress.add(entry.get("cubes", 0)))
        finally:
            progress.close()
        if count == 0:
            site.remove()
            raise UserError(f"no cubes from {total} input(s) in {len(journals)} shards; nothing written to {args.out}")
        commit(site, plan, entries, count, digest)
    return report(args.out, read_metadata(site.target), time.perf_counter() - start, progress)
