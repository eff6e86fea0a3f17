"""What the TPU compiler says each deformation costs: bytes accessed and FLOPs per cube,
from ahead-of-time compiles for one chip of a TPU slice on a machine without TPUs (needs libtpu:
`pip install 'jax[tpu]'`; one such process per machine at a time).

    python -m benchmarks.deform_tpu_cost [--topology v5e:2x2] [--batch 8] [--movements] [--json PATH]

Each stage is vmapped over `batch` cubes of 64x64x32, as genesis_batch runs on
accelerators, with each DeformConfig.lookups where it matters ("table": per-voxel
gathers from per-cube tables, the Bezier map's 4096 points and the shuffle blocks'
geometry; "compute": recomputed per voxel, no such gathers; the TPU default); the
pipeline rows are genesis_batch itself. Per cube: the compiler's "bytes accessed" (all
memories; a per-element gather is charged a tile of its operand per element), the bytes
of the buffers each instruction reads and writes in device memory (HBM) and in on-chip
memory (VMEM) from the compiled module's layouts, the TPU compiler's cycle estimate
with loops multiplied out, and the iterations of any while loop (genesis_jax/hlo_cost.py).
For scale, the dry run of the width-32 bf16 train step reports the same per chip.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from benchmarks.common import write_json
from genesis_jax.deform import DeformConfig, flip, genesis_batch, inpaint, local_pixel_shuffle, nonlinear_intensity, outpaint
from genesis_jax.dryrun import topology_devices
from genesis_jax.hlo_cost import DEVICE
from genesis_jax.program import analyse


def stages(cfg: DeformConfig) -> dict:
    table, compute = (dataclasses.replace(cfg, lookups=m, batch_mode="vmap") for m in ("table", "compute"))
    per_cube = {
        "flip": lambda k, x: flip(k, x, x)[0],
        "local_pixel_shuffle (table)": lambda k, x: local_pixel_shuffle(k, x, lookups="table"),
        "local_pixel_shuffle (compute)": lambda k, x: local_pixel_shuffle(k, x, lookups="compute"),
        "nonlinear_intensity (table)": lambda k, x: nonlinear_intensity(k, x, lookups="table"),
        "nonlinear_intensity (compute)": lambda k, x: nonlinear_intensity(k, x, lookups="compute"),
        "inpaint": inpaint,
        "outpaint": outpaint,
    }
    fns = {name: (lambda keys, cubes, fn=fn: jax.vmap(fn)(keys, cubes), True) for name, fn in per_cube.items()}
    fns["pipeline (table)"] = (lambda key, cubes: genesis_batch(key, cubes, table), False)
    fns["pipeline (compute)"] = (lambda key, cubes: genesis_batch(key, cubes, compute), False)
    return fns


def shifted_selects(x, code, shifts):
    """out[v] = x[v + shifts[code[v]]]: one select per candidate offset (dx, dy, dz), the
    gather-free way to read a bounded neighbourhood."""
    pads = [(0, 0)] + [(max(-min(s[a] for s in shifts), 0), max(max(s[a] for s in shifts), 0)) for a in range(3)]
    padded = jnp.pad(x, pads)
    dims = x.shape[1:]
    out = jnp.zeros_like(x)
    for k, shift in enumerate(shifts):
        start = [lo + d for (lo, _), d in zip(pads[1:], shift)]
        window = padded[:, start[0]:start[0] + dims[0], start[1]:start[1] + dims[1], start[2]:start[2] + dims[2]]
        out = jnp.where(code == k, window, out)
    return out


def movements(batch: int, shape) -> dict:
    """Ways to move each voxel of `batch` cubes to another place, as the shuffle must:
    name -> fn(cubes, int32 codes of the cubes' shape). Gathers of one element per voxel (f32, bf16, int8
    operands), a one-hot select over each z-row, and selects over 11, 121 and 605
    shifted copies (x; x and y; x, y and z: the shuffle's whole +-5, +-5, +-2
    neighbourhood)."""
    x_dim, y_dim, z_dim = shape

    def gather(dtype):
        return lambda x, i: jax.vmap(lambda c, j: c.reshape(-1).astype(dtype)[j])(x, i.reshape(batch, -1))

    def z_one_hot(x, i):
        rows = x.reshape(batch, x_dim * y_dim, 1, z_dim)
        return jnp.sum(jnp.where(i.reshape(batch, x_dim * y_dim, z_dim, 1) % z_dim == jnp.arange(z_dim), rows, 0), -1)

    xs = [(dx, 0, 0) for dx in range(-5, 6)]
    xys = [(dx, dy, 0) for dx in range(-5, 6) for dy in range(-5, 6)]
    xyzs = [(dx, dy, dz) for dx in range(-5, 6) for dy in range(-5, 6) for dz in range(-2, 3)]
    return {"gather, f32 cube": gather(jnp.float32), "gather, bf16 cube": gather(jnp.bfloat16),
            "gather, int8 cube": gather(jnp.int8), "one-hot select within each z-row (32)": z_one_hot,
            "11 shifted selects (x)": lambda x, c: shifted_selects(x, c, xs),
            "121 shifted selects (x, y)": lambda x, c: shifted_selects(x, c, xys),
            "605 shifted selects (x, y, z)": lambda x, c: shifted_selects(x, c, xyzs)}


def per_cube_costs(report, batch: int) -> dict:
    hlo = report.hlo
    return {"bytes_per_cube": report.bytes_accessed / batch, "flops_per_cube": report.flops / batch,
            "hbm_bytes_per_cube": hlo.bytes_in(DEVICE) / batch, "on_chip_bytes_per_cube": hlo.on_chip_bytes() / batch,
            "estimated_cycles_per_cube": (hlo.estimated_cycles or 0) / batch,
            "loop_iterations": hlo.loop_iterations()}


def cost_cells(row: dict) -> str:
    return (f"{row['bytes_per_cube'] / 1e9:.3f} | {row['hbm_bytes_per_cube'] / 1e6:.1f} | "
            f"{row['on_chip_bytes_per_cube'] / 1e6:.1f} | {row['estimated_cycles_per_cube'] / 1e3:,.0f} | "
            f"{row['loop_iterations']:,} | {row['flops_per_cube'] / 1e6:.1f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default="v5e:2x2", help="a slice; its first chip is compiled for")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--movements", action="store_true",
                        help="also cost the ways of moving voxels the shuffle could use (movements())")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = topology_devices(args.topology)[0]
    on_chip = SingleDeviceSharding(device)
    cubes = jax.ShapeDtypeStruct((args.batch, *args.shape), jnp.float32, sharding=on_chip)
    key_type = jax.eval_shape(lambda: jax.random.key(0))
    one_key = jax.ShapeDtypeStruct(key_type.shape, key_type.dtype, sharding=on_chip)
    keys = jax.ShapeDtypeStruct((args.batch, *key_type.shape), key_type.dtype, sharding=on_chip)
    result = {"benchmark": "deform_tpu_cost", "topology": args.topology, "device_kind": device.device_kind,
              "jax": jax.__version__, "batch": args.batch, "shape": args.shape, "stages": {}}
    print(f"TPU compiler's cost per cube, {device.device_kind} ({args.topology}), {args.batch} cubes of "
          f"{tuple(args.shape)}, jax {jax.__version__}")
    print("| stage | GB accessed per cube (compiler) | MB in HBM per cube | MB on chip per cube | "
          "k cycles per cube (estimate) | loop iterations, all cubes | MFLOP per cube | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (fn, per_key) in stages(DeformConfig()).items():
        start = time.perf_counter()
        report = analyse(jax.jit(fn).lower(keys if per_key else one_key, cubes).compile())
        row = {**per_cube_costs(report, args.batch), "compile_s": time.perf_counter() - start}
        result["stages"][name] = row
        print(f"| {name} | {cost_cells(row)} | {row['compile_s']:.0f} |", flush=True)
    if args.movements:
        codes = jax.ShapeDtypeStruct((args.batch, *args.shape), jnp.int32, sharding=on_chip)
        result["movements"] = {}
        for name, fn in movements(args.batch, tuple(args.shape)).items():
            row = per_cube_costs(analyse(jax.jit(fn).lower(cubes, codes).compile()), args.batch)
            result["movements"][name] = row
            print(f"| {name} | {cost_cells(row)} | - |", flush=True)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
