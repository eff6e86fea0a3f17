"""Pre-trained weights into a target-task model: what fine-tuning starts from.

The source is a model (rundir.load_source reads one from a genesis-jax run directory's
best checkpoint or an official-layout PyTorch `.pt`/`.pth`). What is copied depends on the
target task, as in the paper: the encoder (down_tr64 .. down_tr512) for classification
(GenesisClassifier holds the same encoder modules), the whole U-Net except the final
1x1x1 layer (out_tr, whose class count is the target's) for segmentation. Parameters
and BatchNorm statistics are copied; every copied array must have the target's shape,
else nothing is copied and the error names each mismatch.

Channels: a one-channel source (every official Genesis model) fits a model of C input
channels through its first convolution, by `init_channels`: "spread" copies its kernel
to every input channel scaled by 1/C, so a case whose C channels are identical gives
exactly the one-channel model's activations (to float rounding); a channel number k
copies it to channel k only (zeros elsewhere: the model starts as the one-channel model
of channel k). A restoration model's last layer (out_tr, copied when pre-training
starts from a model) goes to each of its C output channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from genesis_jax.errors import UserError

ENCODER = ("down_tr64", "down_tr128", "down_tr256", "down_tr512")
DECODER = ("up_tr256", "up_tr128", "up_tr64")
PARTS = {"encoder": ENCODER, "all_but_final": ENCODER + DECODER,  # part -> its top-level modules
         "all": ENCODER + DECODER + ("out_tr",)}
FIRST_KERNEL = ("down_tr64", "ops0", "conv1", "kernel")   # (3, 3, 3, C_in, width)
LAST_LAYER = ("out_tr", "final_conv")                    # kernel (1, 1, 1, 2 width, C_out), bias (C_out,)


def check_init_channels(text) -> str:
    """'spread' or a channel number; UserError naming the field."""
    text = str(text)
    if text != "spread" and not (text.isdigit()):
        raise UserError(f"init_channels must be 'spread' or a channel number (0, 1, ...), got {text!r}")
    return text


def fit_input_channels(kernel: jax.Array, channels: int, how: str = "spread") -> jax.Array:
    """A one-channel first kernel (..., 1, O) for `channels` inputs (init_channels)."""
    if how == "spread":
        return jnp.repeat(kernel, channels, axis=-2) / channels
    if int(how) >= channels:
        raise UserError(f"init_channels={how}: the model has {channels} input channels (0..{channels - 1})")
    return jnp.zeros(kernel.shape[:-2] + (channels, kernel.shape[-1]), kernel.dtype).at[..., int(how), :].set(
        kernel[..., 0, :])


def fit_channels(given: dict, needed: dict, how: str) -> dict:
    """given with a one-channel source's first kernel and last layer made to fit the target's
    channel counts (module docstring); everything else as it was."""
    out = dict(given)
    for path, var in needed.items():
        names = tuple(str(p) for p in path)
        if path not in given or tuple(given[path].shape) == tuple(var.shape):
            continue
        value, wanted = given[path].get_value(), var.shape
        if names == FIRST_KERNEL and value.shape[-2] == 1 and value.shape[-1] == wanted[-1]:
            out[path] = nnx.Param(fit_input_channels(value, wanted[-2], how))
        elif names[:2] == LAST_LAYER and value.shape[-1] == 1 and value.shape[:-1] == tuple(wanted[:-1]):
            out[path] = nnx.Param(jnp.repeat(value, wanted[-1], axis=-1))
    return out


def transfer_weights(target: nnx.Module, source: nnx.Module, part: str, source_name: str = "the source",
                     init_channels: str = "spread") -> list[str]:
    """Copy `part` of source's weights into target in place; the copied paths, sorted. A
    one-channel source fits a C-channel target (fit_channels). UserError naming every
    missing or mis-shaped array (target left unchanged)."""
    if part not in PARTS:
        raise UserError(f"part must be one of {tuple(PARTS)}, got {part!r}")
    wanted = PARTS[part].__contains__
    given = {path: var for path, var in nnx.to_flat_state(nnx.state(source)) if wanted(str(path[0]))}
    flat = nnx.to_flat_state(nnx.state(target))
    needed = {path: var for path, var in flat if wanted(str(path[0]))}
    given = fit_channels(given, needed, check_init_channels(init_channels))
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
