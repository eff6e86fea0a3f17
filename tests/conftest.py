"""Test setup: 8 simulated CPU devices, set before jax is first imported."""

import os
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile the same small programs many times (each training run, each subprocess):
# the persistent cache turns the repeats into loads.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import pytest  # noqa: E402 (after the environment above, which jax reads on import)

# XLA without most of its optimisations (jax_disable_most_optimizations: LLVM at -O0, no
# expensive passes) compiles the suite's tiny programs about 3x faster (a cold tiny
# training run: 18.6 s against 51.7 s) and computes the same numbers (its validation
# losses were bitwise the optimised build's). Tests that check what a compiled program
# does (FLOPs, bytes, collectives, loops) or that run long (marker `optimized`), and the
# full-size ones (`slow`, `gpu`: timings and the programs users run) compile as users do.
# Set per test, before its fixtures, and in the environment its subprocesses inherit.
OPTIMIZED_MARKERS = ("optimized", "slow", "gpu")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    optimized = any(item.get_closest_marker(name) for name in OPTIMIZED_MARKERS)
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0" if optimized else "1"
    import jax
    jax.config.update("jax_disable_most_optimizations", not optimized)


@pytest.fixture(autouse=True)
def prepare_in_one_process(monkeypatch):
    """prepare's default is a worker per core, and a pool of spawned workers takes 1.5 s to
    start: longer than the few small inputs of a test take in one process. Tests that call
    prepare in this process prepare in it unless they pass --workers (test_prepare_archive.py
    does; its test of the default count calls default_workers itself)."""
    import genesis_jax.data.archive as archive
    monkeypatch.setattr(archive, "default_workers", lambda: (1, "tests: in this process"))


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """A tiny pre-training run (width 4, 2 steps): the init source of fine-tuning tests."""
    from genesis_jax.trainer import train
    from runs import tiny_config
    workdir = tmp_path_factory.mktemp("pre") / "run"
    train(tiny_config(total_steps=2), workdir)
    return workdir
