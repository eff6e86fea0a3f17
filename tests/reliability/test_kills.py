"""SIGKILL at any moment of a training run, and during an asynchronous checkpoint write.

Each trial starts a tiny run (train_child.py: 8 steps, a checkpoint at every step, none
deleted) and kills it with SIGKILL, either after a seeded random delay or the moment the
write of a seeded checkpoint is seen in progress (Orbax's `<step>.orbax-checkpoint-tmp`
directory). The restart must resume from the newest complete checkpoint, name (and
remove) any incomplete one, leave every complete checkpoint as it was (same files, same
bytes), and from there on produce the uninterrupted run's losses bitwise.

Measured here: the first checkpoint is complete about 9 s after the start (imports,
compiles), the run ends about 5 s later; a trial (kill, restart) takes about 25 s.
"""

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runs import complete_checkpoints

CHILD = Path(__file__).with_name("train_child.py")
TIMEOUT = 300


class Child:
    """A training process whose output is drained by a thread (so polling never blocks)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc = subprocess.Popen([sys.executable, str(CHILD), str(workdir)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, condition, seconds=TIMEOUT, poll=0.001) -> bool:
        """True when condition() held while the process was alive."""
        deadline = time.monotonic() + seconds
        while self.proc.poll() is None and time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(poll)
        return False

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL
        self.proc.wait(TIMEOUT)
        self.reader.join(TIMEOUT)

    def result(self) -> dict:
        self.proc.wait(TIMEOUT)
        self.reader.join(TIMEOUT)
        assert self.proc.returncode == 0, self.output[-4000:]
        line = next(line for line in self.lines if line.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])


def incomplete_checkpoints(workdir: Path) -> list[str]:
    directory = workdir / "checkpoints"
    return sorted(p.name for p in directory.glob("*.orbax-checkpoint-tmp*")) if directory.is_dir() else []


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return Child(tmp_path_factory.mktemp("uninterrupted") / "run").result()


def kill_and_restart(workdir: Path, kill_when, reference: dict) -> dict:
    """Kill a run where kill_when(child) returns, restart it, check everything; what was seen."""
    child = Child(workdir)
    kill_when(child)
    finished_first = child.proc.poll() is not None
    child.kill()
    complete, incomplete = complete_checkpoints(workdir), incomplete_checkpoints(workdir)

    restart = Child(workdir)
    result = restart.result()
    output = restart.output
    newest = max(complete, default=0)
    if finished_first:
        assert "done: the run had already finished" in output or result["start_step"] == newest, output[-3000:]
    elif newest:
        assert f"resumed from step {newest} in " in output, output[-3000:]
        assert result["start_step"] == newest
    else:
        assert "resumed from" not in output and result["start_step"] == 0, output[-3000:]
    for name in incomplete:
        assert f"warning: {workdir / 'checkpoints' / name} is a checkpoint whose write never finished; removed" \
            in output, (name, output[-3000:])
    assert not incomplete_checkpoints(workdir)
    after = complete_checkpoints(workdir)
    for step, digest in complete.items():  # nothing complete was deleted, renamed or rewritten
        assert after.get(step) == digest, f"the complete checkpoint of step {step} changed"
    assert not list((workdir / "checkpoints").glob("*.unreadable-*")), "a checkpoint was set aside"

    start = result["start_step"]
    assert result["train_losses"] == [pair for pair in reference["train_losses"] if pair[0] >= start]
    assert result["val_losses"] == [pair for pair in reference["val_losses"] if pair[0] > start]
    return {"complete": sorted(complete), "incomplete": incomplete, "resumed_from": start}


def after_the_first_checkpoint(seconds: float):
    """The run then has about 5 s to go on this machine: steps, saves, an evaluation, the exit."""
    def kill_when(child: Child):
        child.wait_for(lambda: (child.workdir / "checkpoints" / "1").is_dir(), poll=0.01)
        time.sleep(seconds)
    return kill_when


def during_the_write_of(step: int):
    def kill_when(child: Child):
        def writing() -> bool:
            try:
                return any(entry.name.startswith(f"{step}.orbax-checkpoint-tmp")
                           for entry in os.scandir(child.workdir / "checkpoints"))
            except FileNotFoundError:
                return False
        child.wait_for(writing)
    return kill_when


def test_a_kill_during_a_checkpoint_write_resumes_from_the_last_complete_one(tmp_path, uninterrupted):
    seen = kill_and_restart(tmp_path / "run", during_the_write_of(3), uninterrupted)
    assert seen["incomplete"] == ["3.orbax-checkpoint-tmp"] or seen["incomplete"] == [], seen
    assert seen["resumed_from"] in (2, 3), seen


@pytest.mark.slow  # the trials below cover it; the default suite keeps the mid-write kill
def test_a_kill_at_a_random_moment_resumes_exactly(tmp_path, uninterrupted):
    seen = kill_and_restart(tmp_path / "run", after_the_first_checkpoint(random.Random(0).uniform(0.0, 4.0)),
                            uninterrupted)
    assert seen["resumed_from"] > 0, seen


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(8))
def test_kills_at_seeded_moments(tmp_path, uninterrupted, trial):
    rng = random.Random(1000 + trial)
    kill_when = during_the_write_of(rng.randint(1, 7)) if trial % 2 else after_the_first_checkpoint(rng.uniform(0.0, 5.0))
    seen = kill_and_restart(tmp_path / "run", kill_when, uninterrupted)
    print(f"trial {trial}: {seen}")
