"""Data-parallel pre-training on many devices (a GPU node, several nodes, a TPU pod slice):
the chest CT recipe with a global batch that scales with the device count.

    python -m genesis_jax.train --config=multi_device --config.data.store=/data/cubes.zarr \\
        --config.batch_size=256 --workdir=runs/pod
    # several processes: add --distributed (calls jax.distributed.initialize in each)

The learning rate is the paper's; with much larger batches consider lowering it.
"""

from genesis_jax.configs.genesis_chest_ct import get_config as chest_config


def get_config():
    c = chest_config()
    c.batch_size = 256
    c.log_every = 20
    c.deform.batch_mode = "vmap"
    return c
