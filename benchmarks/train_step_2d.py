"""Models Genesis 2D: the jitted train step of each 2D model against the same model in
PyTorch, in one run on one device.

    python -m benchmarks.train_step_2d --batch 16 --shape 128 128 --json out.json

The step restores images as pre-training does (sigmoid output, MSE against the input,
backward, SGD lr 1.0 momentum 0.9, state donated). Models, full size: `unet` (UNet2D, width
32, 6,821,953 parameters) against genesis_jax/reference/torch_unet.py's 2D form
(ContBatchNorm2d, as the official 3D model's), and `resnet18_unet` (ResNet18UNet, width 64,
14,321,937 parameters, BatchNorm in training mode) against
`segmentation_models_pytorch.Unet("resnet18", encoder_weights=None)` with a sigmoid on
its logits. fp32; channels_last for PyTorch. Timings are medians of --steps calls after
--warmup, each ending in block_until_ready / a synchronised step. FLOPs per sample are
the jaxpr's convolutions and matmuls (genesis_jax.program.model_flops).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.common import timed, write_json
from benchmarks.train_step import time_restoration_step
from genesis_jax.models import ResNet18UNet, UNet2D
from genesis_jax.models.init import flat_draw

ARCHS = {"unet": (UNet2D, 32, "batch"), "resnet18_unet": (ResNet18UNet, 64, "running")}


def bench_jax(arch: str, batch: int, shape, steps: int, warmup: int, width: int | None = None) -> dict:
    """width: the U-Net's (resnet18_unet is always ResNet-18's 64, as smp's)."""
    kind, default_width, bn_mode = ARCHS[arch]
    width = width if arch == "unet" and width else default_width
    model = kind(width=width, bn_mode=bn_mode, rngs=nnx.Rngs(0))
    images = flat_draw(jax.random.uniform, jax.random.key(0), (batch, *shape, 1), dtype=jnp.float32)
    timing, _ = time_restoration_step(model, images, steps, warmup)
    return {"arch": arch, "framework": "JAX", "batch": batch, "width": width, **timing}


def torch_model(arch: str, width: int | None = None):
    import torch
    if arch == "unet":
        from genesis_jax.reference.torch_unet import TorchUNet3D
        return TorchUNet3D(width=width or 32, dims=2)
    import segmentation_models_pytorch as smp
    unet = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1)
    return torch.nn.Sequential(unet, torch.nn.Sigmoid())


def bench_torch(arch: str, batch: int, shape, steps: int, warmup: int, width: int | None = None) -> dict:
    import torch
    model = torch_model(arch, width).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    x = torch.rand(batch, 1, *shape).to(memory_format=torch.channels_last)

    def run():
        loss = torch.mean((model(x) - x) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    median = statistics.median(timed(lambda i: run(), steps, warmup))  # the torch step is synchronous on CPU
    return {"arch": arch, "framework": f"PyTorch {torch.__version__}", "batch": batch, "median_step_s": median,
            "samples_per_s": batch / median}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--shape", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    parser.add_argument("--width", type=int, help="the U-Net's width (default 32; resnet18_unet is always 64)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    device = jax.devices()[0]
    result = {"benchmark": "train_step_2d", "backend": jax.default_backend(),
              "device": getattr(device, "device_kind", str(device)), "jax": jax.__version__, "shape": shape,
              "batch": args.batch, "rows": []}
    print(f"2D train step on {result['backend']} ({result['device']}), images {shape}, batch {args.batch}", flush=True)
    for arch in args.arch:
        rows = [bench_jax(arch, args.batch, shape, args.steps, args.warmup, args.width)]
        if not args.no_torch:
            rows.append(bench_torch(arch, args.batch, shape, args.steps, args.warmup, args.width))
            rows[1]["jax_over_torch"] = rows[0]["samples_per_s"] / rows[1]["samples_per_s"]
        for row in rows:
            print(f"  {arch} {row['framework']}: {row['samples_per_s']:.1f} samples/s", flush=True)
        result["rows"] += rows
    print("\n| model | framework | samples/s | ms/step | GFLOP/sample | JAX / PyTorch |")
    print("|---|---|---:|---:|---:|---:|")
    for row in result["rows"]:
        flops = f"{row['flops_per_sample'] / 1e9:.2f}" if "flops_per_sample" in row else "-"
        ratio = f"{row['jax_over_torch']:.2f}x" if "jax_over_torch" in row else "-"
        print(f"| {row['arch']} | {row['framework']} | {row['samples_per_s']:.1f} | {1e3 * row['median_step_s']:.0f} | "
              f"{flops} | {ratio} |")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
