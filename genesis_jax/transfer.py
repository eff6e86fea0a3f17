"""Pre-trained weights into a target-task model: what fine-tuning starts from.

A source is a genesis-jax run directory (its best checkpoint), or an official-layout
PyTorch `.pt`/`.pth` state_dict of the Genesis UNet3D. What is copied depends on the
target task, as in the paper: the encoder (down_tr64 .. down_tr512) for classification
(GenesisClassifier holds the same encoder modules), the whole U-Net except the final
1x1x1 layer (out_tr, whose class count is the target's) for segmentation. Parameters
and BatchNorm statistics are copied; every copied array must have the target's shape,
else nothing is copied and the error names each mismatch.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from genesis_jax.errors import UserError

ENCODER = ("down_tr64", "down_tr128", "down_tr256", "down_tr512")
DECODER = ("up_tr256", "up_tr128", "up_tr64")
PARTS = {"encoder": ENCODER, "all_but_final": ENCODER + DECODER}  # part -> its top-level modules


def load_source(init):
    """(UNet3D holding the source's weights, a one-line description of where from, the
    run's config for a run directory else None)."""
    path = Path(init)
    if path.is_dir():
        from genesis_jax.trainer import load_checkpoint, read_run_config
        cfg = read_run_config(path)
        model, meta = load_checkpoint(cfg, path, best=True)
        return model, f"{path} (best checkpoint, step {meta.get('step', '?')}, width {cfg.model.width})", cfg
    if path.is_file() and path.suffix in (".pt", ".pth"):
        from genesis_jax.models import load_pytorch_checkpoint
        try:
            model = load_pytorch_checkpoint(path)
        except ValueError as e:
            raise UserError(str(e)) from None
        return model, f"{path} (PyTorch UNet3D, width {model.width})", None
    raise UserError(f"init {init}: neither a genesis-jax run directory nor a .pt/.pth file")


def transfer_weights(target: nnx.Module, source: nnx.Module, part: str, source_name: str = "the source") -> list[str]:
    """Copy `part` of source's weights into target in place; the copied paths, sorted.
    UserError naming every missing or mis-shaped array (target left unchanged)."""
    if part not in PARTS:
        raise UserError(f"part must be one of {tuple(PARTS)}, got {part!r}")
    wanted = PARTS[part].__contains__
    given = {path: var for path, var in nnx.to_flat_state(nnx.state(source)) if wanted(str(path[0]))}
    flat = nnx.to_flat_state(nnx.state(target))
    needed = {path: var for path, var in flat if wanted(str(path[0]))}
    missing = sorted(".".join(map(str, p)) for p in needed.keys() - given.keys())
    misshaped = sorted(f"{'.'.join(map(str, p))} {tuple(given[p].shape)} there, {tuple(v.shape)} in the model"
                       for p, v in needed.items()
                       if p in given and tuple(given[p].shape) != tuple(v.shape))
    if not needed:
        raise UserError(f"the model has no {part} weights to initialise")
    if missing or misshaped:
        problems = "; ".join(f"{len(items)} {what}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
                             for what, items in (("missing", missing), ("mis-shaped", misshaped)) if items)
        raise UserError(f"{source_name} does not fit the model's {part}: {problems}")
    for path, var in needed.items():
        var.set_value(jnp.asarray(given[path].get_value(), var.get_value().dtype))
    nnx.update(target, nnx.from_flat_state(flat))
    return sorted(".".join(map(str, p)) for p in needed)
