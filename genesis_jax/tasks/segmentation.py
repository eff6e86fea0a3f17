"""Fine-tuning for segmentation: image patches in, one sigmoid channel per class out."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from genesis_jax.configs.base import segmentation_base
from genesis_jax.data.cases import Case, is_manifest, parse_modalities, read_manifest
from genesis_jax.data.volumes import split_paths
from genesis_jax.errors import UserError
from genesis_jax.models import UNet3D
from genesis_jax.tasks.base import FineTuneTask, build_unet, check_model, check_modality, check_multiple_of_8, \
    check_paths_exist, check_space_split, follow_channels, mesh_space, min_side, model_identity, spatial_conv


def parse_label_values(text) -> list[tuple[float, ...]]:
    """Class k's raw label values: '5' or '5,6' (one value per class) -> [(5.0,), (6.0,)];
    '1+2+4,1+4,4' (groups, BraTS's whole tumour, tumour core, enhancing) -> [(1.0, 2.0,
    4.0), (1.0, 4.0), (4.0,)]. Groups may overlap; UserError naming the field."""
    try:
        groups = [tuple(float(v) for v in part.split("+")) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"data.label_values must be numbers separated by commas, values of one class joined by "
                        f"'+' (e.g. 1+2+4,1+4,4), got {text!r}") from None
    if not groups or len(set(groups)) != len(groups) or any(len(set(g)) != len(g) for g in groups):
        raise UserError(f"data.label_values must be distinct and non-empty, got {text!r}")
    return groups


def overlapping(groups) -> bool:
    """Whether some raw value belongs to two classes."""
    values = [v for group in groups for v in group]
    return len(values) != len(set(values))


class SegmentationTask(FineTuneTask):
    """Fine-tuning for segmentation: image patches in, one sigmoid channel per class out,
    Dice/BCE against the labels; the U-Net but its last layer initialised from `init`.

    A batch row is (X, Y, Z, C + 1): the image patch's C channels and its label value
    index (data/labelled.py); validation is a frozen set of patches drawn once from the
    validation volumes, scored by the loss and a hard Dice per class (outputs > 0.5).
    Images: comma-separated volumes with their label volumes, or a CSV manifest (one
    column per channel and a `label` column; data/cases.py).

    2D (data.patch_shape of two sizes, --config=segmentation_2d): the same patches one
    slice deep across data.slice_axis, (H, W, 1), served as images (H, W, C + 1) to a 2D
    model; volumes are predicted slice by slice (the sliding window of (H, W, 1)) into a
    label map on their own grid. 2D images with masks (PNG, TIFF, DICOM) are volumes one
    slice deep."""

    name, picture_name = "segmentation", "segmentation"
    default_config = staticmethod(segmentation_base)

    def __init__(self, cfg, platform: str | None = None):
        super().__init__(cfg, platform)
        self.val_volumes, self._apply = [], None

    @property
    def groups(self) -> list[tuple[float, ...]]:
        return parse_label_values(self.cfg.data.label_values)

    @property
    def n_classes(self) -> int:
        return len(self.groups)

    @property
    def dims(self) -> int:
        return len(self.cfg.data.patch_shape)

    @property
    def window(self) -> tuple[int, ...]:
        """The patch as the 3D samplers cut it: patch_shape, or (H, W, 1) in 2D."""
        from genesis_jax.data.batches import sampler_crop
        return sampler_crop(self.cfg.data.patch_shape)

    def oriented(self, array):
        """An (X, Y, Z, ...) array with the 2D slice axis third (3D: as it is)."""
        from genesis_jax.data.images import slices_last
        return array if self.dims == 3 else slices_last(array, self.cfg.data.slice_axis)

    def check_config(self) -> None:
        from genesis_jax.losses import SEGMENTATION_LOSSES
        check_model(self.cfg.model, self.dims, self.cfg.export_pytorch)
        check_modality(self.cfg.data)
        self.check_init()
        if self.cfg.loss not in SEGMENTATION_LOSSES:
            raise UserError(f"loss must be one of {', '.join(SEGMENTATION_LOSSES)}, got {self.cfg.loss!r}")
        parse_label_values(self.cfg.data.label_values)
        check_multiple_of_8("data.patch_shape", self.cfg.data.patch_shape, dims=(2, 3), multiple=min_side(self.cfg.model))
        self.check_space(mesh_space(self.cfg))
        if not 0.0 <= self.cfg.data.foreground_ratio <= 1.0:
            raise UserError(f"data.foreground_ratio must be in [0, 1], got {self.cfg.data.foreground_ratio}")

    def check_space(self, space: int, space_name: str = "mesh.space=") -> None:
        """UserError unless the patches split over `space` devices (3D patches whose
        X / space stays a multiple of 8; native convolutions); space_name: how the user
        set it (mesh.space=, or predict's --mesh-space )."""
        if space > 1 and self.dims != 3:
            raise UserError(f"{space_name}{space} splits 3D patches; 2D patches (data.patch_shape "
                            f"{tuple(self.cfg.data.patch_shape)}) fit one device: leave it at 1")
        check_space_split("data.patch_shape", self.cfg.data.patch_shape, space, space_name=space_name)
        spatial_conv(self.cfg.model.conv, space)

    def check_data(self, require_data: bool = True) -> None:
        data = self.cfg.data
        if require_data and not data.train_images:
            raise UserError("data.train_images is empty: pass --config.data.train_images=A.nii.gz,B.nii.gz (with "
                            "data.train_labels) or a CSV manifest (one column per channel and a label column)")
        channels = None
        for split in ("train", "val"):
            if data[f"{split}_images"] and (require_data or not is_manifest(data[f"{split}_images"])):
                found = self.cases(split, check_files=require_data)[0]
                if channels is not None and found != channels:
                    raise UserError(f"data.val_images has channels {','.join(found)}, data.train_images "
                                    f"{','.join(channels)}: validation needs the training channels")
                channels = found
        if channels and require_data:
            follow_channels(self.cfg.model, channels, f"data.train_images {data.train_images}")
            parse_modalities(data.modality, channels)
        for name in ("patches_per_epoch", "val_patches"):
            if data[name] < 1:
                raise UserError(f"data.{name} must be >= 1, got {data[name]}")
        if not 0.0 < data.val_fraction < 1.0:
            raise UserError(f"data.val_fraction must be in (0, 1), got {data.val_fraction}")

    def cases(self, split: str, check_files: bool = True) -> tuple[tuple[str, ...], list[Case]]:
        """(channel names, labelled cases) of data.<split>_images: a CSV manifest with a label
        column, or comma-separated volumes and data.<split>_labels, one channel ("image")."""
        images, labels = self.cfg.data[f"{split}_images"], self.cfg.data[f"{split}_labels"]
        if is_manifest(images):
            if labels:
                raise UserError(f"data.{split}_images is a manifest, whose label column gives the labels: leave "
                                f"data.{split}_labels empty")
            check_paths_exist(f"data.{split}_images", [images])
            channels, cases = read_manifest(images, with_label=True)
        else:
            if len(split_paths(images)) != len(split_paths(labels)):
                raise UserError(f"data.{split}_images has {len(split_paths(images))} volumes, data.{split}_labels "
                                f"{len(split_paths(labels))}: one label volume per image")
            channels = ("image",)
            cases = [Case(i, channels, (Path(i),), Path(l)) for i, l in zip(split_paths(images), split_paths(labels))]
        if check_files:
            for case in cases:
                check_paths_exist(f"data.{split}_images", case.paths)
                check_paths_exist(f"data.{split}_labels" if labels else f"data.{split}_images", [case.label])
        return channels, cases

    def identity(self) -> dict:
        return {"model": model_identity(self.cfg.model), "data": dict(self.cfg.data), "loss": self.cfg.loss,
                "init": self.cfg.init}

    def build_model(self, rngs) -> UNet3D:
        return build_unet(self.cfg.model, rngs, n_class=self.n_classes, platform=self.platform, dims=self.dims,
                          space=mesh_space(self.cfg))

    def load_data(self):
        from genesis_jax.data.batches import InMemoryCubes, flat
        from genesis_jax.data.labelled import PatchSampler, label_value_list, read_labelled
        from genesis_jax.data.sources import RunData, files_sha256
        data, values = self.cfg.data, label_value_list(self.groups)
        channels, train_cases = self.cases("train")
        cases = {"train": train_cases, "val": self.cases("val")[1] if data.val_images else []}
        modalities = parse_modalities(data.modality, channels)
        pairs = {split: [tuple(self.oriented(a) for a in read_labelled(case, values, modalities))
                         for case in cases[split]] for split in cases}
        if not pairs["val"]:
            pairs["train"], pairs["val"] = self.held_out(pairs["train"], cases["train"])
        train = flat(PatchSampler(pairs["train"], self.window, data.foreground_ratio, self.cfg.seed), self.dims)
        frozen = flat(PatchSampler(pairs["val"], self.window, data.foreground_ratio, self.cfg.seed + 1), self.dims)
        validation = InMemoryCubes(frozen.batch(0, int(data.val_patches)))
        self.val_volumes, self.channels = pairs["val"], list(channels)
        paths = [p for split in cases.values() for case in split for p in (*case.paths, case.label)]
        paths += [data[f"{s}_images"] for s in ("train", "val") if is_manifest(data[f"{s}_images"])]
        described = (f"{len(pairs['train'])} training and {len(pairs['val'])} validation volume(s) of "
                     f"{len(channels)} channel(s) ({', '.join(channels)}), {self.n_classes} class(es) from label "
                     f"values {data.label_values}{' (overlapping groups)' if overlapping(self.groups) else ''}, "
                     f"patches {tuple(data.patch_shape)} ({data.foreground_ratio:.0%} centred on foreground)")
        return RunData(train, validation, int(data.patches_per_epoch), described, files_sha256(paths), list(channels))

    def held_out(self, pairs, cases) -> tuple[list, list]:
        """(training pairs, validation pairs) when no validation volumes are given: a z slab
        of each training volume (data/labelled.py hold_out_slab; 2D: slices across the
        slice axis), said in one line."""
        import jax

        from genesis_jax.data.labelled import hold_out_slab
        from genesis_jax.data.volumes import VolumeError
        data = self.cfg.data
        try:
            split = [hold_out_slab(image, classes, data.val_fraction, self.window[2], case.name)
                     for (image, classes), case in zip(pairs, cases)]
        except VolumeError as e:
            raise UserError(f"no data.val_images given, and {e}") from None
        if jax.process_index() == 0:
            axis = "z" if self.dims == 3 else data.slice_axis
            slabs = ", ".join(f"{Path(case.name).name} {axis} {a}-{b - 1} of {image.shape[2]}"
                              for (_, _, (a, b)), case, (image, _) in zip(split, cases, pairs))
            print(f"validation: no data.val_images given: holding out {data.val_fraction:.0%} of each training "
                  f"volume's z slices, the end with more labelled voxels ({slabs}); no validation voxel is trained "
                  f"on", flush=True)
        return [train for train, _, _ in split], [val for _, val, _ in split]

    def prepare(self, key, batch, mesh, first_index=0):
        """(images (n, X, Y, Z, C), targets (n, X, Y, Z, K): 1 where the voxel's value is in class k)."""
        from genesis_jax.data.labelled import class_membership
        del key, mesh, first_index  # no augmentation: the patch is the example
        membership = jnp.asarray(class_membership(self.groups))
        return batch[..., :-1], membership[jnp.round(batch[..., -1]).astype(jnp.int32)]

    def loss(self, model, images, targets):
        """The configured loss on the sigmoid outputs, one per class: also right for
        overlapping classes (each class is its own binary problem)."""
        from genesis_jax.losses import segmentation_loss
        probs = model(images)
        return segmentation_loss(self.cfg.loss, probs, targets), probs

    def metrics(self, outputs, targets) -> dict:
        predicted = (outputs > 0.5).astype(jnp.float32)
        axes = tuple(range(outputs.ndim - 1))
        inter = jnp.sum(predicted * targets, axis=axes)
        total = jnp.sum(predicted, axis=axes) + jnp.sum(targets, axis=axes)
        dice = jnp.where(total > 0, 2 * inter / jnp.maximum(total, 1), 1.0)
        return {f"dice_{k + 1}": dice[k] for k in range(self.n_classes)}

    def picture(self, inputs, targets, outputs, title="", key=None):
        from genesis_jax.metrics import labelled_grid
        return labelled_grid({"image": inputs, "prediction (class 1)": outputs[..., 0],
                              "label (class 1)": targets[..., 0]}, title=title, channels=self.channels, dims=self.dims)

    def probabilities(self, model, volume, mesh, batch_size: int, overlap: float = 0.5, blend: str = "gaussian"):
        """float32 (X, Y, Z, K): each class's probability over a [0, 1] volume (X, Y, Z, C),
        by sliding-window inference with patches of data.patch_shape split over the mesh;
        2D: slice by slice across data.slice_axis, on the volume's own grid. Compiled once
        per task."""
        import numpy as np
        if self.dims == 3:
            return self.oriented_probabilities(model, volume, mesh, batch_size, overlap, blend)
        probs = self.oriented_probabilities(model, self.oriented(volume), mesh, batch_size, overlap, blend)
        return np.moveaxis(probs, 2, "xyz".index(self.cfg.data.slice_axis))

    def oriented_probabilities(self, model, volume, mesh, batch_size: int, overlap: float = 0.5,
                               blend: str = "gaussian"):
        """probabilities of a volume already oriented (2D: its slice axis third)."""
        import jax
        from flax import nnx

        from genesis_jax import sharding
        from genesis_jax.data.batches import process_slice
        from genesis_jax.sliding import sliding_window
        model.eval()
        graphdef, state = nnx.split(model)
        def apply(state, x):  # 2D: windows (n, H, W, 1, C) are images (n, H, W, C)
            model = nnx.merge(graphdef, state)
            return model(x) if self.dims == 3 else model(x[:, :, :, 0])[:, :, :, None]

        if self._apply is None:
            self._apply = jax.jit(apply,
                                  in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                                  out_shardings=sharding.replicated(mesh))
        rows = process_slice(batch_size, jax.process_index(), jax.process_count())
        return sliding_window(lambda b: self._apply(state, b), volume, self.window, overlap=overlap,
                              blend=blend, batch_size=batch_size, put=lambda b: sharding.global_batch(b[rows], mesh))

    def class_masks(self, probs):
        """bool (X, Y, Z, K): the voxels predicted in each class. Exclusive classes: the most
        probable class where it exceeds 0.5; overlapping groups: every class above 0.5."""
        import numpy as np
        if overlapping(self.groups):
            return probs > 0.5
        winner = np.where(probs.max(-1) > 0.5, probs.argmax(-1), -1)
        return winner[..., None] == np.arange(self.n_classes)

    def class_map(self, masks):
        """int class map (0 background, 1..K) of class_masks: a voxel in several overlapping
        classes gets the last of them (list groups from largest to smallest, as BraTS's
        whole tumour, core, enhancing, and the map nests them)."""
        import numpy as np
        last = masks.shape[-1] - np.argmax(masks[..., ::-1], axis=-1)
        return np.where(masks.any(-1), last, 0)

    def truth_masks(self, value_index_map):
        """bool (X, Y, Z, K) of a label value index map (data/labelled.py map_labels)."""
        from genesis_jax.data.labelled import class_membership
        return class_membership(self.groups)[value_index_map] > 0

    def volume_metrics(self, model, mesh, batch_size: int) -> dict:
        """Dice per class on the whole validation volumes (overlap 0.5, Gaussian blending),
        means over volumes."""
        import numpy as np

        from genesis_jax.scores import dice_of_masks
        dices = [dice_of_masks(self.class_masks(self.oriented_probabilities(model, image, mesh, batch_size)),
                               self.truth_masks(classes)) for image, classes in self.val_volumes]
        return {f"volume_dice_{k + 1}": float(np.mean([d[k] for d in dices])) for k in range(self.n_classes)}
