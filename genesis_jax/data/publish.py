"""Putting a finished cube store in place so that a kill at any moment leaves the previous
store or the new one complete at its path, and cleaning up what killed writers left.

Local paths only (object stores have no rename: data/store.py writes them in place and
marks them complete at the end).
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

# Temporary directories of a writer, beside the target: `.NAME.writing-HOST-PID-<random>.tmp`
# (the new store being built) and `.NAME.previous-HOST-PID-<random>.tmp` (the store it replaces,
# set aside for a moment where paths cannot be exchanged atomically). Owner in the name:
# the next writer of NAME can tell a dead writer's leftovers from a live one's.
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>writing|previous)-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-"
                       r"[a-z0-9_]+\.tmp$")


def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def temporary_beside(location: Path, kind: str) -> Path:
    """A new temporary directory beside `location`, named by kind, host and process."""
    return Path(tempfile.mkdtemp(prefix=f".{location.name}.{kind}-{host_name()}-{os.getpid()}-", suffix=".tmp",
                                 dir=location.parent))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, Linux), None where unknown: with
    the pid, it tells a live owner from a new process that reuses a dead one's pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def clean_leftovers(location: Path) -> list[str]:
    """Deal with what killed writers of `location` left beside it; one line on each.

    A dead writer's temporary store (on this host) is removed; a live one's, or another
    host's, is left alone and named. A store set aside by a writer killed between its two
    renames is the last complete store when nothing is at `location`: it is kept, and the
    line says how to put it back.
    """
    lines = []
    for path in sorted(location.parent.glob(f".{glob.escape(location.name)}.*.tmp")):
        match = _LEFTOVER.match(path.name)
        if match is None or match["name"] != location.name:
            continue
        pid = int(match["pid"])
        if match["host"] != host_name() or process_alive(pid):
            lines.append(f"note: {path} belongs to a cube store writer that may still be running (process {pid} "
                         f"on {match['host']}); left alone (remove it if no prepare is running there)")
        elif match["kind"] == "previous" and not location.exists():
            lines.append(f"warning: {path / 'store'} is the store that was at {location} before a prepare was "
                         f"killed while replacing it; left there (move it to {location} to use it again)")
        else:
            shutil.rmtree(path, ignore_errors=True)
            lines.append(f"warning: removed {path}, left by a prepare that was killed (process {pid})")
    return lines


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or the filesystem cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def remove_tree(path: Path, seconds: float = 10.0, settle: float = 0.5) -> None:
    """rmtree until the directory is gone and stays gone for `settle` seconds: after a
    failed write, TensorStore's other chunk writes may still be creating directories in
    it for a moment (seen: 62 left behind; and once, in CI, one directory recreated after
    the first rmtree had found the path gone)."""
    deadline, gone_since = time.monotonic() + seconds, None
    while time.monotonic() <= deadline:
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            gone_since = None
        else:
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since >= settle:
                return
        time.sleep(0.05)


def publish(finished: Path, location: Path) -> None:
    """Put the finished directory at `location`. A directory already there is exchanged with
    it atomically, then removed: a kill at any moment leaves one of the two complete at
    `location`. Where paths cannot be exchanged, two renames; a kill between them leaves
    the old one beside the path, which clean_leftovers names and keeps."""
    if not location.exists():
        finished.rename(location)
    elif _exchange(finished, location):
        shutil.rmtree(finished)  # the previous directory, now at the temporary name
    else:
        previous = temporary_beside(location, "previous")
        location.rename(previous / "store")
        finished.rename(location)
        shutil.rmtree(previous)
