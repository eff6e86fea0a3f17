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


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """A tiny pre-training run (width 4, 2 steps): the init source of fine-tuning tests."""
    from genesis_jax.trainer import train
    from runs import tiny_config
    workdir = tmp_path_factory.mktemp("pre") / "run"
    train(tiny_config(total_steps=2), workdir)
    return workdir
