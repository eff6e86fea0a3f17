"""Fine-tuning for segmentation: image patches in, one sigmoid channel per class out."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from genesis_jax.configs.base import segmentation_base
from genesis_jax.data.volumes import split_paths
from genesis_jax.errors import UserError
from genesis_jax.models import UNet3D
from genesis_jax.tasks.base import FineTuneTask, build_unet, check_model, check_modality, check_multiple_of_8, \
    check_paths_exist, model_identity


def parse_label_values(text) -> list[float]:
    """'5' or '5,6' (or a number) -> [5.0, 6.0]; UserError naming the field."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"data.label_values must be numbers separated by commas, got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise UserError(f"data.label_values must be distinct and non-empty, got {text!r}")
    return values


class SegmentationTask(FineTuneTask):
    """Fine-tuning for segmentation: image patches in, one sigmoid channel per class out,
    Dice/BCE against the labels; the U-Net but its last layer initialised from `init`.

    A batch row is (X, Y, Z, 2): the image patch and its class map (data/labelled.py);
    validation is a frozen set of patches drawn once from the validation volumes, scored
    by the loss and a hard Dice per class (outputs > 0.5)."""

    name, picture_name = "segmentation", "segmentation"
    default_config = staticmethod(segmentation_base)

    def __init__(self, cfg, platform: str | None = None):
        super().__init__(cfg, platform)
        self.val_volumes, self._apply = [], None

    @property
    def n_classes(self) -> int:
        return len(parse_label_values(self.cfg.data.label_values))

    def check_config(self) -> None:
        from genesis_jax.losses import SEGMENTATION_LOSSES
        check_model(self.cfg.model)
        check_modality(self.cfg.data)
        self.check_init()
        if self.cfg.loss not in SEGMENTATION_LOSSES:
            raise UserError(f"loss must be one of {', '.join(SEGMENTATION_LOSSES)}, got {self.cfg.loss!r}")
        parse_label_values(self.cfg.data.label_values)
        check_multiple_of_8("data.patch_shape", self.cfg.data.patch_shape)
        if not 0.0 <= self.cfg.data.foreground_ratio <= 1.0:
            raise UserError(f"data.foreground_ratio must be in [0, 1], got {self.cfg.data.foreground_ratio}")

    def check_data(self, require_data: bool = True) -> None:
        data = self.cfg.data
        for images, labels in (("train_images", "train_labels"), ("val_images", "val_labels")):
            if require_data and images == "train_images" and not split_paths(data[images]):
                raise UserError(f"data.{images} is empty: pass --config.data.{images}=A.nii.gz,B.nii.gz")
            if len(split_paths(data[images])) != len(split_paths(data[labels])):
                raise UserError(f"data.{images} has {len(split_paths(data[images]))} volumes, data.{labels} "
                                f"{len(split_paths(data[labels]))}: one label volume per image")
            if require_data:
                for field in (images, labels):
                    check_paths_exist(f"data.{field}", split_paths(data[field]))
        for name in ("patches_per_epoch", "val_patches"):
            if data[name] < 1:
                raise UserError(f"data.{name} must be >= 1, got {data[name]}")
        if not 0.0 < data.val_fraction < 1.0:
            raise UserError(f"data.val_fraction must be in (0, 1), got {data.val_fraction}")

    def identity(self) -> dict:
        return {"model": model_identity(self.cfg.model), "data": dict(self.cfg.data), "loss": self.cfg.loss,
                "init": self.cfg.init}

    def build_model(self, rngs) -> UNet3D:
        return build_unet(self.cfg.model, rngs, n_class=self.n_classes, platform=self.platform)

    def load_data(self):
        from genesis_jax.data.batches import InMemoryCubes
        from genesis_jax.data.labelled import PatchSampler, read_pair
        from genesis_jax.data.sources import RunData, files_sha256
        data, values = self.cfg.data, parse_label_values(self.cfg.data.label_values)
        pairs = {split: [read_pair(i, l, values, data.modality)
                         for i, l in zip(split_paths(data[f"{split}_images"]), split_paths(data[f"{split}_labels"]))]
                 for split in ("train", "val")}
        if not pairs["val"]:
            pairs["train"], pairs["val"] = self.held_out(pairs["train"])
        train = PatchSampler(pairs["train"], data.patch_shape, data.foreground_ratio, self.cfg.seed)
        frozen = PatchSampler(pairs["val"], data.patch_shape, data.foreground_ratio, self.cfg.seed + 1)
        validation = InMemoryCubes(frozen.batch(0, int(data.val_patches)))
        self.val_volumes = pairs["val"]
        keys = ("train_images", "train_labels", "val_images", "val_labels")
        paths = [p for key in keys for p in split_paths(data[key])]
        described = (f"{len(pairs['train'])} training and {len(pairs['val'])} validation volume(s), "
                     f"{len(values)} class(es) from label values {values}, patches {tuple(data.patch_shape)} "
                     f"({data.foreground_ratio:.0%} centred on foreground)")
        return RunData(train, validation, int(data.patches_per_epoch), described, files_sha256(paths))

    def held_out(self, pairs) -> tuple[list, list]:
        """(training pairs, validation pairs) when no validation volumes are given: a z slab
        of each training volume (data/labelled.py hold_out_slab), said in one line."""
        import jax

        from genesis_jax.data.labelled import hold_out_slab
        from genesis_jax.data.volumes import VolumeError
        data = self.cfg.data
        try:
            split = [hold_out_slab(image, classes, data.val_fraction, int(data.patch_shape[2]), path)
                     for (image, classes), path in zip(pairs, split_paths(data.train_images))]
        except VolumeError as e:
            raise UserError(f"no data.val_images given, and {e}") from None
        if jax.process_index() == 0:
            slabs = ", ".join(f"{Path(path).name} z {a}-{b - 1} of {image.shape[2]}"
                              for (_, _, (a, b)), path, (image, _) in zip(split, split_paths(data.train_images), pairs))
            print(f"validation: no data.val_images given: holding out {data.val_fraction:.0%} of each training "
                  f"volume's z slices, the end with more labelled voxels ({slabs}); no validation voxel is trained "
                  f"on", flush=True)
        return [train for train, _, _ in split], [val for _, val, _ in split]

    def prepare(self, key, batch, mesh, first_index=0):
        from genesis_jax.losses import one_hot_classes
        del key, mesh, first_index  # no augmentation: the patch is the example
        return batch[..., 0], one_hot_classes(jnp.round(batch[..., 1]).astype(jnp.int32), self.n_classes)

    def loss(self, model, images, targets):
        from genesis_jax.losses import segmentation_loss
        probs = model(images[..., None])
        return segmentation_loss(self.cfg.loss, probs, targets), probs

    def metrics(self, outputs, targets) -> dict:
        predicted = (outputs > 0.5).astype(jnp.float32)
        axes = tuple(range(outputs.ndim - 1))
        inter = jnp.sum(predicted * targets, axis=axes)
        total = jnp.sum(predicted, axis=axes) + jnp.sum(targets, axis=axes)
        dice = jnp.where(total > 0, 2 * inter / jnp.maximum(total, 1), 1.0)
        return {f"dice_{k + 1}": dice[k] for k in range(self.n_classes)}

    @staticmethod
    def picture(inputs, targets, outputs, title="", key=None):
        from genesis_jax.metrics import labelled_grid
        return labelled_grid({"image": inputs, "prediction (class 1)": outputs[..., 0],
                              "label (class 1)": targets[..., 0]}, title=title)

    def segment(self, model, volume, mesh, batch_size: int, overlap: float = 0.5, blend: str = "gaussian"):
        """int class map (0 background, 1..K) of a [0, 1] volume, by sliding-window inference
        with patches of data.patch_shape split over the mesh; a voxel's class is the most
        probable one where that probability exceeds 0.5. Compiled once per task."""
        import jax
        import numpy as np
        from flax import nnx

        from genesis_jax import sharding
        from genesis_jax.data.batches import process_slice
        from genesis_jax.sliding import sliding_window
        model.eval()
        graphdef, state = nnx.split(model)
        if self._apply is None:
            self._apply = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x),
                                  in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                                  out_shardings=sharding.replicated(mesh))
        rows = process_slice(batch_size, jax.process_index(), jax.process_count())
        probs = sliding_window(lambda b: self._apply(state, b), volume, self.cfg.data.patch_shape, overlap=overlap,
                               blend=blend, batch_size=batch_size, put=lambda b: sharding.global_batch(b[rows], mesh))
        return np.where(probs.max(-1) > 0.5, probs.argmax(-1) + 1, 0)

    def volume_metrics(self, model, mesh, batch_size: int) -> dict:
        """Dice per class on the whole validation volumes (segment: overlap 0.5, Gaussian
        blending), means over volumes."""
        import numpy as np

        from genesis_jax.scores import dice_per_class
        dices = [dice_per_class(self.segment(model, image, mesh, batch_size), classes, self.n_classes)
                 for image, classes in self.val_volumes]
        return {f"volume_dice_{k + 1}": float(np.mean([d[k] for d in dices])) for k in range(self.n_classes)}
