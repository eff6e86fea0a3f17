"""The Genesis 3D U-Net, its classification head, and PyTorch weight interop."""

from genesis_jax.models.unet import BatchNorm, ConvTranspose2x, GenesisClassifier, UNet3D, count_params

__all__ = ["UNet3D", "GenesisClassifier", "BatchNorm", "ConvTranspose2x", "count_params",
           "load_pytorch_checkpoint", "save_pytorch_checkpoint"]


def __getattr__(name):
    # torch is an optional extra: import the interop module only when it is asked for.
    if name in ("load_pytorch_checkpoint", "save_pytorch_checkpoint"):
        from genesis_jax.models import torch_interop
        return getattr(torch_interop, name)
    raise AttributeError(f"module 'genesis_jax.models' has no attribute {name!r}")
