"""Classification fine-tuning (python -m genesis_jax.finetune --config=classification).

    python -m genesis_jax.finetune --config=classification --config.init=runs/chest \\
        --config.data.train_csv=train.csv --config.data.val_csv=val.csv

Each CSV lists image,x,y,z,label (a cube of data.cube_shape centred on that voxel) or
cube,label (a cube of data.store) rows. Defaults (configs/base.py, classification_base):
the paper's target-task recipe, Adam 1e-3 with the plateau schedule and early stopping,
the official TargetNet head on the full-width encoder, 64x64x32 cubes, two classes
(one logit, BCE).
"""

from genesis_jax.configs.base import classification_base


def get_config():
    return classification_base()
