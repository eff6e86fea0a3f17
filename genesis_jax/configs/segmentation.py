"""Segmentation fine-tuning (python -m genesis_jax.finetune --config=segmentation).

    python -m genesis_jax.finetune --config=segmentation --config.init=runs/chest \\
        --config.data.train_images=ct1.nii.gz,ct2.nii.gz --config.data.train_labels=seg1.nii.gz,seg2.nii.gz \\
        --config.data.val_images=ct3.nii.gz --config.data.val_labels=seg3.nii.gz --config.data.label_values=1

Defaults (configs/base.py, segmentation_base): the paper's target-task recipe, Adam
1e-3 with the plateau schedule and early stopping; the full-width U-Net on 64x64x32
patches; Dice + BCE on the sigmoid outputs.
"""

from genesis_jax.configs.base import segmentation_base


def get_config():
    return segmentation_base()
