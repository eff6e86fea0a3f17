"""Models Genesis 2D pre-training: the U-Net's 2D counterpart restores 128x128 images.

    python -m genesis_jax.prepare --dims 2 /data/xrays --out xrays.zarr                  # radiographs
    python -m genesis_jax.prepare --dims 2 /data/LUNA16 --out slices.zarr --slice-axis z # CT slices
    python -m genesis_jax.train --config=genesis_2d --config.data.source=store --config.data.store=xrays.zarr
    python -m genesis_jax.train --config=genesis_2d --config.model.arch=resnet18_unet --config.model.width=64

The paper's recipe (SGD 1.0, StepLR, batch 6; configs/base.py) on 2D images: every
deformation from the 3D code with its per-side rules (deform.dims=2), the shuffle's
blocks scaled to the image (725 for 128x128: each pixel covered as often as a voxel by
the official 10,000 blocks in 64x64x32). Without a store, slices of the bundled chest CT
(data.source=sample). model.arch=resnet18_unet is smp.Unet("resnet18")'s layout (width
64 is ResNet-18 itself; its PyTorch export loads into smp).
"""

from genesis_jax.configs.base import genesis_2d_base


def get_config():
    return genesis_2d_base()
