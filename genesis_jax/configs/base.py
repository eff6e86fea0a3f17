"""Fields shared by every config: the paper's recipe (GUIDE.md section 3) as defaults."""

import dataclasses

import ml_collections

from genesis_jax.deform import DeformConfig


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 6                 # global batch, split over all devices of all processes
    c.total_steps = 100_000
    c.steps_per_epoch = 0            # 0: training cubes // batch_size
    c.eval_every = 0                 # 0: once per epoch
    c.checkpoint_every = 0           # 0: once per epoch
    c.keep_checkpoints = 3           # latest N kept, plus the best by validation loss
    c.log_every = 10
    c.images = 4                     # validation examples drawn in the PNG grids
    c.export_pytorch = True          # also write the best weights as a PyTorch state_dict
    c.num_devices = 0                # 0: all devices; N: the first N (tests, debugging)

    c.model = ml_collections.ConfigDict(dict(width=32, bn_mode="batch", dtype="float32"))
    c.deform = ml_collections.ConfigDict(dataclasses.asdict(DeformConfig()))
    c.optimizer = ml_collections.ConfigDict(dict(learning_rate=1.0, momentum=0.9))
    c.schedule = ml_collections.ConfigDict(dict(kind="step", step_epochs=40, gamma=0.5, plateau_epochs=10))
    c.early_stopping_patience = 50   # epochs without a better validation loss

    c.data = ml_collections.ConfigDict(dict(
        source="sample",             # "sample" (embedded chest CT crop), "store", or "volumes"
        store="",                    # cube store path (source="store")
        volumes="",                  # comma-separated files/directories (source="volumes")
        val_fraction=0.1,            # store: share of cubes held out for validation
        val_cubes=32,                # sample/volumes: frozen validation cubes
        cube_shape=(64, 64, 32),
        filter="lung",               # sample/volumes: cube filter of on-the-fly sampling
        modality="ct",
    ))
    return c
