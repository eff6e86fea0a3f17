"""The U-Net's 3x3x3 convolution in each formulation, forward + both gradients, per shape.

    python -m benchmarks.conv_formulations [--json benchmarks/results/conv_formulations_cpu.json]

Formulations (genesis_jax/models/conv.py): native (3D conv_general_dilated), stacked2d
(X folded into the batch, the three X taps as input channels of one 2D conv), and
taps2d (one 2D conv per X tap, summed), at the convolutions of the width-8 and width-32
U-Nets on batch-2 64x64x32 cubes. Median of --steps timed calls after --warmup.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.common import timed, write_json

from genesis_jax.models.conv import conv3x3x3
from genesis_jax.models.init import flat_draw


def conv_taps2d(x, kernel):
    n, dx, dy, dz, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    out = 0
    for a in range(3):
        out = out + jax.lax.conv_general_dilated(padded[:, a:a + dx].reshape(n * dx, dy, dz, c), kernel[a],
                                                 (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out.reshape(n, dx, dy, dz, kernel.shape[-1])


FORMS = {"native": lambda x, k: conv3x3x3(x, k, "native"),
         "stacked2d": lambda x, k: conv3x3x3(x, k, "stacked2d"),
         "taps2d": conv_taps2d}


def unet_convs(width: int, batch: int, shape):
    """(batch, spatial, c_in, c_out) of every 3x3x3 conv of the U-Net, deduplicated."""
    w, (x, y, z) = width, shape
    rows = []
    for level, (cin, mid) in enumerate([(1, w), (2 * w, 2 * w), (4 * w, 4 * w), (8 * w, 8 * w)]):
        s = (x >> level, y >> level, z >> level)
        rows += [(batch, s, cin, mid), (batch, s, mid, 2 * mid)]
    for level, (cat, mid) in zip((2, 1, 0), [(16 * w + 8 * w, 8 * w), (8 * w + 4 * w, 4 * w), (4 * w + 2 * w, 2 * w)]):
        s = (x >> level, y >> level, z >> level)
        rows += [(batch, s, cat, mid), (batch, s, mid, mid)]
    return list(dict.fromkeys(rows))


def measure(batch, spatial, cin, cout, steps, warmup) -> dict:
    kx, kk = jax.random.split(jax.random.key(0))
    x = flat_draw(jax.random.normal, kx, (batch, *spatial, cin), dtype=jnp.float32)
    k = flat_draw(jax.random.normal, kk, (3, 3, 3, cin, cout), dtype=jnp.float32) / (27 * cin) ** 0.5
    row = {}
    reference = None
    for name, form in FORMS.items():
        fwd_bwd = jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(form(x, k) ** 2), argnums=(0, 1)))
        value, _ = fwd_bwd(x, k)
        reference = value if reference is None else reference
        row[name] = {"ms": 1e3 * statistics.median(timed(lambda i: fwd_bwd(x, k)[0], steps, warmup)),
                     "rel_diff_vs_native": float(abs(value - reference) / abs(reference))}
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = {"benchmark": "conv_formulations", "backend": jax.default_backend(),
              "device": jax.devices()[0].device_kind, "jax": jax.__version__, "rows": []}
    print(f"3x3x3 conv, forward + both gradients, on {result['backend']} ({result['device']}), jax {jax.__version__}")
    print("| width | input | in -> out | native ms | stacked2d ms | taps2d ms | native / stacked2d |")
    print("|---:|---|---|---:|---:|---:|---:|")
    seen = set()
    for width in args.widths:
        for batch, spatial, cin, cout in unet_convs(width, args.batch, tuple(args.shape)):
            if (batch, spatial, cin, cout) in seen:
                continue
            seen.add((batch, spatial, cin, cout))
            row = measure(batch, spatial, cin, cout, args.steps, args.warmup)
            result["rows"].append({"width": width, "batch": batch, "spatial": spatial, "in": cin, "out": cout, **row})
            print(f"| {width} | {batch}x{'x'.join(map(str, spatial))} | {cin} -> {cout} | {row['native']['ms']:.1f} | "
                  f"{row['stacked2d']['ms']:.1f} | {row['taps2d']['ms']:.1f} | "
                  f"{row['native']['ms'] / row['stacked2d']['ms']:.2f}x |", flush=True)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
