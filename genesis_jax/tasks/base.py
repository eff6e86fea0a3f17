"""What a task supplies to the one training loop (trainer.py), and the checks tasks share.

A task is an object with:
    name                           recorded in checkpoints
    picture_name                   the validation PNGs' name (images/val_<picture_name>_<step>.png)
    default_config()               the config a run directory's config.json is read over
    check_config()                 UserError naming the field for a value it cannot use
    check_data(require_data)       the same for the data fields (require_data=False: dry run)
    identity() -> dict             config fields a checkpoint must match to be resumed
    build_model(rngs) -> Module    the model with fresh weights, built in this one place
    init_source() -> str | None    where pre-trained weights come from (None: nowhere), and
    part, pretrained_modules()     which of them (transfer.PARTS); rundir.new_model copies them in
    load_data() -> RunData         training source (.batch) and validation cubes (.rows)
    prepare(key, batch, mesh, first_index=0) -> (inputs, targets)
                                   on device, inside jit; each device only its own rows
    loss(model, inputs, targets) -> (scalar loss, outputs)
    metrics(outputs, targets) -> dict   extra validation metrics (batch means)
    picture(inputs, targets, outputs, title, key) -> uint8 image of the first examples
                                   (title: step and loss; key: the one they were prepared with)
and optionally set_metrics(targets, outputs) (scores of the whole validation set) and
volume_metrics(model, mesh, batch_size) (scores of whole validation volumes).
The loop owns everything else: mesh, jitted sharded steps, evaluation, checkpoints,
preemption, logs and progress. A new task is a module in this package and one line in
tasks/__init__.py's TASKS.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from genesis_jax.data.cases import unknown_modalities
from genesis_jax.errors import UserError
from genesis_jax.models import UNet3D
from genesis_jax.models.unet import UNet2D
from genesis_jax.models.conv import CONV_MODES, resolve_conv_mode
from genesis_jax.models.resnet_unet import SMP_WIDTH, ResNet18UNet
from genesis_jax.transfer import PARTS, check_init_channels

MODEL_DTYPES = ("float32", "bfloat16")
ARCHS = ("unet", "resnet18_unet")


def model_dtype(name: str):
    if name not in MODEL_DTYPES:
        raise UserError(f"model.dtype must be one of {', '.join(MODEL_DTYPES)}, got {name!r}")
    return jnp.dtype(name)


def check_model(model_cfg, dims: int = 3, export_pytorch: bool = False) -> None:
    """The model fields, for data of `dims` spatial axes (a run that exports to PyTorch:
    a layout PyTorch has)."""
    model_dtype(model_cfg.dtype)
    if model_cfg.width < 1:
        raise UserError(f"model.width must be >= 1, got {model_cfg.width}")
    if model_cfg.in_channels < 1:
        raise UserError(f"model.in_channels must be >= 1, got {model_cfg.in_channels}")
    arch = model_cfg.get("arch", "unet")
    if arch not in ARCHS:
        raise UserError(f"model.arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if arch == "resnet18_unet" and dims != 2:
        raise UserError("model.arch=resnet18_unet is a 2D model: its data is 2D images (data.cube_shape or "
                        "data.patch_shape of two sizes, e.g. --config=genesis_2d)")
    if arch == "resnet18_unet" and export_pytorch and model_cfg.width != SMP_WIDTH:
        raise UserError(f"model.width={model_cfg.width}: resnet18_unet exports to PyTorch (smp's layout) only at "
                        f"width {SMP_WIDTH}: pass --config.model.width={SMP_WIDTH} or --config.export_pytorch=False")


def min_side(model_cfg) -> int:
    """What every spatial size must be a multiple of: the U-Net pools three times, the
    ResNet-18 encoder halves the image five times."""
    return 32 if model_cfg.get("arch", "unet") == "resnet18_unet" else 8


def check_modality(data_cfg, per_channel: bool = True) -> None:
    """ct or mr, or (per_channel) one per channel: ct,mr."""
    if not per_channel and "," in str(data_cfg.modality):
        raise UserError(f"data.modality {data_cfg.modality!r}: one value here (the volumes are read as one channel; "
                        f"a store of several channels was normalised by prepare --modality)")
    if unknown_modalities(data_cfg.modality):
        raise UserError(f"data.modality must be 'ct', 'mr' or 'xray' (or one per channel: 'ct,mr'), got "
                        f"{data_cfg.modality!r}")


def check_paths_exist(field: str, paths) -> None:
    """UserError naming the field and the first path that is not there (before any work)."""
    for path in paths:
        if not Path(path).exists():
            raise UserError(f"{field}: {path}: no such file or directory")


def check_multiple_of_8(field: str, shape, dims=(3,), multiple: int = 8) -> None:
    """UserError naming the field unless the shape is `dims` positive multiples of 8 (the
    U-Net pools three times; `multiple`=32 for the ResNet-18 encoder)."""
    if len(shape) not in dims:
        wanted = " or ".join({3: "three sizes (X, Y, Z)", 2: "two sizes (H, W)"}[d] for d in dims)
        raise UserError(f"{field} {tuple(shape)}: need {wanted}")
    if any(d % multiple or d < multiple for d in shape):
        raise UserError(f"{field} {tuple(shape)}: every dim must be a multiple of {multiple}")


def follow_channels(model_cfg, channels, source: str) -> None:
    """model.in_channels follows the data: left at 1 it becomes the data's channel count;
    another value must be that count (UserError naming the field and the source)."""
    count = len(channels)
    if model_cfg.in_channels not in (1, count):
        raise UserError(f"model.in_channels={model_cfg.in_channels}, but {source} has {count} channel(s) "
                        f"({', '.join(channels)}): leave model.in_channels at 1 (it follows the data) or set {count}")
    model_cfg.in_channels = count


def mesh_space(cfg) -> int:
    """config.mesh.space: devices sharing one patch (1 in configs from before the field)."""
    mesh = cfg.get("mesh")
    return int(mesh.get("space", 1)) if mesh is not None else 1


def refuse_space(cfg, task: str) -> None:
    """UserError for mesh.space > 1 in a task whose examples fit one device."""
    if mesh_space(cfg) != 1:
        raise UserError(f"mesh.space={mesh_space(cfg)}: {task} keeps the data axis only (its examples fit one "
                        f"device); spatial partitioning splits segmentation patches (finetune "
                        f"--config=segmentation, predict --mesh-space): leave mesh.space at 1")


def check_space_split(field: str, shape, space: int, multiple: int = 8, space_name: str = "mesh.space=") -> None:
    """UserError naming the field unless X splits into `space` slabs that stay whole
    through the U-Net's poolings: X / space a multiple of `multiple` (8: three poolings)."""
    if space < 1:
        raise UserError(f"{space_name}{space}: must be >= 1")
    if space > 1 and shape[0] % (multiple * space):
        raise UserError(f"{field} {tuple(shape)} with {space_name}{space}: X = {shape[0]} must be a multiple of "
                        f"{multiple} x {space} = {multiple * space} (each device's slab, X / {space} = "
                        f"{shape[0] / space:g}, must stay a multiple of {multiple} through the U-Net's poolings)")


def spatial_conv(conv: str, space: int) -> str:
    """The convolutions' formulation under a 'space' axis of `space` devices: native. The
    stacked form folds X into the batch, which the partitioner can only do by gathering
    every activation (tests/test_spatial.py shows it)."""
    if space == 1:
        return conv
    if conv == "stacked2d":
        raise UserError(f"model.conv=stacked2d with mesh.space={space}: the stacked form folds X into the batch, "
                        f"which a split X cannot be (XLA would gather every activation); use auto or native")
    return "native"


def build_unet(model_cfg, rngs, n_class: int = 1, platform: str | None = None, dims: int = 3, space: int = 1):
    """The configured U-Net for data of `dims` spatial axes (UNet3D, its 2D counterpart,
    or ResNet18UNet); platform: resolve conv="auto" for that platform (an ahead-of-time
    compile for another one), not for this machine; space > 1: native convolutions
    (spatial_conv)."""
    if model_cfg.bn_mode not in ("batch", "running"):
        raise UserError(f"model.bn_mode must be 'batch' or 'running', got {model_cfg.bn_mode!r}")
    if model_cfg.width < 1:
        raise UserError(f"model.width must be >= 1, got {model_cfg.width}")
    if model_cfg.conv not in CONV_MODES:
        raise UserError(f"model.conv must be one of {', '.join(CONV_MODES)}, got {model_cfg.conv!r}")
    check_model(model_cfg, dims)
    if model_cfg.get("arch", "unet") == "resnet18_unet":
        return ResNet18UNet(n_class=n_class, width=model_cfg.width, bn_mode=model_cfg.bn_mode,
                            dtype=model_dtype(model_cfg.dtype), rngs=rngs, in_channels=model_cfg.in_channels)
    conv = resolve_conv_mode(model_cfg.conv, platform) if platform else model_cfg.conv
    conv = spatial_conv(conv, space)
    unet = UNet3D if dims == 3 else UNet2D
    return unet(n_class=n_class, width=model_cfg.width, bn_mode=model_cfg.bn_mode,
                dtype=model_dtype(model_cfg.dtype), rngs=rngs, conv=conv, in_channels=model_cfg.in_channels)


# Model fields at these values are left out of a run's identity: runs from before the
# field existed (one channel, the U-Net) still resume.
_IDENTITY_DEFAULTS = {"in_channels": 1, "arch": "unet"}


def model_identity(model_cfg) -> dict:
    """The model fields a checkpoint must match; conv is left out (its formulations have
    the same weights and sums), and in_channels and arch at their defaults."""
    return {k: v for k, v in model_cfg.items()
            if k != "conv" and not (k in _IDENTITY_DEFAULTS and v == _IDENTITY_DEFAULTS[k])}


class FineTuneTask:
    """What the fine-tuning tasks share: `init` says where the weights of `part`
    (transfer.PARTS) come from; the optimizer scales or freezes those parameters'
    updates (optimizer.pretrained_lr_multiplier, optimizer.freeze_pretrained_steps)."""

    part = "all_but_final"

    def __init__(self, cfg, platform: str | None = None):
        """platform: compile for that platform (the dry run's target) rather than this machine's."""
        self.cfg, self.platform = cfg, platform
        self.channels = None  # the data's channel names, once loaded (picture columns)

    def check_init(self) -> None:
        check_init_channels(self.cfg.init_channels)
        if self.cfg.init != "scratch":
            check_paths_exist("init", [self.cfg.init])
        optimizer = self.cfg.optimizer
        tuned = optimizer.pretrained_lr_multiplier != 1.0 or optimizer.freeze_pretrained_steps > 0
        if self.cfg.init == "scratch" and tuned:
            raise UserError("optimizer.pretrained_lr_multiplier and optimizer.freeze_pretrained_steps act on "
                            "pre-trained weights, and init is 'scratch': pass --config.init=RUN_DIR|MODEL.pt")

    def init_source(self) -> str | None:
        """A run directory or .pt file whose `part` starts the model, None from scratch."""
        return None if self.cfg.init == "scratch" else str(self.cfg.init)

    def pretrained_modules(self) -> tuple:
        """The top-level modules whose weights come from init (none from scratch)."""
        return () if self.init_source() is None else PARTS[self.part]
