"""PyTorch weight import/export for UNet3D (the optional extra `torch`).

The official checkpoints (e.g. Genesis_Chest_CT.pt) are dicts with "state_dict" (keys
prefixed "module." when saved from DataParallel), possibly "epoch" and
"optimizer_state_dict"; a bare state_dict is accepted too. Layouts: Conv3d weight
(O, I, D, H, W) -> kernel (D, H, W, I, O); ConvTranspose3d weight (I, O, D, H, W) ->
kernel (D, H, W, I, O); BatchNorm weight/bias/running_mean/running_var -> scale/bias/
mean/var. Our (X, Y, Z) axes are torch's (D, H, W).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genesis_jax._optional import require
from genesis_jax.models.unet import UNet3D

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_OPTIONAL_TORCH_SUFFIX = ".num_batches_tracked"  # a BatchNorm buffer we do not use
_CONV_TO_JAX, _CONV_TO_TORCH = (2, 3, 4, 1, 0), (4, 3, 0, 1, 2)
_UPCONV_TO_JAX, _UPCONV_TO_TORCH = (2, 3, 4, 0, 1), (3, 4, 0, 1, 2)


def _torch():
    return require("torch", "PyTorch interop", "pip install torch, or pip install -e '.[torch]' in a clone")


def torch_key(path: tuple) -> str:
    """('down_tr64', 'ops0', 'conv1', 'kernel') -> 'down_tr64.ops.0.conv1.weight'."""
    *modules, leaf = (str(p) for p in path)
    modules = [f"ops.{m[3:]}" if m.startswith("ops") and m[3:].isdigit() else m for m in modules]
    return ".".join(modules + [_LEAF_TO_TORCH[leaf]])


def _axes(path: tuple, to_jax: bool):
    """Axis permutation for a kernel, None for vectors."""
    if str(path[-1]) != "kernel":
        return None
    if "up_conv" in (str(p) for p in path):
        return _UPCONV_TO_JAX if to_jax else _UPCONV_TO_TORCH
    return _CONV_TO_JAX if to_jax else _CONV_TO_TORCH


def _read_state_dict(path) -> dict:
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ValueError(f"{path}: expected a state_dict or a dict with 'state_dict', got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_pytorch_checkpoint(path, bn_mode: str = "batch", n_class: int | None = None, dtype=jnp.float32) -> UNet3D:
    """A UNet3D holding the weights of a PyTorch UNet3D checkpoint: width, input channels
    and classes read from it (the official layout with other first and last layer shapes;
    n_class given: the checkpoint must have that many).

    Every tensor must map: missing, unexpected or mis-shaped keys raise ValueError
    naming them; nothing is loaded partially.
    """
    state_dict = _read_state_dict(path)
    first = "down_tr64.ops.0.conv1.weight"
    if first not in state_dict:
        raise ValueError(f"{path}: not a Genesis UNet3D checkpoint (no '{first}'; keys start with "
                         f"{sorted(state_dict)[:3]})")
    width, in_channels = (int(d) for d in state_dict[first].shape[:2])
    final = state_dict.get("out_tr.final_conv.weight")
    if final is not None and n_class is not None and int(final.shape[0]) != n_class:
        raise ValueError(f"{path}: the checkpoint has n_class={int(final.shape[0])}, asked for n_class={n_class}")
    n_class = n_class or (int(final.shape[0]) if final is not None else 1)

    abstract = nnx.eval_shape(lambda: UNet3D(n_class, width, bn_mode, dtype, rngs=nnx.Rngs(0), in_channels=in_channels))
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    expected = {torch_key(p): (p, v) for p, v in flat}
    present = {k for k in state_dict if not k.endswith(_OPTIONAL_TORCH_SUFFIX)}
    missing, unexpected = sorted(expected.keys() - present), sorted(present - expected.keys())
    misshaped = []
    values = {}
    for key, (p, var) in expected.items():
        if key not in state_dict:
            continue
        array = state_dict[key].detach().cpu().float().numpy()
        axes = _axes(p, to_jax=True)
        array = array.transpose(axes) if axes else array
        if array.shape != var.shape:
            to_torch = _axes(p, to_jax=False) or range(len(var.shape))
            misshaped.append(f"{key}: checkpoint {tuple(state_dict[key].shape)}, model needs "
                             f"{tuple(var.shape[i] for i in to_torch)}")
        values[p] = array
    if missing or unexpected or misshaped:
        def listing(name, items):
            return f"{len(items)} {name}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}" if items else ""
        problems = "; ".join(x for x in (listing("missing", missing), listing("unexpected", unexpected),
                                         listing("mis-shaped", misshaped)) if x)
        raise ValueError(f"{path}: does not match UNet3D(width={width}, in_channels={in_channels}, n_class={n_class}): "
                         f"{problems}")
    for p, var in flat:
        var.set_value(jnp.asarray(values[p], var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def pytorch_state_dict(model: UNet3D) -> dict:
    """{official key: torch tensor} for a UNet3D, including num_batches_tracked buffers."""
    torch = _torch()
    out = {}
    for p, var in nnx.to_flat_state(nnx.state(model)):
        array = np.asarray(jax.device_get(var.get_value()), np.float32)
        axes = _axes(p, to_jax=False)
        out[torch_key(p)] = torch.from_numpy(np.array(array.transpose(axes) if axes else array, order="C"))
        if str(p[-1]) == "var":
            out[torch_key(p)[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def save_pytorch_checkpoint(model: UNet3D, path) -> None:
    """Write {"state_dict": ...} with the official key names (load_state_dict(strict=True)
    into the official UNet3D works). Written to a temporary file, then renamed."""
    torch = _torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"state_dict": pytorch_state_dict(model)}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
