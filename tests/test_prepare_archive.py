"""prepare at archive scale (issue 25): worker processes, shards and finalize, resuming.

The store is the same, key for key and byte for byte, whatever the worker count and
however the inputs were split into shards; a stopped prepare resumes to that store; a
changed plan, a missing or unfinished shard, a live writer of the same shard are refused
with one line; a bad input or a dying worker is named. Kills: reliability/test_store_writes.py.
"""

import os
import re
import signal
import subprocess
import sys
import uuid

import pytest

from genesis_jax.data import open_store, sample_path
from genesis_jax.data.parts import Shard, Site
from genesis_jax.data.preparing import Recipe
from genesis_jax.data.sampler import SamplerConfig
from genesis_jax.data.store import open_kvstore, store_location
from genesis_jax.data.workers import default_workers, prepared_in_order
from genesis_jax.errors import UserError
from genesis_jax.prepare import run

CUBES = ["--filter", "none", "--cube-shape", "16", "16", "16", "--cubes-per-volume", "6", "--tries-per-cube", "1",
         "--workers", "1"]  # tests of workers add --workers 2 (the last one counts)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A folder of 5 inputs: the bundled sample under 5 names (each its own draws)."""
    folder = tmp_path_factory.mktemp("archive")
    for i in range(5):
        (folder / f"volume{i}.nii.gz").symlink_to(sample_path())
    return folder


@pytest.fixture(scope="module")
def single(archive, tmp_path_factory):
    """The keys and bytes of the store one in-process run writes (--workers 1)."""
    out = tmp_path_factory.mktemp("single") / "cubes.zarr"
    assert run([str(archive), *CUBES, "--out", str(out), "--workers", "1"]) == 0
    return keys(out)


def keys(store) -> dict:
    """Every key of a store (a path or a URL) and its bytes."""
    kv = open_kvstore(store_location(store))
    return {k: kv.read(k).result().value for k in kv.list().result()}


def with_bad_input(archive, tmp_path, position: int = 3):
    """A copy of the archive whose input `position` is a truncated .nii.gz."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in range(5):
        if i != position:
            (folder / f"volume{i}.nii.gz").symlink_to(archive / f"volume{i}.nii.gz")
    bad = folder / f"volume{position}.nii.gz"
    bad.write_bytes(sample_path().read_bytes()[:5000])
    return folder, bad


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_the_store_does_not_depend_on_the_worker_count(archive, single, tmp_path):
    out = tmp_path / "cubes.zarr"
    assert run([str(archive), *CUBES, "--out", str(out), "--workers", "2"]) == 0
    assert keys(out) == single
    assert not (tmp_path / ".cubes.zarr.preparing").exists()


@pytest.mark.parametrize("scheme", ["path", "memory"])
def test_two_shards_then_finalize_write_the_single_runs_store(archive, single, tmp_path, capsys, scheme):
    out = tmp_path / "cubes.zarr" if scheme == "path" else f"memory://shards-{uuid.uuid4().hex}/cubes.zarr"
    for shard in ("1/2", "0/2"):
        assert run([str(archive), *CUBES, "--out", str(out), "--shard", shard, "--workers", "1"]) == 0
        with pytest.raises(UserError, match="an incomplete cube store: its prepare has not finished"):
            open_store(out)  # training refuses it until finalize
    assert "when every shard has finished: python -m genesis_jax.prepare --finalize" in capsys.readouterr().out
    assert run(["--finalize", "--out", str(out)]) == 0
    assert "5 volume(s) read, 0 skipped, 30 cubes written to" in capsys.readouterr().out
    found = keys(out)
    if scheme == "path":
        assert found == single
    else:  # the same chunks and metadata; the sources' paths are the same files
        assert found.keys() == single.keys() and all(found[k] == single[k] for k in found)
    assert not Site(out).journals()


def test_finalize_refuses_a_missing_or_unfinished_shard_then_commits_once_all_finished(archive, tmp_path, capsys):
    inputs, bad = with_bad_input(archive, tmp_path)
    out = tmp_path / "cubes.zarr"
    assert run(["--finalize", "--out", str(out)]) == 1
    assert "no shards to finalize" in one_error_line(capsys)
    assert not (tmp_path / ".cubes.zarr.preparing").exists()  # a refused finalize makes no work directory
    assert run([str(inputs), *CUBES, "--out", str(out), "--shard", "0/2"]) == 0
    capsys.readouterr()
    assert run(["--finalize", "--out", str(out)]) == 1
    assert one_error_line(capsys) == f"error: {out}: shard 1/2 never ran: run it first"
    assert run([str(inputs), *CUBES, "--out", str(out)]) == 1  # one process, over a 2-shard prepare's work
    assert one_error_line(capsys) == (f"error: {out}: an unfinished prepare of it in 2 shards is in "
                                      f"{tmp_path / '.cubes.zarr.preparing'}; run it to the end, or pass --restart "
                                      f"to discard it")
    assert run([str(inputs), *CUBES, "--out", str(out), "--shard", "1/2"]) == 1  # inputs 1 and 3: 3 is bad
    line = one_error_line(capsys)
    assert str(bad) in line and "(the 1 input(s) done before it are kept in" in line
    assert run(["--finalize", "--out", str(out)]) == 1
    assert one_error_line(capsys) == (f"error: {out}: not every shard has finished: shard 1/2 (1 of 2 inputs done); "
                                      f"run the same command again")
    assert not out.exists()
    assert run([str(inputs), *CUBES, "--out", str(out), "--shard", "1/2", "--skip-bad"]) == 0
    assert "resuming: 1 of 2 input(s) already done" in capsys.readouterr().err
    assert run(["--finalize", "--out", str(out)]) == 0
    whole = tmp_path / "whole.zarr"
    assert run([str(inputs), *CUBES, "--out", str(whole), "--skip-bad"]) == 0
    assert keys(out) == keys(whole)  # skipped list included, in input order
    _, attributes = open_store(out)
    assert len(attributes["sources"]) == 4 and len(attributes["skipped"]) == 1 and str(bad) in attributes["skipped"][0]


def test_a_stopped_prepare_resumes_refuses_another_plan_and_restarts_on_request(archive, tmp_path, capsys):
    inputs, bad = with_bad_input(archive, tmp_path, position=4)
    out = tmp_path / "cubes.zarr"
    assert run([str(inputs), *CUBES, "--out", str(out)]) == 1  # stops at the last input; 4 kept
    assert "(the 4 input(s) done before it are kept in" in one_error_line(capsys)
    assert run([str(inputs), *CUBES, "--out", str(out), "--seed", "1"]) == 1
    assert "ran with other inputs or options: seed was 0, now 1. Run the same command to finish it, or pass " \
           "--restart to start over" in one_error_line(capsys)
    (inputs / "extra.nii.gz").symlink_to(sample_path())
    assert run([str(inputs), *CUBES, "--out", str(out)]) == 1
    assert "the input list changed (5 inputs before, 6 now; added " in one_error_line(capsys)
    (inputs / "extra.nii.gz").unlink()
    assert run([str(inputs), *CUBES, "--out", str(out), "--skip-bad"]) == 0  # --skip-bad: not part of the plan
    assert "resuming: 4 of 5 input(s) already done" in capsys.readouterr().err
    whole = tmp_path / "whole.zarr"
    assert run([str(inputs), *CUBES, "--out", str(whole), "--skip-bad"]) == 0
    assert keys(out) == keys(whole)
    assert run([str(inputs), *CUBES, "--out", str(out), "--seed", "1"]) == 1  # stopped again, at the bad input
    capsys.readouterr()
    assert run([str(inputs), *CUBES, "--out", str(out), "--seed", "2", "--skip-bad", "--restart"]) == 0
    assert run([str(inputs), *CUBES, "--out", str(whole), "--seed", "2", "--skip-bad"]) == 0
    assert keys(out) == keys(whole)


def test_a_bad_input_in_a_worker_is_named_and_skipped_with_skip_bad(archive, tmp_path, capsys):
    inputs, bad = with_bad_input(archive, tmp_path, position=2)
    out = tmp_path / "cubes.zarr"
    assert run([str(inputs), *CUBES, "--out", str(out), "--workers", "2"]) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"error: {bad}: not a readable image") and "(the 2 input(s) done before it" in line
    assert run([str(inputs), *CUBES, "--out", str(out), "--workers", "2", "--skip-bad"]) == 0
    printed = capsys.readouterr()
    assert f"skipped: {bad}: not a readable image" in printed.err and f"  {bad}: not a readable image" in printed.out


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


class KillsItsProcess:
    """An input whose unpickling, in a worker, kills the worker with SIGKILL (as a
    reader's crash or the out-of-memory killer would)."""

    name = "kills-its-process.nii.gz"

    def __reduce__(self):
        return _die, ()


def test_a_worker_that_dies_is_named_with_its_input_and_the_others_are_prepared():
    from genesis_jax.data.cases import Case
    recipe = Recipe(3, (16, 16, 16), SamplerConfig(crop=(16, 16, 16), filter="none", cubes_per_volume=2,
                                                   tries_per_cube=1), ("ct",), 0, (-1000.0, 1000.0), None)
    items = [(0, Case.single(sample_path())), (1, KillsItsProcess()), (2, Case.single(sample_path()))]
    results = list(prepared_in_order(items, recipe, workers=2))
    assert [r.index for r in results] == [0, 1, 2]
    assert results[1].problem == "kills-its-process.nii.gz: the worker preparing it died (killed by SIGKILL: out of " \
                                 "memory? use fewer --workers)"
    assert results[0].problem is None and results[0].cubes.shape == (2, 16, 16, 16, 1)
    assert results[2].problem is None and results[2].record["cubes"] == 2


def test_a_shard_held_by_a_live_process_is_refused_and_a_dead_ones_is_taken_over(archive, tmp_path, capsys):
    out = tmp_path / "cubes.zarr"
    journal = Site(out).journal(Shard())
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from genesis_jax.data.publish import host_name, process_start
        journal.write("owner.json", {"host": host_name(), "pid": holder.pid, "started": process_start(holder.pid),
                                     "beat": 0})
        assert run([str(archive), *CUBES, "--out", str(out)]) == 1
        assert one_error_line(capsys) == (f"error: {out}: shard 0/1 is taken: process {holder.pid} on this machine "
                                          f"is preparing it")
    finally:
        holder.kill()
        holder.wait()
    assert run([str(archive), *CUBES, "--out", str(out)]) == 0  # its process is gone: taken over


def test_a_shard_last_seen_on_another_host_is_taken_over_once_it_has_gone_quiet(archive, tmp_path, capsys):
    import time
    from genesis_jax.data.parts import STALE_SECONDS
    out = tmp_path / "cubes.zarr"
    Site(out).journal(Shard()).write("owner.json", {"host": "node17", "pid": 4242, "started": 1,
                                                    "beat": time.time() - STALE_SECONDS + 1.0})
    start = time.perf_counter()
    assert run([str(archive), *CUBES, "--out", str(out)]) == 0
    assert 1.0 < time.perf_counter() - start
    assert re.search(r"shard 0/1: process 4242 on node17 was preparing it 11\d s ago; waiting \d s, until it has not "
                     r"been seen for 120 s \(then it is taken to have died\)", capsys.readouterr().err)


def test_the_default_worker_count_is_bounded_by_memory(monkeypatch):
    import genesis_jax.data.workers as workers
    monkeypatch.setattr(workers, "cores", lambda: 16)
    monkeypatch.setattr(workers, "available_memory", lambda: 9 << 30)
    assert default_workers() == (2, "16 core(s), memory for 2 at 4 GiB each")
    monkeypatch.setattr(workers, "available_memory", lambda: 1 << 30)
    assert default_workers()[0] == 1
    monkeypatch.setattr(workers, "available_memory", lambda: None)
    assert default_workers() == (16, "16 core(s)")


def test_shard_and_finalize_arguments_are_checked(capsys):
    for argv, words in ((["x", "--out", "s", "--shard", "2/2"], "--shard 2/2: expected I/N with 0 <= I < N"),
                        (["x", "--out", "s", "--finalize"], "--finalize takes no INPUT and no --shard"),
                        (["--out", "s"], "the following arguments are required: INPUT"),
                        (["x", "--out", "s", "--workers", "0"], "--workers 0: must be >= 1")):
        with pytest.raises(SystemExit) as exit_:
            run(argv)
        assert exit_.value.code == 2 and words in capsys.readouterr().err


# Stand-ins for the cluster tools, so the launch scripts run here as they would there.
FAKE_SBATCH = r'''#!/usr/bin/env bash
# sbatch: runs the job now (an --array=A-B: one task per index, as SLURM_ARRAY_TASK_ID),
# its output to $FAKE_LOG as SLURM's to slurm-JOB.out; prints a job id (--parsable).
array=""
while [[ "$1" == --* ]]; do
  case "$1" in --array=*) array="${1#--array=}" ;; --dependency=*) echo "dependency ${1#--dependency=}" >> "$FAKE_LOG" ;; esac
  shift
done
script="$1"; shift
if [[ -n "$array" ]]; then
  for ((i = ${array%-*}; i <= ${array#*-}; i++)); do
    SLURM_ARRAY_TASK_ID=$i SLURM_CPUS_PER_TASK=1 bash "$script" "$@" >> "$FAKE_LOG" 2>&1 || exit 1
  done
else
  bash "$script" "$@" >> "$FAKE_LOG" 2>&1 || exit 1
fi
echo "$((4242 + RANDOM % 100))"
'''
FAKE_GCLOUD = r'''#!/usr/bin/env bash
# gcloud compute tpus tpu-vm ssh TPU --zone=Z --worker=all|K --command CMD: CMD on each of
# 2 hosts (FAKE_WORKER tells curl which), in a home whose ~/genesis-jax is the repository.
for arg in "$@"; do
  case "$arg" in --worker=*) worker="${arg#--worker=}" ;; esac
  [[ "$previous" == --command ]] && command="$arg"
  previous="$arg"
done
[[ "$worker" == all ]] && workers="0 1" || workers="$worker"
for w in $workers; do FAKE_WORKER=$w bash -c "$command" >> "$FAKE_LOG" 2>&1 || exit 1; done
'''
FAKE_CURL = r'''#!/usr/bin/env bash
# curl for the TPU VM metadata server: this host's worker number, 2 hosts' endpoints.
case "${@: -1}" in
  */agent-worker-number) echo -n "$FAKE_WORKER" ;;
  */worker-network-endpoints) echo -n "unknown:unknown:10.0.0.1,unknown:unknown:10.0.0.2" ;;
  *) exit 22 ;;
esac
'''


@pytest.fixture()
def cluster(tmp_path):
    """An environment where sbatch, gcloud and curl are the stand-ins above."""
    from pathlib import Path
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("gcloud", FAKE_GCLOUD), ("curl", FAKE_CURL)):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    repo = Path(__file__).resolve().parents[1]
    (home / "genesis-jax").symlink_to(repo)
    env = dict(os.environ, PATH=f"{bin_}:{Path(sys.executable).parent}:{os.environ['PATH']}", HOME=str(home),
               FAKE_LOG=str(tmp_path / "jobs.log"), PYTHON=sys.executable)
    return repo, env


@pytest.mark.parametrize("script", ["slurm", "tpu_pod"])
def test_the_launch_scripts_prepare_shards_then_finalize(archive, single, tmp_path, cluster, script):
    repo, env = cluster
    out = tmp_path / "cubes.zarr"
    command = (["launch/slurm_prepare.sh", "2", str(out)] if script == "slurm" else
               ["launch/tpu_pod_prepare.sh", "my-tpu", "us-central2-b", str(out)])
    done = subprocess.run(["bash", *command, str(archive), *CUBES], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    log = (tmp_path / "jobs.log").read_text()
    assert done.returncode == 0, done.stderr + log
    assert "shard 0/2 of" in log and "shard 1/2 of" in log and "5 volume(s) read" in log, log
    if script == "slurm":
        assert re.search(r"dependency afterok:\d+", log) and "prepare: job array" in done.stdout
    assert keys(out) == single
