"""Demo: a small U-Net learns to restore cubes of the embedded chest CT on 2 CPU cores.

    python -m genesis_jax.train                 # the same as --config=demo
    python -m genesis_jax.train --config=demo --config.total_steps=20

Width 4 and 32x32x16 cubes keep XLA:CPU's 3D convolutions affordable; everything else
(deformations, loss, SGD lr 1.0 momentum 0.9, BatchNorm mode) is the paper's recipe.
"""

from genesis_jax.configs.base import base_config


def get_config():
    c = base_config()
    c.batch_size = 8
    c.total_steps = 200
    c.steps_per_epoch = 25
    c.eval_every = 25
    c.checkpoint_every = 50
    c.log_every = 5
    c.schedule.step_epochs = 4
    c.early_stopping_patience = 50
    c.model.width = 4
    c.data.source = "sample"
    c.data.cube_shape = (32, 32, 16)
    c.data.filter = "foreground"
    c.data.val_cubes = 16
    return c
