"""The pre-training task, Models Genesis: corrupt clean cubes on device, restore them,
MSE against the originals."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from genesis_jax.configs.base import base_config
from genesis_jax.data.store import check_local_store, read_store_channels
from genesis_jax.data.volumes import split_paths
from genesis_jax.deform import DeformConfig, sharded_genesis_batch
from genesis_jax.deform.config import HOW_COMPUTED, resolve_lookups
from genesis_jax.errors import UserError
from genesis_jax.models import UNet3D
from genesis_jax.tasks.base import build_unet, check_model, check_modality, check_multiple_of_8, \
    check_paths_exist, follow_channels, min_side, model_identity, refuse_space
from genesis_jax.transfer import check_init_channels


def restoration_mse(restored, target):
    """Mean squared error between a restoration and its target, in float32."""
    return jnp.mean(jnp.square(restored - target.astype(jnp.float32)))


def restoration_loss(model: UNet3D, corrupted, target):
    """(MSE between the sigmoid output and the target, restored cubes); cubes (N, X, Y, Z, C)
    (2D models: images (N, H, W, C)), the model's C outputs restoring its C inputs, or
    without the channel axis for one channel."""
    if corrupted.ndim == model.dims + 1:
        restored = model(corrupted[..., None])[..., 0]
    else:
        restored = model(corrupted)
    return restoration_mse(restored, target), restored


class PretrainTask:
    """Models Genesis: corrupt clean cubes on device, restore them, MSE against the originals."""

    name, picture_name = "pretrain", "restoration"
    default_config = staticmethod(base_config)
    part = "all"  # with init: every weight, the last layer spread to C outputs (transfer.py)

    def __init__(self, cfg, platform: str | None = None):
        """platform: compile for that platform (the dry run's target) rather than this machine's."""
        self.cfg, self.platform = cfg, platform
        self.deform, self.channels = None, None  # channels: the data's names, once loaded

    def check_config(self) -> None:
        try:
            self.deform = DeformConfig(**self.cfg.deform)
        except (TypeError, ValueError) as e:
            raise UserError(f"deform: {e}") from None
        if self.platform and self.deform.batch_mode == "auto":
            self.deform = dataclasses.replace(self.deform, batch_mode="map" if self.platform == "cpu" else "vmap")
        if self.platform:  # a dry run compiles for its target, not for this host
            self.deform = dataclasses.replace(self.deform, lookups=resolve_lookups(self.deform.lookups, self.platform))
        shape = self.cfg.data.cube_shape
        refuse_space(self.cfg, "pre-training")
        check_model(self.cfg.model, len(shape), self.cfg.export_pytorch)
        check_init_channels(self.cfg.init_channels)
        check_multiple_of_8("data.cube_shape", shape, dims=(2, 3), multiple=min_side(self.cfg.model))
        if self.deform.dims != len(shape):
            raise UserError(f"deform.dims={self.deform.dims}, but data.cube_shape {tuple(shape)} has {len(shape)} "
                            f"sizes: 2D pre-training runs --config=genesis_2d (deform.dims=2, the shuffle's "
                            f"blocks scaled to the image)")
        check_modality(self.cfg.data, per_channel=False)
        if self.cfg.data.val_cubes < 1:
            raise UserError(f"data.val_cubes must be >= 1, got {self.cfg.data.val_cubes}")

    def check_data(self, require_data: bool = True) -> None:
        """require_data=False: the dry run, which compiles without reading data."""
        data = self.cfg.data
        if data.source not in ("sample", "store", "volumes"):
            raise UserError(f"data.source must be 'sample', 'store' or 'volumes', got {data.source!r}")
        if require_data and data.source == "store" and not data.store:
            raise UserError("data.source is 'store' but data.store is empty: pass --config.data.store=PATH")
        if require_data and data.source == "volumes" and not data.volumes:
            raise UserError("data.source is 'volumes' but data.volumes is empty: pass --config.data.volumes=A,B")
        if data.cubes_per_volume < 1:
            raise UserError(f"data.cubes_per_volume must be >= 1, got {data.cubes_per_volume}")
        if require_data and data.source == "volumes":
            check_paths_exist("data.volumes", split_paths(data.volumes))
        if require_data and data.source == "store":
            check_local_store(data.store, "data.store")
            follow_channels(self.cfg.model, read_store_channels(data.store), f"data.store {data.store}")
        if require_data and self.cfg.init != "scratch":
            check_paths_exist("init", [self.cfg.init])

    def identity(self) -> dict:
        # map and vmap: same arrays; table and compute lookups: the same deformation (the
        # shuffle bit for bit, the Bezier map to the table's interpolation error).
        deform = {k: v for k, v in self.cfg.deform.items() if k not in HOW_COMPUTED}
        for field, default in (("channels", "shared"), ("dims", 3)):
            if deform.get(field) == default:
                del deform[field]  # the default: runs from before the field still resume
        data = {k: v for k, v in self.cfg.data.items()}
        return {"model": model_identity(self.cfg.model), "deform": deform, "data": data}

    def build_model(self, rngs) -> UNet3D:
        """The U-Net restoring its in_channels inputs: as many outputs."""
        return build_unet(self.cfg.model, rngs, n_class=self.cfg.model.in_channels, platform=self.platform,
                          dims=len(self.cfg.data.cube_shape))

    def init_source(self) -> str | None:
        """Random weights (scratch), or a run directory or .pt to continue from."""
        return None if self.cfg.init == "scratch" else str(self.cfg.init)

    @staticmethod
    def pretrained_modules() -> tuple:
        return ()

    def load_data(self):
        from genesis_jax.data.sources import load_run_data
        data = load_run_data(self.cfg.data, self.cfg.seed)
        self.channels = data.channels  # the pictures' column names
        return data

    def prepare(self, key, cubes, mesh, first_index=0):
        if self.deform is None:
            self.check_config()
        return sharded_genesis_batch(key, cubes, self.deform, mesh, first_index=first_index)

    loss = staticmethod(restoration_loss)

    @staticmethod
    def metrics(outputs, targets) -> dict:
        return {}

    def picture(self, inputs, targets, outputs, title="", key=None):
        """corrupted / restored / original of each example, rows named by the deformations
        its key drew (the picture's examples are the batch's first: first_index 0)."""
        from genesis_jax.deform.pipeline import describe_draws
        from genesis_jax.metrics import labelled_grid
        rows = describe_draws(key, len(inputs), self.deform) if key is not None else None
        return labelled_grid({"corrupted (input)": inputs, "restored (output)": outputs,
                              "original (target)": targets}, title=title, row_labels=rows,
                             channels=self.channels, dims=self.deform.dims)
