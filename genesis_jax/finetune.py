"""python -m genesis_jax.finetune [--config=segmentation|classification|PATH] [--workdir=DIR] [--config.FIELD=VALUE ...]
python -m genesis_jax.finetune --config=segmentation --dry_run [--topology=v5e:2x2] [--config.mesh.space=K ...]

Fine-tunes on a labelled target task with the same loop, flags and run directory as
`python -m genesis_jax.train` (sharding, Orbax checkpoints, exact resume, SIGTERM,
TensorBoard, progress bar): the config's `task` picks what is trained. Segmentation
(configs/segmentation.py): `--config.init=RUN_DIR|MODEL.pt|scratch` gives the U-Net
but its last layer (genesis_jax/transfer.py), `--config.data.train_images=...` and the
other data fields give the labelled volumes; classification (configs/classification.py):
the TargetNet head on the pre-trained encoder, labelled cubes listed in CSV files
(`--config.data.train_csv=...`). `--config.mesh.space=K` splits each segmentation patch's
X axis over K devices (patches bigger than one device); --dry_run compiles the
segmentation step without data, as `train --dry_run` does. README: Fine-tuning.
"""

import sys

from genesis_jax import train


def main(argv=None) -> int:
    return train.main(argv, default_config="segmentation", program="genesis_jax.finetune", doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
