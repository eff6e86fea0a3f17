"""What a task supplies to the one training loop (trainer.py), and the pre-training task.

A task is an object with:
    name                           recorded in checkpoints
    check_config()                 UserError naming the field for a value it cannot use
    identity() -> dict             config fields a checkpoint must match to be resumed
    build_model(rngs) -> Module    the model, built in this one place
    load_data() -> RunData         training source (.batch) and validation cubes (.rows)
    prepare(key, batch, mesh, first_index=0) -> (inputs, targets)
                                   on device, inside jit; each device only its own rows
    loss(model, inputs, targets) -> (scalar loss, outputs)
    metrics(outputs, targets) -> dict   extra validation metrics (batch means)
    picture(inputs, targets, outputs) -> uint8 image of the first examples
The loop owns everything else: mesh, jitted sharded steps, evaluation, checkpoints,
preemption, logs and progress.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from genesis_jax.deform import DeformConfig, sharded_genesis_batch
from genesis_jax.deform.config import resolve_lookups
from genesis_jax.errors import UserError
from genesis_jax.models import UNet3D
from genesis_jax.models.conv import CONV_MODES, resolve_conv_mode

MODEL_DTYPES = ("float32", "bfloat16")


def model_dtype(name: str):
    if name not in MODEL_DTYPES:
        raise UserError(f"model.dtype must be one of {', '.join(MODEL_DTYPES)}, got {name!r}")
    return jnp.dtype(name)


def build_unet(model_cfg, rngs, n_class: int = 1, platform: str | None = None) -> UNet3D:
    """The configured U-Net; platform: resolve conv="auto" for that platform (an
    ahead-of-time compile for another one), not for this machine."""
    if model_cfg.bn_mode not in ("batch", "running"):
        raise UserError(f"model.bn_mode must be 'batch' or 'running', got {model_cfg.bn_mode!r}")
    if model_cfg.width < 1:
        raise UserError(f"model.width must be >= 1, got {model_cfg.width}")
    if model_cfg.conv not in CONV_MODES:
        raise UserError(f"model.conv must be one of {', '.join(CONV_MODES)}, got {model_cfg.conv!r}")
    conv = resolve_conv_mode(model_cfg.conv, platform) if platform else model_cfg.conv
    return UNet3D(n_class=n_class, width=model_cfg.width, bn_mode=model_cfg.bn_mode,
                  dtype=model_dtype(model_cfg.dtype), rngs=rngs, conv=conv)


def restoration_mse(restored, target):
    """Mean squared error between a restoration and its target, in float32."""
    return jnp.mean(jnp.square(restored - target.astype(jnp.float32)))


def restoration_loss(model: UNet3D, corrupted, target):
    """(MSE between the sigmoid output and the target, restored cubes); cubes (N, X, Y, Z)."""
    restored = model(corrupted[..., None])[..., 0]
    return restoration_mse(restored, target), restored


class PretrainTask:
    """Models Genesis: corrupt clean cubes on device, restore them, MSE against the originals."""

    name = "pretrain"

    def __init__(self, cfg, platform: str | None = None):
        """platform: compile for that platform (the dry run's target) rather than this machine's."""
        self.cfg, self.platform = cfg, platform
        self.deform = None

    def check_config(self) -> None:
        try:
            self.deform = DeformConfig(**self.cfg.deform)
        except (TypeError, ValueError) as e:
            raise UserError(f"deform: {e}") from None
        if self.platform and self.deform.batch_mode == "auto":
            self.deform = dataclasses.replace(self.deform, batch_mode="map" if self.platform == "cpu" else "vmap")
        if self.platform:  # a dry run compiles for its target, not for this host
            self.deform = dataclasses.replace(self.deform, lookups=resolve_lookups(self.deform.lookups, self.platform))
        model_dtype(self.cfg.model.dtype)
        if any(d % 8 for d in self.cfg.data.cube_shape):
            raise UserError(f"data.cube_shape {tuple(self.cfg.data.cube_shape)}: every dim must be divisible by 8")

    def identity(self) -> dict:
        # map and vmap: same arrays; table and compute lookups: the same deformation (the
        # shuffle bit for bit, the Bezier map to the table's interpolation error).
        deform = {k: v for k, v in self.cfg.deform.items() if k not in ("batch_mode", "lookups")}
        data = {k: v for k, v in self.cfg.data.items()}
        model = {k: v for k, v in self.cfg.model.items() if k != "conv"}  # formulations: same weights and sums
        return {"model": model, "deform": deform, "data": data}

    def build_model(self, rngs) -> UNet3D:
        return build_unet(self.cfg.model, rngs, platform=self.platform)

    def load_data(self):
        from genesis_jax.data.sources import load_run_data
        return load_run_data(self.cfg.data, self.cfg.seed)

    def prepare(self, key, cubes, mesh, first_index=0):
        if self.deform is None:
            self.check_config()
        return sharded_genesis_batch(key, cubes, self.deform, mesh, first_index=first_index)

    loss = staticmethod(restoration_loss)

    @staticmethod
    def metrics(outputs, targets) -> dict:
        return {}

    @staticmethod
    def picture(inputs, targets, outputs):
        from genesis_jax.metrics import restoration_grid
        return restoration_grid(inputs, targets, outputs)
