"""PyTorch weight import/export (the optional extra `torch`) for three layouts:

- the official Models Genesis UNet3D (down_tr64.ops.0.conv1.weight ...) -> UNet3D;
- its 2D counterpart, the same keys with 2D kernels -> UNet2D;
- segmentation_models_pytorch's Unet("resnet18") (encoder.conv1.weight,
  decoder.blocks.0.conv1.0.weight, segmentation_head.0.weight ...) -> ResNet18UNet.

The official checkpoints (e.g. Genesis_Chest_CT.pt) are dicts with "state_dict" (keys
prefixed "module." when saved from DataParallel), possibly "epoch" and
"optimizer_state_dict"; a bare state_dict is accepted too. Layouts: ConvNd weight
(O, I, *k) -> kernel (*k, I, O); ConvTransposeNd weight (I, O, *k) -> kernel (*k, I, O);
BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var. Our (X, Y, Z)
axes are torch's (D, H, W), our (H, W) torch's (H, W).
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
from genesis_jax.models.resnet_unet import SMP_WIDTH, ResNet18UNet
from genesis_jax.models.unet import UNet2D, UNet3D

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_OPTIONAL_TORCH_SUFFIX = ".num_batches_tracked"  # a BatchNorm buffer we do not use
# By kernel rank: (conv to jax, conv to torch, transposed conv to jax, transposed conv to torch)
_AXES = {5: ((2, 3, 4, 1, 0), (4, 3, 0, 1, 2), (2, 3, 4, 0, 1), (3, 4, 0, 1, 2)),
         4: ((2, 3, 1, 0), (3, 2, 0, 1), (2, 3, 0, 1), (2, 3, 0, 1))}
GENESIS_FIRST, SMP_FIRST = "down_tr64.ops.0.conv1.weight", "encoder.conv1.weight"


def _torch():
    return require("torch", "PyTorch interop", "pip install torch, or pip install -e '.[torch]' in a clone")


def torch_key(path: tuple) -> str:
    """('down_tr64', 'ops0', 'conv1', 'kernel') -> 'down_tr64.ops.0.conv1.weight';
    ('decoder', 'blocks', 0, 'conv1', 'layers', 0, 'kernel') -> 'decoder.blocks.0.conv1.0.weight'
    (a torch Sequential's children are our `layers` list)."""
    *modules, leaf = (str(p) for p in path)
    modules = [f"ops.{m[3:]}" if m.startswith("ops") and m[3:].isdigit() else m for m in modules if m != "layers"]
    return ".".join(modules + [_LEAF_TO_TORCH[leaf]])


def _axes(path: tuple, rank: int, to_jax: bool):
    """Axis permutation for a kernel of that rank, None for vectors."""
    if str(path[-1]) != "kernel":
        return None
    conv_jax, conv_torch, up_jax, up_torch = _AXES[rank]
    if "up_conv" in (str(p) for p in path):
        return up_jax if to_jax else up_torch
    return conv_jax if to_jax else conv_torch


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


def _model_for(state_dict: dict, path, bn_mode, n_class, dtype):
    """(abstract model, description) of the layout state_dict holds; ValueError if none."""
    if GENESIS_FIRST in state_dict:
        first, final, kind = GENESIS_FIRST, "out_tr.final_conv.weight", UNet3D
        if state_dict[first].ndim == 4:
            kind = UNet2D
        bn_mode = bn_mode or "batch"
    elif SMP_FIRST in state_dict and "decoder.blocks.0.conv1.0.weight" in state_dict:
        first, final, kind, bn_mode = SMP_FIRST, "segmentation_head.0.weight", ResNet18UNet, bn_mode or "running"
    else:
        raise ValueError(f"{path}: not a Genesis UNet3D/UNet2D or smp Unet('resnet18') checkpoint (no "
                         f"'{GENESIS_FIRST}' or '{SMP_FIRST}'; keys start with {sorted(state_dict)[:3]})")
    width, in_channels = (int(d) for d in state_dict[first].shape[:2])
    final_weight = state_dict.get(final)
    if final_weight is not None and n_class is not None and int(final_weight.shape[0]) != n_class:
        raise ValueError(f"{path}: the checkpoint has n_class={int(final_weight.shape[0])}, asked for n_class={n_class}")
    n_class = n_class or (int(final_weight.shape[0]) if final_weight is not None else 1)
    model = nnx.eval_shape(lambda: kind(n_class, width, bn_mode, dtype, rngs=nnx.Rngs(0), in_channels=in_channels))
    return model, f"{kind.__name__}(width={width}, in_channels={in_channels}, n_class={n_class})"


def load_pytorch_checkpoint(path, bn_mode: str | None = None, n_class: int | None = None, dtype=jnp.float32):
    """The model holding the weights of a PyTorch checkpoint in one of the module's
    layouts: UNet3D, UNet2D or ResNet18UNet, with width, input channels and classes read
    from it (n_class given: the checkpoint must have that many). bn_mode: None is the
    layout's own ("batch" for the Genesis U-Nets, as the official ContBatchNorm3d;
    "running" for smp's standard BatchNorm).

    Every tensor must map: missing, unexpected or mis-shaped keys raise ValueError
    naming them; nothing is loaded partially.
    """
    state_dict = _read_state_dict(path)
    abstract, description = _model_for(state_dict, path, bn_mode, n_class, dtype)
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
        axes = _axes(p, len(var.shape), to_jax=True)  # the model's kernel rank: a tensor of another is mis-shaped
        array = array.transpose(axes) if axes and array.ndim == len(var.shape) else array
        if array.shape != var.shape:
            to_torch = _axes(p, len(var.shape), to_jax=False) or range(len(var.shape))
            misshaped.append(f"{key}: checkpoint {tuple(state_dict[key].shape)}, model needs "
                             f"{tuple(var.shape[i] for i in to_torch)}")
        values[p] = array
    if missing or unexpected or misshaped:
        def listing(name, items):
            return f"{len(items)} {name}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}" if items else ""
        problems = "; ".join(x for x in (listing("missing", missing), listing("unexpected", unexpected),
                                         listing("mis-shaped", misshaped)) if x)
        raise ValueError(f"{path}: does not match {description}: {problems}")
    for p, var in flat:
        var.set_value(jnp.asarray(values[p], var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def pytorch_state_dict(model) -> dict:
    """{PyTorch key: tensor} for a UNet3D, UNet2D or ResNet18UNet, including
    num_batches_tracked buffers."""
    torch = _torch()
    out = {}
    for p, var in nnx.to_flat_state(nnx.state(model)):
        array = np.asarray(jax.device_get(var.get_value()), np.float32)
        axes = _axes(p, array.ndim, to_jax=False)
        out[torch_key(p)] = torch.from_numpy(np.array(array.transpose(axes) if axes else array, order="C"))
        if str(p[-1]) == "var":
            out[torch_key(p)[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def save_pytorch_checkpoint(model, path) -> None:
    """Write {"state_dict": ...} with the layout's key names: load_state_dict(strict=True)
    works into the official UNet3D (or its 2D counterpart) and, for a ResNet18UNet, into
    smp.Unet("resnet18", encoder_weights=None, in_channels=C, classes=K). Written to a
    temporary file, then renamed."""
    if isinstance(model, ResNet18UNet) and model.width != SMP_WIDTH:
        raise ValueError(f"a ResNet18UNet of width {model.width} has no PyTorch layout: smp's ResNet-18 "
                         f"is width {SMP_WIDTH}")
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
