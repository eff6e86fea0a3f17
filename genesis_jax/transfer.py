"""Pre-trained weights into a target-task model: what fine-tuning starts from.

The source is a model (rundir.load_source reads one from a genesis-jax run directory's
best checkpoint or an official-layout PyTorch `.pt`/`.pth`). What is copied depends on the
target task, as in the paper: the encoder (down_tr64 .. down_tr512) for classification
(GenesisClassifier holds the same encoder modules), the whole U-Net except the final
1x1x1 layer (out_tr, whose class count is the target's) for segmentation. Parameters
and BatchNorm statistics are copied; every copied array must have the target's shape,
else nothing is copied and the error names each mismatch.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from genesis_jax.errors import UserError

ENCODER = ("down_tr64", "down_tr128", "down_tr256", "down_tr512")
DECODER = ("up_tr256", "up_tr128", "up_tr64")
PARTS = {"encoder": ENCODER, "all_but_final": ENCODER + DECODER}  # part -> its top-level modules


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
