"""prepare under SIGKILL and on a disk that refuses writes.

A store at the output path is either the previous one, intact, or the new one, complete;
never a half-written or half-deleted one. A killed prepare, run again with the same
command, goes on from the inputs it finished and ends with the store an uninterrupted
run writes, file for file (issue 25); nothing of it is left beside the store after. A
disk that refuses a write gives one line naming the store and the system's reason,
exit 1, nothing left behind.
"""

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from genesis_jax.data import open_store, sample_path
from genesis_jax.data.store import store_digest
from genesis_jax.errors import UserError

# 6 inputs (the bundled sample under 6 names: each its own draws), 4800 small cubes, 2 workers:
# about 4.5 s on this machine: 2 s to start the workers, then an input every 0.4 s (the
# default suite's archive has 300 cubes per input, 1800 in all).
CUBES = ["--filter", "none", "--cube-shape", "16", "16", "16", "--cubes-per-volume", "800", "--tries-per-cube", "1",
         "--workers", "2"]
SHORT = ["@sample", "--filter", "none", "--cube-shape", "16", "16", "16", "--cubes-per-volume", "20", "--seed", "7"]
FSIZE = Path(__file__).with_name("with_file_size_limit.py")


def inputs_and_reference(folder: Path, count: int, args: list) -> tuple[list, dict]:
    """(a prepare's arguments over `count` inputs, the files of the store it writes uninterrupted)."""
    for i in range(count):
        (folder / f"volume{i}.nii.gz").symlink_to(sample_path())
    args = [str(folder), *args]
    reference = folder.parent / f"{folder.name}-reference.zarr"
    assert prepare(args, reference).returncode == 0
    return args, files(reference)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A prepare of 6 inputs, killed after its third (the default suite)."""
    return inputs_and_reference(tmp_path_factory.mktemp("archive"), 6, [*CUBES[:7], "300", *CUBES[8:]])


@pytest.fixture(scope="module")
def long_archive(tmp_path_factory):
    """A prepare long enough for kills at random moments to land in the middle of its inputs."""
    return inputs_and_reference(tmp_path_factory.mktemp("long"), 6, CUBES)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A short prepare (2 inputs, one process), for the kills at exact points of publishing."""
    args = ["--filter", "none", "--cube-shape", "16", "16", "16", "--cubes-per-volume", "100", "--workers", "1"]
    return inputs_and_reference(tmp_path_factory.mktemp("small"), 2, args)


def prepare(args, out: Path, *, prefix=(), **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *prefix, "-m", "genesis_jax.prepare", *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, **kwargs)


def files(store: Path) -> dict:
    """Every file of a store by its path inside it: its sha256."""
    return {str(f.relative_to(store)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(store.rglob("*")) if f.is_file()}


def contents(store: Path) -> str:
    array, _ = open_store(store)
    return hashlib.sha256(np.asarray(array.read().result()).tobytes()).hexdigest()


def leftovers(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.fixture()
def previous(tmp_path):
    """A complete store at the output path, made by an earlier prepare: (path, its digest, its contents)."""
    out = tmp_path / "cubes.zarr"
    assert prepare(SHORT, out).returncode == 0
    return out, store_digest(out), contents(out)


def kill_after(args, out: Path, seconds: float) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "genesis_jax.prepare", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(seconds)
    os.killpg(proc.pid, signal.SIGKILL)  # prepare and its workers, as a node failure or the OOM killer's group kill
    proc.wait(60)


def check_after_a_kill(out: Path, previous_digest: str, previous_contents: str, archive) -> str:
    """The store at `out` is the previous one or the complete new one; the same command
    again ends with the uninterrupted run's store, file for file, and nothing beside it."""
    args, reference = archive
    if store_digest(out) == previous_digest:
        assert contents(out) == previous_contents
        state = "previous"
    else:
        array, attributes = open_store(out)  # complete: opens, with every cube and its record
        assert array.shape[0] == attributes["cubes"] and f"c/{array.shape[0] - 1}/0/0/0/0" in reference
        state = "new"
    again = prepare(args, out)
    assert again.returncode == 0, again.stderr
    assert files(out) == reference
    assert leftovers(out) == []
    resumed = re.search(r"resuming: (\d+) of 6", again.stderr)
    return state + (f", the rerun resumed after {resumed[1]} of 6 inputs" if resumed else "")


def test_a_kill_after_three_inputs_then_the_same_command_resumes_to_the_uninterrupted_store(previous, archive):
    out, digest, data = previous
    done = out.parent / f".{out.name}.preparing" / "journal" / "0-of-1" / "done"
    proc = subprocess.Popen([sys.executable, "-m", "genesis_jax.prepare", *archive[0], "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while len(list(done.glob("*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # prepare and its workers
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "it finished before the kill: the test did not reach its point"
    assert check_after_a_kill(out, digest, data, archive) == "previous, the rerun resumed after 3 of 6 inputs"


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(10))
def test_kills_at_seeded_moments_of_prepare(previous, long_archive, trial):
    out, digest, data = previous
    kill_after(long_archive[0], out, random.Random(trial).uniform(0.5, 5.0))
    print(f"trial {trial}: {check_after_a_kill(out, digest, data, long_archive)}")


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_kills_of_a_shard_and_of_finalize_then_the_same_commands(tmp_path, long_archive, trial):
    args, reference = long_archive
    out, moment = tmp_path / "cubes.zarr", random.Random(100 + trial)
    kill_after([*args, "--shard", "1/2"], out, moment.uniform(0.2, 2.5))
    for shard in ("0/2", "1/2"):
        assert prepare([*args, "--shard", shard], out).returncode == 0
    kill_after(["--finalize"], out, moment.uniform(0.2, 1.5))
    again = prepare(["--finalize"], out)
    finished = again.returncode == 0
    assert finished or "no shards to finalize" in again.stderr, again.stderr  # the kill came after the end
    assert files(out) == reference and leftovers(out) == []


# A prepare killed (SIGKILL, by itself) at one exact point of publishing its store.
KILL_AT = '''
import os, signal, sys
from pathlib import Path
import genesis_jax.data.publish as publish
from genesis_jax.prepare import run
point, args = sys.argv[1], sys.argv[2:]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
exchange = publish._exchange
if point == "before the exchange":
    publish._exchange = lambda a, b: die()
elif point == "after the exchange":
    publish._exchange = lambda a, b: (exchange(a, b), die())
elif point == "between the two renames":  # a filesystem without atomic exchange
    publish._exchange = lambda a, b: False
    rename = Path.rename
    def rename_then_die(self, target):
        result = rename(self, target)
        if str(target).endswith("/store"):
            die()
        return result
    Path.rename = rename_then_die
sys.exit(run(args))
'''


@pytest.mark.parametrize("point,state", [("before the exchange", "previous"), ("after the exchange", "new")])
def test_a_kill_while_publishing_leaves_one_complete_store(previous, small, point, state):
    out, digest, data = previous
    killed = subprocess.run([sys.executable, "-c", KILL_AT, point, *small[0], "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert leftovers(out), "the kill left no temporary directory: the test did not reach its point"
    assert check_after_a_kill(out, digest, data, small).startswith(state)


def test_a_kill_between_the_fallback_renames_keeps_the_previous_store_and_says_where(previous, small):
    out, digest, data = previous
    killed = subprocess.run([sys.executable, "-c", KILL_AT, "between the two renames", *small[0], "--out",
                             str(out)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    [aside] = [p for p in leftovers(out) if ".previous-" in p.name]
    assert store_digest(aside / "store") == digest and contents(aside / "store") == data
    again = prepare(small[0], out)
    assert again.returncode == 0, again.stderr
    assert files(out) == small[1]  # the interrupted prepare's store, put in place
    assert (f"warning: {aside / 'store'} is the store that was at {out} before a prepare was killed while "
            f"replacing it; left there") in again.stderr
    assert (aside / "store").is_dir()  # the only copy of the previous store is never removed


def test_a_disk_that_refuses_the_writes_gives_one_line_and_leaves_nothing(tmp_path, small):
    out = tmp_path / "cubes.zarr"
    # a 5000-byte file size limit: the first cube chunk over it fails as a full disk does
    refused = prepare(small[0], out, prefix=(str(FSIZE), "5000"))
    assert refused.returncode == 1, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: cannot write the cube store (") \
        and "File too large); nothing was published there" in lines[0], lines
    assert not out.exists() and leftovers(out) == []


def test_an_unwritable_location_gives_one_line(tmp_path):
    refused = prepare(SHORT, Path("/proc/cubes.zarr"))  # /proc refuses new files, even to root
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == ["error: /proc/cubes.zarr: cannot create a cube store there "
                                                   "(No such file or directory)"]


@pytest.mark.parametrize("metadata,words", [("not json", "a damaged cube store (its zarr.json is not JSON"),
                                            ("{}", "not a readable cube store (FAILED_PRECONDITION")])
def test_a_store_with_damaged_metadata_is_one_line(tmp_path, metadata, words):
    # found: both gave tracebacks when training opened the store
    (tmp_path / "cubes.zarr").mkdir()
    (tmp_path / "cubes.zarr" / "zarr.json").write_text(metadata)
    with pytest.raises(UserError, match=re.escape(words)):
        open_store(tmp_path / "cubes.zarr")
