"""What a task supplies to the one training loop (trainer.py), and the pre-training task.

A task is an object with:
    name                           recorded in checkpoints
    picture_name                   the validation PNGs' name (images/val_<picture_name>_<step>.png)
    check_config()                 UserError naming the field for a value it cannot use
    check_data(require_data)       the same for the data fields (require_data=False: dry run)
    identity() -> dict             config fields a checkpoint must match to be resumed
    build_model(rngs, initialize=True) -> Module
                                   the model, built in this one place (initialize: pre-trained
                                   weights in, where the task starts from some)
    load_data() -> RunData         training source (.batch) and validation cubes (.rows)
    prepare(key, batch, mesh, first_index=0) -> (inputs, targets)
                                   on device, inside jit; each device only its own rows
    loss(model, inputs, targets) -> (scalar loss, outputs)
    metrics(outputs, targets) -> dict   extra validation metrics (batch means)
    picture(inputs, targets, outputs, title, key) -> uint8 image of the first examples
                                   (title: step and loss; key: the one they were prepared with)
The loop owns everything else: mesh, jitted sharded steps, evaluation, checkpoints,
preemption, logs and progress.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp

from genesis_jax.data.store import check_local_store
from genesis_jax.data.volumes import split_paths
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


def check_model(model_cfg) -> None:
    model_dtype(model_cfg.dtype)
    if model_cfg.width < 1:
        raise UserError(f"model.width must be >= 1, got {model_cfg.width}")


def check_modality(data_cfg) -> None:
    if data_cfg.modality not in ("ct", "mr"):
        raise UserError(f"data.modality must be 'ct' or 'mr', got {data_cfg.modality!r}")


def check_paths_exist(field: str, paths) -> None:
    """UserError naming the field and the first path that is not there (before any work)."""
    for path in paths:
        if not Path(path).exists():
            raise UserError(f"{field}: {path}: no such file or directory")


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


def model_identity(model_cfg) -> dict:
    """The model fields a checkpoint must match; conv is left out (its formulations have
    the same weights and sums)."""
    return {k: v for k, v in model_cfg.items() if k != "conv"}


def check_multiple_of_8(field: str, shape) -> None:
    """UserError naming the field unless the shape is three positive multiples of 8 (the U-Net pools three times)."""
    if len(shape) != 3:
        raise UserError(f"{field} {tuple(shape)}: need three sizes (X, Y, Z)")
    if any(d % 8 or d < 8 for d in shape):
        raise UserError(f"{field} {tuple(shape)}: every dim must be a multiple of 8")


def restoration_mse(restored, target):
    """Mean squared error between a restoration and its target, in float32."""
    return jnp.mean(jnp.square(restored - target.astype(jnp.float32)))


def restoration_loss(model: UNet3D, corrupted, target):
    """(MSE between the sigmoid output and the target, restored cubes); cubes (N, X, Y, Z)."""
    restored = model(corrupted[..., None])[..., 0]
    return restoration_mse(restored, target), restored


class PretrainTask:
    """Models Genesis: corrupt clean cubes on device, restore them, MSE against the originals."""

    name, picture_name = "pretrain", "restoration"

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
        check_model(self.cfg.model)
        check_multiple_of_8("data.cube_shape", self.cfg.data.cube_shape)
        check_modality(self.cfg.data)
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

    def identity(self) -> dict:
        # map and vmap: same arrays; table and compute lookups: the same deformation (the
        # shuffle bit for bit, the Bezier map to the table's interpolation error).
        deform = {k: v for k, v in self.cfg.deform.items() if k not in ("batch_mode", "lookups")}
        data = {k: v for k, v in self.cfg.data.items()}
        return {"model": model_identity(self.cfg.model), "deform": deform, "data": data}

    def build_model(self, rngs, initialize: bool = True) -> UNet3D:
        del initialize  # pre-training starts from random weights
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

    def picture(self, inputs, targets, outputs, title="", key=None):
        """corrupted / restored / original of each example, rows named by the deformations
        its key drew (the picture's examples are the batch's first: first_index 0)."""
        from genesis_jax.deform.pipeline import describe_draws
        from genesis_jax.metrics import labelled_grid
        rows = describe_draws(key, len(inputs), self.deform) if key is not None else None
        return labelled_grid({"corrupted (input)": inputs, "restored (output)": outputs,
                              "original (target)": targets}, title=title, row_labels=rows)


def parse_label_values(text) -> list[float]:
    """'5' or '5,6' (or a number) -> [5.0, 6.0]; UserError naming the field."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"data.label_values must be numbers separated by commas, got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise UserError(f"data.label_values must be distinct and non-empty, got {text!r}")
    return values


class FineTuneTask:
    """What the fine-tuning tasks share: `init` says where the weights of `part`
    (transfer.PARTS) come from; the optimizer scales or freezes those parameters'
    updates (optimizer.pretrained_lr_multiplier, optimizer.freeze_pretrained_steps)."""

    part = "all_but_final"

    def check_init(self) -> None:
        if self.cfg.init != "scratch":
            check_paths_exist("init", [self.cfg.init])
        optimizer = self.cfg.optimizer
        tuned = optimizer.pretrained_lr_multiplier != 1.0 or optimizer.freeze_pretrained_steps > 0
        if self.cfg.init == "scratch" and tuned:
            raise UserError("optimizer.pretrained_lr_multiplier and optimizer.freeze_pretrained_steps act on "
                            "pre-trained weights, and init is 'scratch': pass --config.init=RUN_DIR|MODEL.pt")

    def pretrained_modules(self) -> tuple:
        """The top-level modules whose weights come from init (none from scratch)."""
        from genesis_jax.transfer import PARTS
        return () if self.cfg.init == "scratch" else PARTS[self.part]

    def initialize(self, model) -> None:
        """Copy `part` of the init source's weights into model (nothing from scratch)."""
        if self.cfg.init != "scratch":
            from genesis_jax.transfer import load_source, transfer_weights
            source, described, _ = load_source(self.cfg.init)
            transfer_weights(model, source, self.part, described)


class SegmentationTask(FineTuneTask):
    """Fine-tuning for segmentation: image patches in, one sigmoid channel per class out,
    Dice/BCE against the labels; the U-Net but its last layer initialised from `init`.

    A batch row is (X, Y, Z, 2): the image patch and its class map (data/labelled.py);
    validation is a frozen set of patches drawn once from the validation volumes, scored
    by the loss and a hard Dice per class (outputs > 0.5)."""

    name, picture_name = "segmentation", "segmentation"

    def __init__(self, cfg, platform: str | None = None):
        self.cfg, self.platform = cfg, platform
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
            if require_data and not split_paths(data[images]):
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

    def identity(self) -> dict:
        return {"model": model_identity(self.cfg.model), "data": dict(self.cfg.data), "loss": self.cfg.loss,
                "init": self.cfg.init}

    def build_model(self, rngs, initialize: bool = True) -> UNet3D:
        """initialize=False: random weights (a checkpoint of this run replaces them)."""
        model = build_unet(self.cfg.model, rngs, n_class=self.n_classes, platform=self.platform)
        if initialize:
            self.initialize(model)
        return model

    def load_data(self):
        from genesis_jax.data.batches import InMemoryCubes
        from genesis_jax.data.labelled import PatchSampler, read_pair
        from genesis_jax.data.sources import RunData, _sha256
        data, values = self.cfg.data, parse_label_values(self.cfg.data.label_values)
        pairs = {split: [read_pair(i, l, values, data.modality)
                         for i, l in zip(split_paths(data[f"{split}_images"]), split_paths(data[f"{split}_labels"]))]
                 for split in ("train", "val")}
        train = PatchSampler(pairs["train"], data.patch_shape, data.foreground_ratio, self.cfg.seed)
        frozen = PatchSampler(pairs["val"], data.patch_shape, data.foreground_ratio, self.cfg.seed + 1)
        validation = InMemoryCubes(frozen.batch(0, int(data.val_patches)))
        self.val_volumes = pairs["val"]
        keys = ("train_images", "train_labels", "val_images", "val_labels")
        paths = [p for key in keys for p in split_paths(data[key])]
        described = (f"{len(pairs['train'])} training and {len(pairs['val'])} validation volume(s), "
                     f"{len(values)} class(es) from label values {values}, patches {tuple(data.patch_shape)} "
                     f"({data.foreground_ratio:.0%} centred on foreground)")
        return RunData(train, validation, int(data.patches_per_epoch), described, _sha256(paths))

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


class ClassificationTask(FineTuneTask):
    """Fine-tuning for classification: the official TargetNet (GenesisClassifier: the
    U-Net's encoder, global average pooling, Dense 1024, ReLU, Dense) on labelled cubes
    (data/classified.py), the encoder initialised from `init`.

    Two classes: one logit, sigmoid + binary cross-entropy (the paper's target tasks are
    binary: one output is the official head's form). More: one logit per class, softmax +
    cross-entropy (the classes exclude each other). Validation: the loss and accuracy
    (batch means), and ROC AUC over the whole set (one-vs-rest mean for > 2 classes)."""

    name, picture_name, part = "classification", "classification", "encoder"

    def __init__(self, cfg, platform: str | None = None):
        self.cfg, self.platform = cfg, platform

    @property
    def n_outputs(self) -> int:
        return 1 if self.cfg.data.classes == 2 else int(self.cfg.data.classes)

    def check_config(self) -> None:
        check_model(self.cfg.model)
        check_modality(self.cfg.data)
        self.check_init()
        if self.cfg.data.classes < 2:
            raise UserError(f"data.classes must be >= 2, got {self.cfg.data.classes}")
        check_multiple_of_8("data.cube_shape", self.cfg.data.cube_shape)
        if self.cfg.export_pytorch:
            raise UserError("export_pytorch writes a U-Net; a classification run has none (set it False)")

    def check_data(self, require_data: bool = True) -> None:
        for name in ("train_csv", "val_csv"):
            if require_data and not self.cfg.data[name]:
                raise UserError(f"data.{name} is empty: pass --config.data.{name}=PATH.csv "
                                f"(rows image,x,y,z,label or cube,label)")
            if require_data:
                check_paths_exist(f"data.{name}", [self.cfg.data[name]])

    def identity(self) -> dict:
        return {"model": model_identity(self.cfg.model), "data": dict(self.cfg.data), "init": self.cfg.init}

    def build_model(self, rngs, initialize: bool = True):
        from genesis_jax.models import GenesisClassifier
        unet = build_unet(self.cfg.model, rngs, platform=self.platform)
        model = GenesisClassifier(unet, n_class=self.n_outputs, rngs=rngs)
        if initialize:
            self.initialize(model)
        return model

    def load_data(self):
        from genesis_jax.data.classified import LabelledCubes, class_counts
        from genesis_jax.data.sources import RunData, _sha256
        data = self.cfg.data
        split = {name: LabelledCubes(data[f"{name}_csv"], int(data.classes), data.cube_shape, data.store,
                                     data.modality, self.cfg.seed) for name in ("train", "val")}
        described = (f"{len(split['train'])} training cubes (per class {class_counts(split['train'].labels, data.classes)}"
                     f"), {len(split['val'])} validation cubes (per class "
                     f"{class_counts(split['val'].labels, data.classes)}), cubes {tuple(data.cube_shape)}")
        paths = [data.train_csv, data.val_csv, *{p for s in split.values() for p in s.sources}]
        return RunData(split["train"], split["val"], len(split["train"]), described, _sha256(paths))

    def prepare(self, key, batch, mesh, first_index=0):
        del key, mesh, first_index  # no augmentation: the cube is the example
        return batch[..., 0], jnp.round(batch[:, 0, 0, 0, 1]).astype(jnp.int32)

    def loss(self, model, cubes, labels):
        import optax
        logits = model(cubes[..., None])
        if self.n_outputs == 1:
            return jnp.mean(optax.sigmoid_binary_cross_entropy(logits[:, 0], labels.astype(jnp.float32))), logits
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)), logits

    def predicted_classes(self, logits):
        return (logits[:, 0] > 0).astype(jnp.int32) if self.n_outputs == 1 else jnp.argmax(logits, axis=-1)

    def metrics(self, logits, labels) -> dict:
        return {"accuracy": jnp.mean((self.predicted_classes(logits) == labels).astype(jnp.float32))}

    def set_metrics(self, labels, logits) -> dict:
        """ROC AUC over the whole validation set (absent where a class is missing from it)."""
        import numpy as np

        from genesis_jax.scores import roc_auc
        labels, logits = np.asarray(labels), np.asarray(logits, np.float64)
        if self.n_outputs == 1:
            pairs = [(logits[:, 0], labels == 1)]
        else:
            pairs = [(logits[:, k], labels == k) for k in range(self.n_outputs)]
        if not all(0 < truth.sum() < len(truth) for _, truth in pairs):
            return {}
        return {"auc": float(np.mean([roc_auc(score, truth.astype(int)) for score, truth in pairs]))}

    def picture(self, cubes, labels, logits, title="", key=None):
        import numpy as np

        from genesis_jax.metrics import labelled_grid
        logits = np.asarray(logits)
        if self.n_outputs == 1:
            rows = [f"label {int(t)}, p(1) {1 / (1 + np.exp(-z[0])):.2f}" for t, z in zip(labels, logits)]
        else:
            rows = [f"label {int(t)}, predicted {int(np.argmax(z))}" for t, z in zip(labels, logits)]
        return labelled_grid({"cube": cubes}, title=title, row_labels=rows)


TASKS = {"pretrain": PretrainTask, "segmentation": SegmentationTask, "classification": ClassificationTask}


def task_for(cfg, platform: str | None = None):
    """The task a config names (config.task)."""
    if cfg.get("task", "pretrain") not in TASKS:
        raise UserError(f"task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    return TASKS[cfg.get("task", "pretrain")](cfg, platform)
