"""Tiny training runs for the loop's tests: a width-4 U-Net on 16^3 cubes of the embedded sample."""

import hashlib
from pathlib import Path

import jax
import numpy as np

from genesis_jax.configs.demo import get_config
from genesis_jax.rundir import load_checkpoint


# One tiny config for every run of the suite, in process or on the command line: each
# other batch, device count, cube shape or schedule is another set of programs to compile
# (~50 s cold on 2 cores), while a run whose programs an earlier one compiled loads them
# from the persistent cache in a few seconds.
# The paper's optimizer, schedule and four deformations, whatever the demo trains with: the
# loop's tests check SGD momentum, StepLR drops and every stage of the pipeline.
TINY = {"total_steps": 3, "batch_size": 8, "steps_per_epoch": 2, "eval_every": 2, "checkpoint_every": 1,
        "log_every": 1, "images": 2, "export_pytorch": False, "data.cube_shape": (16, 16, 16), "data.val_cubes": 8,
        "deform.local_blocks": 300, "optimizer.name": "sgd", "optimizer.learning_rate": 1.0, "schedule.kind": "step",
        "deform.nonlinear_rate": 0.9}


def tiny_config(**top):
    """The demo config at TINY's values; top: top-level fields to change."""
    c = get_config()
    for key, value in {**TINY, **top}.items():
        *path, field = key.split(".")
        node = c
        for part in path:
            node = node[part]
        node[field] = value
    return c


def tiny_flags(*flags: str) -> list[str]:
    """Command-line flags for the config tiny_config() gives (the same programs), then flags."""
    return [f"--config.{key}={value}" for key, value in TINY.items()] + list(flags)


def checkpoint_steps(workdir):
    return sorted(int(p.name) for p in (Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


def complete_checkpoints(workdir: Path) -> dict[int, str]:
    """step -> sha256 over the relative paths and bytes of every file of the checkpoint."""
    out = {}
    for directory in (workdir / "checkpoints").glob("*"):
        if directory.name.isdigit():
            digest = hashlib.sha256()
            for f in sorted(p for p in directory.rglob("*") if p.is_file()):
                digest.update(str(f.relative_to(directory)).encode() + b"\0" + f.read_bytes())
            out[int(directory.name)] = digest.hexdigest()
    return out


def damage(checkpoint_dir):
    """Zero the files of a checkpoint's train state (what a bad disk or a torn copy leaves)."""
    for f in Path(checkpoint_dir).rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in str(f):
            f.write_bytes(b"\0" * 16)


def params_of(cfg, workdir):
    from flax import nnx
    model, meta = load_checkpoint(cfg, workdir)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))], meta
