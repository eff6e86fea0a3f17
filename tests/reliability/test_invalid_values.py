"""Every invalid value a user may type is refused before any work, naming the field.

train and finetune: validate_config (what the CLI runs before anything else) raises a
UserError whose one line names the field; the CLI turns it into exit 2 with nothing
created. prepare: argparse's one line naming the flag, exit 2, no store.
"""

import subprocess
import sys

import pytest

from genesis_jax.configs import classification, demo, segmentation
from genesis_jax.data import sample_path
from genesis_jax.errors import UserError
from genesis_jax.trainer import validate_config

SAMPLE = str(sample_path())


def configured(get_config, overrides: dict):
    cfg = get_config()
    for field, value in overrides.items():
        *parents, last = field.split(".")
        node = cfg
        for parent in parents:
            node = node[parent]
        node[last] = value
    return cfg


def refusal(get_config, overrides: dict) -> str:
    """The one line validate_config refuses the configured values with."""
    with pytest.raises(UserError) as refused:
        validate_config(configured(get_config, overrides))
    message = str(refused.value)
    assert "\n" not in message, message
    return message


TRAIN = [  # (overrides, words the error must contain)
    ({"batch_size": -8}, "batch_size must be >= 1, got -8"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"batch_size": 12}, "batch_size 12 does not split over 8 devices"),
    ({"num_devices": 2, "batch_size": 3}, "batch_size 3 does not split over 2 devices"),
    ({"num_devices": 16}, "num_devices must be in [0, 8]"),
    ({"num_devices": -1}, "num_devices must be in [0, 8]"),
    ({"total_steps": 0}, "total_steps must be >= 1"),
    ({"log_every": -1}, "log_every must be >= 1"),
    ({"eval_every": -5}, "eval_every must be >= 0"),
    ({"checkpoint_every": -1}, "checkpoint_every must be >= 0"),
    ({"keep_checkpoints": 0}, "keep_checkpoints must be >= 1"),
    ({"early_stopping_patience": 0}, "early_stopping_patience must be > 0"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"images": -1}, "images must be >= 0"),
    ({"log_seconds": -1.0}, "log_seconds must be >= 0"),
    ({"model.dtype": "float8"}, "model.dtype must be one of float32, bfloat16, got 'float8'"),
    ({"model.dtype": "fp16"}, "model.dtype must be one of"),
    ({"model.width": 0}, "model.width must be >= 1"),
    ({"optimizer.name": "lamb"}, "optimizer.name must be one of sgd, adam, adamw, got 'lamb'"),
    ({"optimizer.learning_rate": -0.1}, "optimizer.learning_rate must be >= 0"),
    ({"optimizer.momentum": 1.5}, "optimizer.momentum must be in [0, 1)"),
    ({"optimizer.weight_decay": -1.0}, "optimizer.weight_decay must be >= 0"),
    ({"optimizer.b2": 1.0}, "optimizer.b2 must be in [0, 1)"),
    ({"schedule.kind": "linear"}, "schedule.kind must be one of"),
    ({"data.source": "folder"}, "data.source must be 'sample', 'store' or 'volumes'"),
    ({"data.source": "store"}, "data.store is empty"),
    ({"data.source": "store", "data.store": "/no/such/cubes.zarr"},
     "data.store: /no/such/cubes.zarr: not a cube store (no zarr.json)"),
    ({"data.source": "volumes", "data.volumes": f"{SAMPLE},/no/such/ct.nii.gz"},
     "data.volumes: /no/such/ct.nii.gz: no such file or directory"),
    ({"data.cube_shape": (20, 16, 16)}, "data.cube_shape (20, 16, 16): every dim must be a multiple of 8"),
    ({"data.cube_shape": (0, 16, 16)}, "data.cube_shape (0, 16, 16): every dim must be a multiple of 8"),
    ({"data.cube_shape": (16, 16)}, "but data.cube_shape (16, 16) has 2 sizes: 2D pre-training runs --config=genesis_2d"),
    ({"data.cube_shape": (16, 16, 16, 16)}, "data.cube_shape (16, 16, 16, 16): need two sizes (H, W) or three sizes"),
    ({"data.val_cubes": 0}, "data.val_cubes must be >= 1"),
    ({"data.cubes_per_volume": 0}, "data.cubes_per_volume must be >= 1"),
    ({"data.modality": "pet"}, "data.modality must be 'ct', 'mr' or 'xray'"),
    ({"deform.flip_rate": 1.5}, "flip_rate must be a probability in [0, 1]"),
    ({"deform.local_blocks": -1}, "local_blocks must be >= 0"),
    ({"deform.batch_mode": "fast"}, "batch_mode must be one of"),
]


@pytest.mark.parametrize("overrides,words", TRAIN, ids=[",".join(o) + f"={list(o.values())[-1]}" for o, _ in TRAIN])
def test_train_refuses_naming_the_field(overrides, words):
    message = refusal(demo.get_config, overrides)
    assert words in message, message


def test_the_defaults_pass(tmp_path):
    validate_config(demo.get_config())
    validate_config(configured(segmentation.get_config, segmentation_data()))
    validate_config(configured(classification.get_config, classification_data(tmp_path)))


def segmentation_data():  # 4 devices: the fine-tuning configs' batch of 4 splits over them
    return {"num_devices": 4, **{f"data.{split}_{kind}": SAMPLE for split in ("train", "val")
                                 for kind in ("images", "labels")}}


def classification_data(tmp_path):
    (tmp_path / "cubes.csv").write_text("cube,label\n0,1\n")
    return {"num_devices": 4, "data.train_csv": str(tmp_path / "cubes.csv"), "data.val_csv": str(tmp_path / "cubes.csv")}


SEGMENTATION = [
    ({"data.train_images": ""}, "data.train_images is empty"),
    ({"data.train_labels": "/no/such/labels.nii.gz"}, "data.train_labels: /no/such/labels.nii.gz: no such file"),
    ({"data.val_images": f"{SAMPLE},{SAMPLE}"}, "data.val_images has 2 volumes, data.val_labels 1"),
    ({"data.patch_shape": (60, 64, 32)}, "data.patch_shape (60, 64, 32): every dim must be a multiple of 8"),
    ({"data.foreground_ratio": 2.0}, "data.foreground_ratio must be in [0, 1]"),
    ({"data.val_patches": 0}, "data.val_patches must be >= 1"),
    ({"data.label_values": "x"}, "data.label_values must be numbers"),
    ({"loss": "l2"}, "loss must be one of dice, bce, dice_bce"),
    ({"init": "/no/such/run"}, "init: /no/such/run: no such file or directory"),
    ({"optimizer.freeze_pretrained_steps": 5}, "init is 'scratch'"),
    ({"batch_size": 6}, "batch_size 6 does not split over 4 devices"),
    ({"model.dtype": "half"}, "model.dtype must be one of"),
]


@pytest.mark.parametrize("overrides,words", SEGMENTATION, ids=[",".join(o) for o, _ in SEGMENTATION])
def test_segmentation_refuses_naming_the_field(overrides, words):
    message = refusal(segmentation.get_config, {**segmentation_data(), **overrides})
    assert words in message, message


CLASSIFICATION = [
    ({"data.train_csv": ""}, "data.train_csv is empty"),
    ({"data.val_csv": "/no/such/val.csv"}, "data.val_csv: /no/such/val.csv: no such file or directory"),
    ({"data.classes": 1}, "data.classes must be >= 2"),
    ({"data.cube_shape": (60, 64, 32)}, "data.cube_shape (60, 64, 32): every dim must be a multiple of 8"),
    ({"init": "/no/such/model.pt"}, "init: /no/such/model.pt: no such file or directory"),
    ({"export_pytorch": True}, "export_pytorch writes a U-Net"),
]


@pytest.mark.parametrize("overrides,words", CLASSIFICATION, ids=[",".join(o) for o, _ in CLASSIFICATION])
def test_classification_refuses_naming_the_field(tmp_path, overrides, words):
    message = refusal(classification.get_config, {**classification_data(tmp_path), **overrides})
    assert words in message, message


@pytest.mark.parametrize("program,flags,words", [
    ("genesis_jax.train", ["--config.batch_size=12"], "batch_size 12 does not split over 8 devices"),
    ("genesis_jax.train", ["--config.data.source=store", "--config.data.store=/no/such/cubes.zarr"],
     "data.store: /no/such/cubes.zarr: not a cube store"),
    ("genesis_jax.finetune", ["--config.num_devices=4", "--config.data.train_images=/no/such/ct.nii.gz",
                              "--config.data.train_labels=x",
                              "--config.data.val_images=y", "--config.data.val_labels=z"],
     "data.train_images: /no/such/ct.nii.gz: no such file or directory"),
])
def test_the_cli_refuses_in_one_line_before_creating_anything(tmp_path, program, flags, words):
    proc = subprocess.run([sys.executable, "-m", program, f"--workdir={tmp_path / 'run'}", *flags],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


PREPARE = [
    (["--cube-shape", "20", "16", "16"], "--cube-shape 20 16 16: each size must be a multiple of 8"),
    (["--cube-shape", "16", "16"], "argument --cube-shape: expected 3 arguments"),
    (["--cubes-per-volume", "-2"], "--cubes-per-volume and --tries-per-cube must be >= 1"),
    (["--tries-per-cube", "0"], "--cubes-per-volume and --tries-per-cube must be >= 1"),
    (["--filter", "lungs"], "argument --filter: invalid choice: 'lungs'"),
    (["--modality", "pet"], "argument --modality: invalid choice: 'pet'"),
    (["--spacing", "0"], "--spacing 0.0: each spacing must be a positive number of mm"),
    (["--spacing", "-1", "1", "1"], "--spacing -1.0 1.0 1.0: each spacing must be a positive number of mm"),
    (["--spacing", "nan"], "--spacing nan: each spacing must be a positive number of mm"),
    (["--spacing", "1", "1"], "--spacing takes one value or three"),
    (["--window", "1000", "-1000"], "--window 1000 -1000: need LOW < HIGH"),
    (["--border", "-5", "0", "0"], "--border -5 0 0: margins must be >= 0"),
    (["--seed", "-1"], "--seed -1: must be >= 0"),
    (["--cubes-per-volume", "many"], "argument --cubes-per-volume: invalid int value: 'many'"),
]


@pytest.mark.parametrize("flags,words", PREPARE, ids=[" ".join(f) for f, _ in PREPARE])
def test_prepare_refuses_naming_the_flag(tmp_path, capsys, flags, words):
    from genesis_jax.prepare import run
    out = tmp_path / "cubes.zarr"
    with pytest.raises(SystemExit) as exited:
        run(["@sample", "--out", str(out), *flags])
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("python -m genesis_jax.prepare: error: ") and words in last, last
    assert list(tmp_path.iterdir()) == []
