"""The Genesis 3D U-Net, its 2D counterpart and the ResNet-18 U-Net of Models Genesis 2D,
the classification head, and PyTorch weight interop."""

from genesis_jax.models.resnet_unet import ResNet18UNet
from genesis_jax.models.unet import BatchNorm, ConvTranspose2x, GenesisClassifier, UNet2D, UNet3D, count_params

__all__ = ["UNet3D", "UNet2D", "ResNet18UNet", "GenesisClassifier", "BatchNorm", "ConvTranspose2x", "count_params",
           "load_pytorch_checkpoint", "save_pytorch_checkpoint"]


def __getattr__(name):
    # torch is an optional extra: import the interop module only when it is asked for.
    if name in ("load_pytorch_checkpoint", "save_pytorch_checkpoint"):
        from genesis_jax.models import torch_interop
        return getattr(torch_interop, name)
    raise AttributeError(f"module 'genesis_jax.models' has no attribute {name!r}")
