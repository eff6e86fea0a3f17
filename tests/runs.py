"""Tiny training runs for the loop's tests: a width-4 U-Net on 16^3 cubes of the embedded sample."""

import hashlib
from pathlib import Path

import jax
import numpy as np

from genesis_jax.configs.demo import get_config
from genesis_jax.rundir import load_checkpoint


def tiny_config(**top):
    c = get_config()
    c.total_steps, c.batch_size, c.steps_per_epoch = 3, 8, 2
    c.eval_every, c.checkpoint_every, c.log_every = 2, 1, 1
    c.data.cube_shape, c.data.val_cubes = (16, 16, 16), 8
    c.deform.local_blocks = 300
    c.images, c.export_pytorch = 2, False
    for key, value in top.items():
        c[key] = value
    return c


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
