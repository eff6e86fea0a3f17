"""`python -m genesis_jax.train --dry_run`: size a run before booking the machines.

Compiles the configured step (pre-training: deformations + U-Net + SGD; segmentation
fine-tuning, `python -m genesis_jax.finetune --dry_run`: the U-Net on labelled patches,
with `--config.mesh.space=k` each patch split over k devices; exactly the program
training runs) for the configured global batch and mesh, without data or training, and
reports per device: memory (arguments, temporaries, outputs, from
`memory_analysis()`), the model's FLOPs (convolutions and matmuls counted from the jaxpr,
the same on every backend), XLA's FLOPs and bytes (`cost_analysis()`, which on GPU leaves
out the cuDNN convolutions), the collectives of the
optimised HLO, the compile time, and the largest per-device batch that fits a given
memory. With `--topology=v5e:2x2` the step is compiled ahead of time for that TPU slice
on a machine without TPUs (needs libtpu: `pip install 'genesis-jax[tpu]'`).

The largest batch comes from a linear fit of peak memory against the per-device batch
(compiles at the configured batch and twice it), then a few compiles at the candidates
(a secant search: each new line goes through the two largest batches compiled), so
the answer is a batch whose compiled program was seen to fit.
XLA's peak is what the program needs; the runtime keeps some memory of its own, so
leave a margin on a real device. The TPU compiler also rematerialises to stay inside
HBM, so near the limit its peak stops growing with the batch: there the answer is a
batch seen to compile and fit, and larger ones may too.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from genesis_jax import hlo_cost, program, sharding
from genesis_jax.errors import UserError
from genesis_jax.rundir import task_optimizer
from genesis_jax.step import init_train_state, make_train_step
from genesis_jax.tasks import task_for
from genesis_jax.tasks.base import mesh_space

# HBM per chip (GiB), peak dense bf16 TFLOP/s and HBM bandwidth (GB/s) by device_kind, from
# the vendors' data sheets (Cloud TPU system architecture pages; NVIDIA's H100 SXM, H200
# SXM and A100 SXM sheets): memory where the device cannot report its own (ahead-of-time
# topologies), and the roofline's two ceilings.
DEVICE_SPECS = {
    "TPU v4": (32, 275, 1200), "TPU v5 lite": (16, 197, 819), "TPU v5e": (16, 197, 819),
    "TPU v5p": (95, 459, 2765), "TPU v5": (95, 459, 2765), "TPU v6 lite": (32, 918, 1640),
    "TPU v6e": (32, 918, 1640), "NVIDIA H100 80GB HBM3": (80, 989, 3350), "NVIDIA H100": (80, 989, 3350),
    "NVIDIA H200": (141, 989, 4800), "NVIDIA A100-SXM4-80GB": (80, 312, 2039),
    "NVIDIA A100-SXM4-40GB": (40, 312, 1555),
}
# Where XLA's count is far below the model's: GPU convolutions are cuDNN calls it does not cost.
LIBRARY_CALLS_NOTE = "; leaves out library calls such as cuDNN convolutions"


def roofline(flops: float, bytes_accessed: float, model_flops: float, peak_flops: float,
             bandwidth: float) -> dict:
    """A step's least time on one device: max(FLOPs / peak, bytes / HBM bandwidth), from
    the compiled program's own counts (the FLOPs: XLA's or the model's, whichever is
    larger, since XLA does not cost library calls), which bound holds, and the MFU that
    time allows (model FLOPs over peak x time)."""
    compute_s = max(flops, model_flops) / peak_flops
    memory_s = bytes_accessed / bandwidth
    step_s = max(compute_s, memory_s)
    return {"peak_flops": peak_flops, "hbm_bytes_per_s": bandwidth, "compute_s": compute_s, "memory_s": memory_s,
            "bound": "compute" if compute_s >= memory_s else "memory (HBM)", "step_s": step_s,
            "steps_per_s": 1.0 / step_s, "mfu_ceiling": model_flops / (peak_flops * step_s)}


class DryRunError(UserError):
    """A dry-run request that cannot be served (unknown topology, no libtpu, ...)."""


def model_name(cfg) -> str:
    """UNet3D, UNet2D or ResNet18UNet: what the config builds."""
    if cfg.model.get("arch", "unet") == "resnet18_unet":
        return "ResNet18UNet"
    return "UNet3D" if len(cfg.data.get("cube_shape", cfg.data.get("patch_shape", ()))) == 3 else "UNet2D"


def target_devices(topology: str | None, num_devices: int):
    """The devices to compile for: this host's, or a TPU slice's; the first num_devices
    of them when that is set (config.num_devices)."""
    devices = topology_devices(topology) if topology else jax.devices()
    return devices[:num_devices] if num_devices else devices


def topology_devices(topology: str):
    try:
        from jax.experimental import topologies
        # A v4 chip's two TensorCores are one JAX device on TPU VMs (megacore); libtpu's
        # topology default would count cores instead.
        extra = {"chip_config_name": "megacore"} if topology.startswith("v4") else {}
        return topologies.get_topology_desc(topology, "tpu", **extra).devices
    except Exception as e:  # libtpu missing, or a name libtpu does not know
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DryRunError(f"cannot compile for TPU topology {topology!r} ({first}); it needs libtpu "
                          f"(pip install 'genesis-jax[tpu]') and a name like v5e:2x2, v5p:2x2x1, v4:2x2x1") from None


def data_sheet_ceilings(kind: str) -> tuple[float, float] | None:
    """(peak bf16 FLOP/s, HBM bytes/s) of a device kind from its data sheet, None if unknown."""
    if kind not in DEVICE_SPECS:
        return None
    _, peak_tflops, hbm_gbs = DEVICE_SPECS[kind]
    return peak_tflops * 1e12, hbm_gbs * 1e9


def device_spec(device, device_memory_gb: float | None):
    """(memory bytes or None, where that figure comes from, (peak bf16 FLOP/s, HBM bytes/s)
    from the data sheet or None)."""
    kind = getattr(device, "device_kind", "")
    memory_gib = DEVICE_SPECS.get(kind, (None,))[0]
    ceilings = data_sheet_ceilings(kind)
    if device_memory_gb:
        return device_memory_gb * 2**30, "--device_memory_gb", ceilings
    try:
        stats = device.memory_stats() or {}
    except Exception:  # ahead-of-time topology devices and some backends have none
        stats = {}
    if stats.get("bytes_limit"):
        return float(stats["bytes_limit"]), "the device's own memory_stats()", ceilings
    if memory_gib:
        return memory_gib * 2**30, f"the {kind} data sheet", ceilings
    return None, "unknown (pass --device_memory_gb)", None


def abstract_train_state(cfg, task, tx):
    """(graphdef, ShapeDtypeStruct state): the model's structure without allocating it."""
    holder = {}

    def build():
        holder["graphdef"], state = init_train_state(task.build_model(nnx.Rngs(cfg.seed)), tx)
        return state

    state = jax.eval_shape(build)
    return holder["graphdef"], state


DRY_RUN_TASKS = ("pretrain", "segmentation")


def example_shape(cfg) -> tuple:
    """One batch row of the configured task: a cube (X, Y, Z, C), or a labelled patch
    (X, Y, Z, C + 1: its label value index last)."""
    if cfg.task == "segmentation":
        return (*cfg.data.patch_shape, cfg.model.in_channels + 1)
    return (*cfg.data.cube_shape, cfg.model.in_channels)


def target_step(cfg, mesh, platform: str):
    """(jitted train step, its abstract replicated state): built once per dry run,
    lowered at every batch size tried."""
    if cfg.task not in DRY_RUN_TASKS:
        raise DryRunError(f"--dry_run compiles the pre-training and segmentation steps; the config's task is "
                          f"{cfg.task!r}")
    task = task_for(cfg, platform=platform)  # deformation batch mode and conv resolved for the target
    task.check_config()
    tx = task_optimizer(cfg, task, steps_per_epoch=1)  # the optimizer a run of this config builds
    graphdef, abstract_state = abstract_train_state(cfg, task, tx)
    state = sharding.replicated_specs(abstract_state, mesh)
    return make_train_step(graphdef, tx, task, jax.random.key(cfg.seed), mesh), state


def compile_step(cfg, mesh, target, global_batch: int):
    """(ProgramReport, the traced jaxpr, compile seconds) of the target step (target_step)
    at this global batch; the model's FLOPs and halos are counted from the jaxpr
    (program.model_flops, program.halo_bytes: the same on every backend)."""
    step, state = target
    cubes = jax.ShapeDtypeStruct((global_batch, *example_shape(cfg)), jnp.float32,
                                 sharding=sharding.batch_sharded(mesh))
    start = time.perf_counter()
    traced = step.trace(state, cubes, jax.ShapeDtypeStruct((), jnp.int32))
    compiled = traced.lower().compile()
    return program.analyse(compiled), traced.jaxpr, time.perf_counter() - start


def halo_report(report, jaxpr, mesh) -> dict | None:
    """With a space axis: the halo predicted from the layer shapes against what the
    compiled program's collective-permutes move (tests/test_spatial.py holds them equal
    in fp32; XLA:CPU moves bf16 halos as fp32, twice the prediction)."""
    if sharding.space_size(mesh) == 1:
        return None
    permuted = report.moved("collective-permute")
    return {"predicted_bytes": program.halo_bytes(jaxpr, sharding.data_size(mesh)), "permuted_bytes": permuted}


def largest_batch(per_device: int, peak: int, per_device_2: int, peak_2: int, memory: float):
    """Per-device batch at which the linear fit of peak memory reaches `memory`."""
    per_example = (peak_2 - peak) / (per_device_2 - per_device)
    fixed = peak - per_example * per_device
    if per_example <= 0:
        return None, per_example, fixed
    return max(0, math.floor((memory - fixed) / per_example)), per_example, fixed


def dry_run(cfg, topology: str | None = None, device_memory_gb: float | None = None, fit: bool = True,
            fit_compiles: int = 4) -> dict:
    devices = target_devices(topology, cfg.num_devices)
    space = mesh_space(cfg)
    mesh = sharding.make_mesh(devices, space, within_hosts=False)
    sharding.check_batch_size(cfg.batch_size, mesh.size, space)
    platform = devices[0].platform
    target = target_step(cfg, mesh, platform)
    report, jaxpr, seconds = compile_step(cfg, mesh, target, cfg.batch_size)
    step_flops = program.model_flops(jaxpr)
    per_device = cfg.batch_size // sharding.data_size(mesh)  # examples per device (a split one counts whole)
    memory, memory_source, ceilings = device_spec(devices[0], device_memory_gb)
    model_flops = step_flops / mesh.size  # per device
    result = {
        "target": topology or (platform if devices[0].device_kind == platform
                                 else f"{platform} ({devices[0].device_kind})"),
        "platform": platform,
        "device_kind": devices[0].device_kind, "devices": mesh.size, "mesh": dict(mesh.shape), "task": cfg.task,
        "global_batch": cfg.batch_size, "per_device_batch": per_device,
        "cube_shape": list(example_shape(cfg)[:-1]), "width": cfg.model.width,
        "channels": cfg.model.in_channels, "model": model_name(cfg),
        "dtype": cfg.model.dtype, "parameters": int(sum(math.prod(x.shape) for x in jax.tree.leaves(
            target[1].params))), "compile_s": round(seconds, 1), "per_device": report.to_dict(),
        "flops_per_sample": report.flops * space / per_device,
        "model_flops_per_device": model_flops, "model_flops_per_sample": step_flops / cfg.batch_size,
        "device_memory_bytes": memory,
        "device_memory_source": memory_source,
        "halo": halo_report(report, jaxpr, mesh),
        "space_spans_hosts": sharding.spans_hosts(mesh),
    }
    if ceilings:
        memory_bytes, source = hlo_cost.roofline_bytes(result["per_device"])
        bound = roofline(report.flops, memory_bytes, model_flops, *ceilings)
        result["roofline"] = {**bound, "samples_per_s_per_device": bound["steps_per_s"] * per_device / space,
                              "hbm_bytes": memory_bytes, "hbm_bytes_source": source}
    if fit and memory:
        result["fit"] = fit_batch(cfg, mesh, target, per_device, report, memory, fit_compiles)
    return result


def out_of_memory(error: Exception) -> bool:
    """Whether a compile failed because the program is larger than the device's memory
    (the TPU compiler refuses it: RESOURCE_EXHAUSTED)."""
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def fit_batch(cfg, mesh, target, per_device, report, memory, max_checks=4) -> dict:
    """The largest per-device batch whose compiled peak fits `memory` (see the module doc)."""
    def peak_at(batch):
        try:
            compiled, _, _ = compile_step(cfg, mesh, target, batch * sharding.data_size(mesh))
        except Exception as e:
            if out_of_memory(e):
                return math.inf
            raise
        return compiled.peak_bytes

    start = time.perf_counter()
    fit = search_largest_batch(peak_at, per_device, report.peak_bytes, memory, max_checks)
    fit["compile_s"] = round(time.perf_counter() - start, 1)
    return fit


def search_largest_batch(peak_at, per_device: int, peak: float, memory: float, max_checks: int = 4) -> dict:
    """Largest per-device batch b with peak_at(b) <= memory (peak_at returns inf for a
    compile that ran out of memory), from at most 1 + max_checks calls of peak_at.

    A line through the first two points gives the first candidate; each checked
    candidate then moves the next: the line through the two largest batches that
    compiled, or, where memory stopped growing with the batch (the TPU compiler
    rematerialises near the limit), twice the largest fit, or halfway to the smallest
    failure.
    """
    points = {per_device: peak, 2 * per_device: peak_at(2 * per_device)}
    first = largest_batch(per_device, peak, 2 * per_device, points[2 * per_device], memory) \
        if points[2 * per_device] < math.inf else (None, math.nan, math.nan)
    candidate, per_example, fixed = first
    linear_estimate = candidate
    checked = []

    def known():
        fits = max((b for b, p in points.items() if p <= memory), default=0)
        fails = min((b for b, p in points.items() if p > memory), default=None)
        return fits, fails

    fits, fails = known()
    while len(checked) < max_checks:
        if candidate is None or candidate <= fits or (fails is not None and candidate >= fails):
            candidate = 2 * max(fits, 1) if fails is None else (fits + fails) // 2
        if candidate <= fits or candidate in points or (fails is not None and candidate >= fails):
            break
        points[candidate] = peak_at(candidate)
        checked.append({"per_device_batch": candidate,
                        "peak_bytes": points[candidate] if points[candidate] < math.inf else None})
        fits, fails = known()
        if fits and points[fits] >= 0.97 * memory:
            break
        compiled = sorted((b, p) for b, p in points.items() if p < math.inf)
        (b1, p1), (b2, p2) = compiled[-2:]
        candidate = largest_batch(b1, p1, b2, p2, memory)[0]
    return {"largest_per_device_batch": fits or None, "linear_estimate": linear_estimate,
            "bytes_per_example": per_example, "fixed_bytes": fixed,
            "from_batches": [per_device, 2 * per_device], "checked": checked,
            "method": "linear fit of peak memory from two compiles, then compiles at the candidates"}


def format_report(result: dict) -> str:
    d = result["per_device"]
    rows = [
        ("target", f"{result['target']}, {result['devices']} device(s), mesh "
                   f"({', '.join(f'{k!r}: {v}' for k, v in result.get('mesh', {'data': result['devices']}).items())})"),
        ("model", f"{result.get('model', 'UNet3D')} width {result['width']} ({result['parameters']:,} parameters), "
                  f"{result['dtype']}"),
        ("batch", batch_line(result)),
        ("compile time", f"{result['compile_s']:.1f} s"),
        ("memory: arguments", program.format_bytes(d["argument_bytes"])),
        ("memory: temporaries", program.format_bytes(d["temp_bytes"])),
        ("memory: outputs", f"{program.format_bytes(d['output_bytes'])} ({program.format_bytes(d['alias_bytes'])} "
                            f"reuse donated arguments)"),
        ("memory: peak", program.format_bytes(d["peak_bytes"])),
        ("model FLOPs per step", f"{result['model_flops_per_device'] / 1e9:,.1f} GFLOP "
                                 f"({result['model_flops_per_sample'] / 1e9:,.1f} per sample; convolutions and "
                                 f"matmuls as written)"),
        ("XLA's FLOPs per step", f"{d['flops'] / 1e9:,.1f} GFLOP ({result['flops_per_sample'] / 1e9:,.1f} per sample)"
                                 + (LIBRARY_CALLS_NOTE if d["flops"] < 0.5 * result["model_flops_per_device"] else "")),
        ("bytes accessed", program.format_bytes(d["bytes_accessed"])),
    ]
    for kind, c in sorted(d["collectives"].items()):
        dtypes = ", ".join(f"{dtype} {program.format_bytes(n)}" for dtype, n in sorted(c.get("dtypes", {}).items()))
        rows.append((f"collective: {kind}", f"{c['count']} ops, {program.format_bytes(c['bytes'])} "
                                            f"(largest {program.format_bytes(c['largest'])}; {dtypes})"))
    if not d["collectives"]:
        rows.append(("collectives", "none"))
    rows += hlo_cost.report_rows(d.get("hlo"))
    if result.get("space_spans_hosts"):
        rows.append(("note", f"a patch's {result['mesh']['space']} devices span hosts of this target: training "
                             f"needs them within one host (each process loads whole patches)"))
    if result.get("halo"):
        rows.append(("halo exchange", f"{program.format_bytes(result['halo']['permuted_bytes'])} permuted, "
                                      f"{program.format_bytes(result['halo']['predicted_bytes'])} predicted from "
                                      f"the layer shapes"))
    memory = result["device_memory_bytes"]
    rows.append(("device memory", f"{program.format_bytes(memory)} ({result['device_memory_source']})" if memory
                 else result["device_memory_source"]))
    if "fit" in result:
        fit = result["fit"]
        best = fit["largest_per_device_batch"]
        peaks = {c["per_device_batch"]: c["peak_bytes"] for c in fit["checked"]}
        unit = group_unit(result)
        found = (f"about {fit['linear_estimate']} {unit}, estimated by the linear fit (not compiled there)"
                 if not fit["checked"] and fit["linear_estimate"] else
                 f"none found (even one example {unit} does not fit)" if not best else
                 f"{best} {unit} (compiled there: peak {program.format_bytes(peaks[best])})" if best in peaks else
                 f"{best} {unit} (compiled)")
        tried = ", ".join(f"{c['per_device_batch']}: " + (program.format_bytes(c["peak_bytes"]) if c["peak_bytes"]
                                                            else "out of memory") for c in fit["checked"])
        first = (f"first fit {program.format_bytes(fit['bytes_per_example'])} per example + "
                 f"{program.format_bytes(fit['fixed_bytes'])} fixed" if math.isfinite(fit["bytes_per_example"])
                 else "no first fit") + f" from compiles at {fit['from_batches'][0]} and {fit['from_batches'][1]}"
        rows.append(("largest batch that fits", f"{found}; {first}" + (f"; checked {tried}" if tried else "")))
    if "roofline" in result:
        gpu = "; on a GPU XLA's bytes leave out cuDNN's convolutions: the HBM time is low" \
            if result.get("platform") == "gpu" else ""
        rows.append(("roofline (data sheet)", roofline_line(result["roofline"]) + gpu))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def roofline_line(bound: dict) -> str:
    return (f"at most {bound['steps_per_s']:.2f} steps/s, {bound['samples_per_s_per_device']:.1f} samples/s per "
            f"device: {bound['bound']} bound ({bound['compute_s'] * 1e3:.1f} ms of FLOPs at "
            f"{bound['peak_flops'] / 1e12:.0f} TFLOP/s bf16, {bound['memory_s'] * 1e3:.1f} ms of HBM traffic at "
            f"{bound['hbm_bytes_per_s'] / 1e9:.0f} GB/s: {bound.get('hbm_bytes_source', 'bytes accessed')}); "
            f"MFU at most {bound['mfu_ceiling']:.0%}")


def group_unit(result: dict) -> str:
    """'per device', or with a space axis 'per group of k devices' (one patch's devices)."""
    space = result.get("mesh", {}).get("space", 1)
    return f"per group of {space} devices" if space > 1 else "per device"


def batch_line(result: dict) -> str:
    """global B = b per device, cubes (X, Y, Z) x C channel(s); with a space axis, each
    patch split over its devices."""
    space = result.get("mesh", {}).get("space", 1)
    kind = "patches" if result.get("task") == "segmentation" else "cubes"
    per = f"{result['per_device_batch']} {group_unit(result)}"
    split = f", X split over {space} devices ({result['cube_shape'][0] // space} per device)" if space > 1 else ""
    return (f"global {result['global_batch']} = {per}, {kind} {tuple(result['cube_shape'])} x "
            f"{result.get('channels', 1)} channel(s){split}")


def write_json(result: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
