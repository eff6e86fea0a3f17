"""Demo: a small U-Net learns to restore cubes of the embedded chest CT on 2 CPU cores.

    python -m genesis_jax.train                 # the same as --config=demo
    python -m genesis_jax.train --config=demo --config.total_steps=20

Width 4 and 32x32x16 cubes keep XLA:CPU's 3D convolutions affordable. Two things differ
from the paper's recipe (genesis_chest_ct keeps it), each measured (docs/pretraining.md,
"The demo on a 2-core CPU"):
- no Bezier intensity map (deform.nonlinear_rate 0, the paper's 0.9): half its curves
  invert the intensities, and within the demo's few minutes a width-4 network that sees
  them learns each cube's blurred mean and nothing else (0.9: 1.00x the per-cube-mean
  baseline on the pipeline; 0: the shuffle, in- and out-painting restored at 0.18x,
  0.18x and 0.44x);
- Adam 1e-3 at a constant rate for 300 steps instead of SGD lr 1.0 with StepLR, which
  settles on that mean within 200 steps (the official code's users saw the same).
Add --config.deform.nonlinear_rate=0.9 to train with all four deformations.
"""

from genesis_jax.configs.base import base_config


def get_config():
    c = base_config()
    c.batch_size = 8
    c.total_steps = 300
    c.steps_per_epoch = 25
    c.eval_every = 25
    c.checkpoint_every = 50
    c.log_every = 5
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.schedule.kind = "constant"
    c.early_stopping_patience = 50
    c.model.width = 4
    c.data.source = "sample"
    c.data.cube_shape = (32, 32, 16)
    c.data.filter = "foreground"
    c.data.val_cubes = 16
    c.deform.nonlinear_rate = 0.0
    return c
