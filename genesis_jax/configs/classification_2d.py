"""2D classification fine-tuning (python -m genesis_jax.finetune --config=classification_2d).

    python -m genesis_jax.finetune --config=classification_2d --config.init=runs/genesis_2d \\
        --config.data.train_csv=train.csv --config.data.val_csv=val.csv

Each CSV lists image,label rows (a 2D image, read whole, windowed by data.modality, xray:
its own 0.5-99.5 percentiles, and resized to data.cube_shape, 128x128) or cube,label rows
(an image of the 2D store data.store). The head is the official TargetNet's on the 2D
U-Net's encoder (global average pooling, Dense 1024, ReLU, Dense); the recipe is
classification's (configs/base.py).
"""

from genesis_jax.configs.base import classification_2d_base


def get_config():
    return classification_2d_base()
