"""Samples/s and MFU of the jitted Genesis train step (forward, MSE, backward, SGD momentum,
state donated), the fast versus the naive transposed conv, and optionally the same step in
PyTorch, in one run on one device.

    python -m benchmarks.train_step --batch 32 --width 32 --dtype bfloat16 --torch --json out.json

MFU uses the step's convolution and matmul FLOPs counted from its jaxpr
(`genesis_jax.program.model_flops`: 732.4 GFLOP per 64x64x32 sample at width 32, GUIDE.md
section 4's 732.7 less the input gradient training never computes), the same count on
every backend; XLA's cost analysis is not used, as on GPU it leaves out the cuDNN
convolutions. Peak: bf16 dense of the device (H100/H200: 989 TFLOP/s), or --peak-tflops.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx


from benchmarks.common import timed, write_json  # noqa: E402

from genesis_jax import program  # noqa: E402
from genesis_jax.models import UNet3D  # noqa: E402
from genesis_jax.models.conv import resolve_conv_mode  # noqa: E402
from genesis_jax.models.init import flat_draw  # noqa: E402
from genesis_jax.models.unet import conv_transpose_2x, conv_transpose_reference  # noqa: E402
from genesis_jax.optim import recipe_sgd  # noqa: E402
from genesis_jax.step import init_train_state, make_model_step  # noqa: E402
from genesis_jax.tasks import restoration_loss  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}


def peak_tflops(device) -> float | None:
    kind = getattr(device, "device_kind", "")
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), None)


def time_restoration_step(model, inputs, steps: int, warmup: int):
    """({compile_s, median_step_s, samples_per_s, flops_per_sample}, compiled step) of the
    restoration step (MSE of the sigmoid output against the input, SGD momentum, state
    donated) of `model` on `inputs`; FLOPs from the jaxpr's convolutions and matmuls."""
    tx = recipe_sgd()
    graphdef, state = init_train_state(model, tx)
    step = make_model_step(graphdef, tx, restoration_loss)
    start = time.perf_counter()
    traced = step.trace(state, inputs, inputs)
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def run(i):
        holder["state"], loss = compiled(holder["state"], inputs, inputs)
        return loss

    median = statistics.median(timed(run, steps, warmup))
    batch = inputs.shape[0]
    return {"compile_s": compile_s, "median_step_s": median, "samples_per_s": batch / median,
            "flops_per_sample": program.model_flops(traced.jaxpr) / batch}, compiled


def bench_jax_step(batch, width, shape, dtype, steps, warmup, fast_upconv=True, conv="auto", channels=1) -> dict:
    """channels: the U-Net restores cubes of that many channels (in and out)."""
    model = UNet3D(n_class=channels, width=width, dtype=dtype, rngs=nnx.Rngs(0), fast_upconv=fast_upconv, conv=conv,
                   in_channels=channels)
    cubes = flat_draw(jax.random.uniform, jax.random.key(0), (batch, *shape, channels), dtype=jnp.float32)
    timing, compiled = time_restoration_step(model, cubes, steps, warmup)
    return {"batch": batch, "width": width, "channels": channels, "dtype": jnp.dtype(dtype).name,
            "fast_upconv": fast_upconv, **timing, "flops_source": "jaxpr convolutions and matmuls",
            "peak_bytes": program.analyse(compiled).peak_bytes}


def bench_upconv(batch, width, shape, dtype, steps, warmup) -> list[dict]:
    """Forward + gradient of each decoder transposed conv, fast form versus lax.conv_transpose."""
    rows = []
    for level, (channels, div) in enumerate(((16 * width, 8), (8 * width, 4), (4 * width, 2))):
        x = flat_draw(jax.random.normal, jax.random.key(level), (batch, *(d // div for d in shape), channels), dtype=dtype)
        k = flat_draw(jax.random.normal, jax.random.key(10 + level), (2, 2, 2, channels, channels), dtype=dtype) * 0.05
        b = jnp.zeros((channels,), dtype)
        row = {"input": list(x.shape)}
        for name, fn in (("fast", conv_transpose_2x), ("lax", conv_transpose_reference)):
            grad = jax.jit(jax.grad(lambda x, k, fn=fn: jnp.sum(fn(x, k, b).astype(jnp.float32)), argnums=(0, 1)))
            row[f"{name}_ms"] = 1e3 * statistics.median(timed(lambda i: grad(x, k), steps, warmup))
        row["speedup"] = row["lax_ms"] / row["fast_ms"]
        rows.append(row)
    return rows


def torch_restoration_step(width, dtype, learning_rate: float = 1.0):
    """(device, step(x, target) -> loss): one SGD-momentum step of the reference
    TorchUNet3D on MSE(model(x), target), channels_last_3d, bf16 autocast when dtype is
    bfloat16, synchronous (it waits for the GPU)."""
    import torch
    from genesis_jax.reference.torch_unet import TorchUNet3D

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = TorchUNet3D(width=width).to(device).to(memory_format=torch.channels_last_3d)
    opt = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
    use_bf16 = jnp.dtype(dtype) == jnp.bfloat16

    def step(x, target):
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
            loss = torch.mean((model(x).float() - target) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    return device, step


def bench_torch_step(batch, width, shape, dtype, steps, warmup) -> dict:
    import torch

    device, step = torch_restoration_step(width, dtype)
    x = torch.rand(batch, 1, *shape, device=device).to(memory_format=torch.channels_last_3d)
    median = statistics.median(timed(lambda i: step(x, x), steps, warmup))  # the torch step is synchronous
    return {"batch": batch, "width": width, "device": device, "torch": torch.__version__,
            "autocast_bf16": jnp.dtype(dtype) == jnp.bfloat16, "median_step_s": median, "samples_per_s": batch / median}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[2])
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--naive-step", action="store_true", help="also time the whole step with lax.conv_transpose")
    parser.add_argument("--no-upconv", action="store_true", help="skip the transposed-conv micro-benchmark")
    parser.add_argument("--torch", action="store_true", help="also time the same step in PyTorch")
    parser.add_argument("--conv", nargs="+", default=["auto"], choices=["auto", "native", "stacked2d"],
                        help="3x3x3 conv formulations to time (genesis_jax/models/conv.py)")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: bf16 dense of H100/H200)")
    parser.add_argument("--channels", type=int, default=1, help="input (and restored) channels per cube")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    shape, dtype = tuple(args.shape), jnp.dtype(args.dtype)
    device = jax.devices()[0]
    peak = args.peak_tflops or peak_tflops(device)
    result = {"benchmark": "train_step", "backend": jax.default_backend(),
              "device": getattr(device, "device_kind", str(device)), "jax": jax.__version__,
              "shape": shape, "peak_tflops": peak, "steps": [], "torch_steps": []}
    print(f"train step on {result['backend']} ({result['device']}), width {args.width}, {dtype.name}, cubes {shape}",
          flush=True)
    for batch in args.batch:
        variants = [(True, conv) for conv in args.conv] + ([(False, args.conv[0])] if args.naive_step else [])
        for fast, conv in variants:
            row = bench_jax_step(batch, args.width, shape, dtype, args.steps, args.warmup, fast_upconv=fast, conv=conv,
                                 channels=args.channels)
            row["conv"] = resolve_conv_mode(conv)
            if peak:
                row["mfu"] = row["samples_per_s"] * row["flops_per_sample"] / (peak * 1e12)
            result["steps"].append(row)
            print(f"  jax batch {batch} ({row['conv']} conv, {'fast' if fast else 'lax'} upconv): "
                  f"{row['samples_per_s']:.1f} samples/s"
                  + (f", MFU {100 * row['mfu']:.1f}%" if "mfu" in row else "")
                  + f" (compile {row['compile_s']:.0f} s)", flush=True)
        if args.torch:
            trow = bench_torch_step(batch, args.width, shape, dtype, args.steps, args.warmup)
            result["torch_steps"].append(trow)
            print(f"  torch batch {batch}: {trow['samples_per_s']:.1f} samples/s", flush=True)
    if not args.no_upconv:
        result["upconv"] = bench_upconv(args.batch[0], args.width, shape, dtype, args.steps, args.warmup)

    print("\n| framework | batch | conv | upconv | samples/s | ms/step | MFU |")
    print("|---|---:|---|---|---:|---:|---:|")
    for row in result["steps"]:
        mfu = f"{100 * row['mfu']:.1f}%" if "mfu" in row else "-"
        print(f"| JAX ({row['dtype']}) | {row['batch']} | {row['conv']} | {'fast' if row['fast_upconv'] else 'lax'} | "
              f"{row['samples_per_s']:.1f} | {1e3 * row['median_step_s']:.1f} | {mfu} |")
    for row in result["torch_steps"]:
        print(f"| PyTorch {row['torch']} ({'bf16 autocast' if row['autocast_bf16'] else 'fp32'}) | {row['batch']} | "
              f"Conv3d | ConvTranspose3d | {row['samples_per_s']:.1f} | {1e3 * row['median_step_s']:.1f} | - |")
    torch_by_batch = {row["batch"]: row for row in result["torch_steps"]}
    for jrow in result["steps"]:
        if jrow["batch"] in torch_by_batch and jrow["fast_upconv"]:
            ratio = jrow["samples_per_s"] / torch_by_batch[jrow["batch"]]["samples_per_s"]
            print(f"JAX ({jrow['conv']} conv) / PyTorch at batch {jrow['batch']}: {ratio:.2f}x")
    if "upconv" in result:
        print("\ntransposed conv, forward + gradient (ms): " + "; ".join(
            f"{tuple(r['input'])}: fast {r['fast_ms']:.2f}, lax {r['lax_ms']:.2f} ({r['speedup']:.1f}x)"
            for r in result["upconv"]))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
