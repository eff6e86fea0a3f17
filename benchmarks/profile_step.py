"""Where a train step's time goes: a jax.profiler trace of a few steps, summarised by kind
of operation.

    python -m benchmarks.profile_step --batch 32 --width 32 --dtype bfloat16 --json out.json

The restoration step of benchmarks.train_step (U-Net, MSE, SGD momentum), compiled, warmed
up, then traced for --steps steps. Every profiled event that names an HLO instruction
of the step (the `hlo_op` stat: kernels on a GPU's device plane, thunks on the CPU) is
put in one kind, read from the optimised HLO: convolutions forward / backward (XLA's
convolution ops, cuDNN's custom calls, fusions around either; the direction from cuDNN's
call target, else from the metadata: autodiff's backward pass names its ops transpose(...);
XLA:CPU drops the metadata of some convolutions it rewrites, counted apart), BatchNorm and
other fusions, transposes and copies, collectives, other. Times are summed per step; the
trace is kept in --trace-dir for TensorBoard's profile plugin or Perfetto.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.common import add_size_arguments, write_json
from genesis_jax import hlo_cost
from genesis_jax.models import UNet3D
from genesis_jax.models.init import flat_draw
from genesis_jax.optim import recipe_sgd
from genesis_jax.program import COLLECTIVE_KINDS
from genesis_jax.step import init_train_state, make_model_step
from genesis_jax.tasks import restoration_loss

KINDS = ("convolution forward", "convolution backward", "convolution, direction not recorded",
         "BatchNorm and other fusions", "transposes and copies", "collectives", "other")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def computations(hlo_text: str) -> dict[str, list[tuple[str, str, str]]]:
    """Computation name -> its instructions, each (name, opcode, the rest of its line after
    the operands), read by genesis_jax.hlo_cost."""
    _, bodies = hlo_cost.computations(hlo_text)
    return {name: [(i[0], i[2], i[4]) for i in map(hlo_cost.parse_instruction, lines) if i]
            for name, lines in bodies.items()}


def _is_convolution(op: str, rest: str) -> bool:
    target = _TARGET.search(rest)
    return op == "convolution" or bool(target and "conv" in target.group(1).lower())


def instruction_kinds(hlo_text: str) -> dict[str, str]:
    """Each instruction's name -> its kind (KINDS); a fusion or call takes its kind from
    what it calls (a convolution inside makes it a convolution)."""
    comps = computations(hlo_text)
    parsed = {name: (op, rest) for instructions in comps.values() for name, op, rest in instructions}

    def convolution_in(name):
        """The direction of the first convolution `name` computes or calls ("" if none):
        cuDNN's call target says it; else autodiff's backward pass names its ops
        transpose(...) in the metadata, which XLA:CPU drops from some convolutions it
        rewrites. (HLO calls form no cycles.)"""
        op, rest = parsed[name]
        if _is_convolution(op, rest):
            target, found = _TARGET.search(rest), _OP_NAME.search(rest)
            if target and ("Backward" in target.group(1) or "Forward" in target.group(1)):
                return "convolution backward" if "Backward" in target.group(1) else "convolution forward"
            if not found:
                return "convolution, direction not recorded"
            return "convolution backward" if "transpose(" in found.group(1) else "convolution forward"
        for callee in _CALLS.findall(rest):
            for member, _, _ in comps.get(callee, []):
                inner = convolution_in(member)
                if inner:
                    return inner
        return ""

    kinds = {}
    for name, (op, rest) in parsed.items():
        base = op.removesuffix("-start").removesuffix("-done")
        convolution = convolution_in(name)
        if convolution:
            kinds[name] = convolution
        elif base in COLLECTIVE_KINDS:
            kinds[name] = "collectives"
        elif op in ("transpose", "copy", "copy-start", "copy-done") or name.startswith(("transpose", "copy")):
            kinds[name] = "transposes and copies"
        elif op == "fusion":
            kinds[name] = "BatchNorm and other fusions"
        else:
            kinds[name] = "other"
    return kinds


def op_times(profile) -> tuple[dict[str, float], str]:
    """(HLO instruction -> total ns, where they were read) from a jax.profiler.ProfileData:
    a device plane's events where there is one (a GPU's "XLA Ops" line if present), else
    the host's thunks."""
    def events_by_op(lines):
        times = {}
        for line in lines:
            for event in line.events:
                op = dict(event.stats).get("hlo_op")
                if op:
                    times[str(op)] = times.get(str(op), 0.0) + event.duration_ns
        return times

    devices = [p for p in profile.planes if p.name.startswith("/device:")]
    for plane in devices:
        lines = list(plane.lines)
        ops_lines = [line for line in lines if line.name == "XLA Ops"] or lines
        times = events_by_op(ops_lines)
        if times:
            return times, f"{plane.name} ({', '.join(sorted({line.name for line in ops_lines}))})"
    host = [p for p in profile.planes if p.name.startswith("/host:CPU")]
    return events_by_op([line for p in host for line in p.lines]), "/host:CPU thunks"


def summarise(times: dict[str, float], kinds: dict[str, str], steps: int) -> dict:
    """{kind: {"ms_per_step", "share", "top": [(op, ms per step), ...]}} over the step's
    instructions (events of other programs are left out)."""
    ours = {op: ns for op, ns in times.items() if op in kinds}
    total = sum(ours.values()) or 1.0
    out = {}
    for kind in KINDS:
        members = sorted(((op, ns) for op, ns in ours.items() if kinds[op] == kind), key=lambda t: -t[1])
        ns = sum(t[1] for t in members)
        out[kind] = {"ms_per_step": ns / steps / 1e6, "share": ns / total,
                     "top": [(op, t / steps / 1e6) for op, t in members[:3]]}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser, batch=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--trace-dir", type=Path, help="keep the trace here (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    model = UNet3D(width=args.width, dtype=jnp.dtype(args.dtype), rngs=nnx.Rngs(0))
    tx = recipe_sgd()
    graphdef, state = init_train_state(model, tx)
    cubes = flat_draw(jax.random.uniform, jax.random.key(0), (args.batch, *args.shape, 1))
    compiled = make_model_step(graphdef, tx, restoration_loss).lower(state, cubes, cubes).compile()
    for _ in range(args.warmup):
        state, loss = compiled(state, cubes, cubes)
    jax.block_until_ready(loss)
    trace_dir = args.trace_dir or Path(tempfile.mkdtemp(prefix="profile_step_"))
    with jax.profiler.trace(str(trace_dir)):
        for _ in range(args.steps):
            state, loss = compiled(state, cubes, cubes)
        jax.block_until_ready(loss)
    traces = sorted(trace_dir.glob("**/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise SystemExit(f"error: jax.profiler wrote no .xplane.pb under {trace_dir}")
    times, source = op_times(jax.profiler.ProfileData.from_file(str(traces[-1])))
    kinds = instruction_kinds(compiled.as_text())
    summary = summarise(times, kinds, args.steps)
    device = jax.devices()[0]
    profiled_ms = sum(row["ms_per_step"] for row in summary.values())
    result = {"benchmark": "profile_step", "backend": jax.default_backend(),
              "device": getattr(device, "device_kind", str(device)), "batch": args.batch, "width": args.width,
              "dtype": args.dtype, "shape": args.shape, "steps": args.steps, "events_from": source,
              "trace": str(traces[-1]), "profiled_ms_per_step": profiled_ms, "kinds": summary}
    print(f"profile of the restoration step on {result['backend']} ({result['device']}), batch {args.batch}, "
          f"width {args.width}, {args.dtype}, cubes {tuple(args.shape)}; {args.steps} steps, events from {source}")
    print("| kind of operation | ms per step | share | largest |")
    print("|---|---:|---:|---|")
    for kind, row in summary.items():
        top = ", ".join(f"{op} {ms:.2f} ms" for op, ms in row["top"]) or "-"
        print(f"| {kind} | {row['ms_per_step']:.2f} | {100 * row['share']:.1f}% | {top} |")
    print(f"| all profiled operations | {profiled_ms:.2f} | 100% | trace: {traces[-1]} |")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
