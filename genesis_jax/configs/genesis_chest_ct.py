"""The paper's recipe on a cube store: full-width U-Net (19,073,665 parameters), batch 6,
SGD lr 1.0 momentum 0.9, StepLR every 40 epochs x0.5, early stopping after 50 epochs.

    python -m genesis_jax.prepare /data/LUNA16 --out /data/cubes.zarr
    python -m genesis_jax.train --config=genesis_chest_ct --config.data.store=/data/cubes.zarr --workdir=runs/chest
"""

from genesis_jax.configs.base import base_config


def get_config():
    c = base_config()
    c.data.source = "store"
    c.data.store = ""   # required: --config.data.store=PATH
    c.model.dtype = "bfloat16"
    c.log_every = 50
    return c
