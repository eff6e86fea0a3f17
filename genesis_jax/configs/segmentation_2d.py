"""2D segmentation fine-tuning (python -m genesis_jax.finetune --config=segmentation_2d).

    python -m genesis_jax.finetune --config=segmentation_2d --config.init=runs/genesis_2d \\
        --config.data.train_images=ct1.nii.gz --config.data.train_labels=seg1.nii.gz --config.data.label_values=1
    python -m genesis_jax.finetune --config=segmentation_2d --config.data.modality=xray \\
        --config.data.train_images=a.png,b.png --config.data.train_labels=a_mask.png,b_mask.png \\
        --config.data.val_images=c.png --config.data.val_labels=c_mask.png

Volumes with label volumes are cut into 128x128 patches one slice deep across
data.slice_axis (z: axial slices), and predicted slice by slice into a 3D label map on
their grid (python -m genesis_jax.predict); 2D images with their masks are volumes one
slice deep (data.modality=xray windows each radiograph by its own percentiles). The rest
is segmentation's recipe (configs/base.py): Adam 1e-3, plateau schedule, early stopping,
Dice + BCE. model.arch=resnet18_unet fine-tunes the ResNet-18 U-Net (width 64).
"""

from genesis_jax.configs.base import segmentation_2d_base


def get_config():
    return segmentation_2d_base()
