"""Fine-tuning for classification: the official TargetNet on labelled cubes."""

from __future__ import annotations

import jax.numpy as jnp

from genesis_jax.configs.base import classification_base
from genesis_jax.errors import UserError
from genesis_jax.tasks.base import FineTuneTask, build_unet, check_model, check_modality, check_multiple_of_8, \
    check_paths_exist, follow_channels, model_identity, refuse_space


class ClassificationTask(FineTuneTask):
    """Fine-tuning for classification: the official TargetNet (GenesisClassifier: the
    U-Net's encoder, global average pooling, Dense 1024, ReLU, Dense) on labelled cubes
    (data/classified.py), the encoder initialised from `init`.

    Two classes: one logit, sigmoid + binary cross-entropy (the paper's target tasks are
    binary: one output is the official head's form). More: one logit per class, softmax +
    cross-entropy (the classes exclude each other). Validation: the loss and accuracy
    (batch means), and ROC AUC over the whole set (one-vs-rest mean for > 2 classes)."""

    name, picture_name, part = "classification", "classification", "encoder"
    default_config = staticmethod(classification_base)

    @property
    def n_outputs(self) -> int:
        return 1 if self.cfg.data.classes == 2 else int(self.cfg.data.classes)

    def check_config(self) -> None:
        shape = self.cfg.data.cube_shape
        refuse_space(self.cfg, "classification")
        check_model(self.cfg.model, len(shape))
        if self.cfg.model.get("arch", "unet") != "unet":
            raise UserError(f"model.arch={self.cfg.model.arch}: classification's head (the official TargetNet) "
                            f"sits on the Genesis U-Net's encoder, model.arch=unet")
        check_modality(self.cfg.data, per_channel=False)
        self.check_init()
        if self.cfg.data.classes < 2:
            raise UserError(f"data.classes must be >= 2, got {self.cfg.data.classes}")
        check_multiple_of_8("data.cube_shape", shape, dims=(2, 3))
        if self.cfg.export_pytorch:
            raise UserError("export_pytorch writes a U-Net; a classification run has none (set it False)")

    def check_data(self, require_data: bool = True) -> None:
        for name in ("train_csv", "val_csv"):
            if require_data and not self.cfg.data[name]:
                raise UserError(f"data.{name} is empty: pass --config.data.{name}=PATH.csv "
                                f"(rows image,x,y,z,label or cube,label; 2D: image,label or cube,label)")
            if require_data:
                check_paths_exist(f"data.{name}", [self.cfg.data[name]])

    def identity(self) -> dict:
        return {"model": model_identity(self.cfg.model), "data": dict(self.cfg.data), "init": self.cfg.init}

    def build_model(self, rngs):
        from genesis_jax.models import GenesisClassifier
        unet = build_unet(self.cfg.model, rngs, platform=self.platform, dims=len(self.cfg.data.cube_shape))
        return GenesisClassifier(unet, n_class=self.n_outputs, rngs=rngs)

    def load_data(self):
        from genesis_jax.data.classified import LabelledCubes, class_counts
        from genesis_jax.data.sources import RunData, files_sha256
        data = self.cfg.data
        split = {name: LabelledCubes(data[f"{name}_csv"], int(data.classes), data.cube_shape, data.store,
                                     data.modality, self.cfg.seed) for name in ("train", "val")}
        if split["train"].channels != split["val"].channels:
            raise UserError(f"data.val_csv's cubes have channels {', '.join(split['val'].channels)}, data.train_csv's "
                            f"{', '.join(split['train'].channels)}")
        follow_channels(self.cfg.model, split["train"].channels, f"data.train_csv {data.train_csv}")
        self.channels = split["train"].channels
        described = (f"{len(split['train'])} training cubes (per class {class_counts(split['train'].labels, data.classes)}"
                     f"), {len(split['val'])} validation cubes (per class "
                     f"{class_counts(split['val'].labels, data.classes)}), cubes {tuple(data.cube_shape)}")
        paths = [data.train_csv, data.val_csv, *{p for s in split.values() for p in s.sources}]
        return RunData(split["train"], split["val"], len(split["train"]), described, files_sha256(paths),
                       list(split["train"].channels))

    def prepare(self, key, batch, mesh, first_index=0):
        del key, mesh, first_index  # no augmentation: the cube is the example
        first_voxel = (slice(None),) + (0,) * (batch.ndim - 2) + (-1,)  # the label, in every voxel of the last channel
        return batch[..., :-1], jnp.round(batch[first_voxel]).astype(jnp.int32)

    def loss(self, model, cubes, labels):
        import optax
        logits = model(cubes)
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
        return labelled_grid({"cube": cubes}, title=title, row_labels=rows, channels=self.channels,
                             dims=len(self.cfg.data.cube_shape))
