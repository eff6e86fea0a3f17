"""What a compiled program does per device: FLOPs, memory, and its collectives.

Data parallelism can vanish without changing a single output (GUIDE.md section 4): one
stage the partitioner cannot split makes XLA all-gather the batch, and every device then
does the whole batch's work. The numbers here see that mechanism directly:
`cost_analysis()` of an SPMD program is per device, and the optimised HLO names every
collective with the shapes it moves. Used by the data-parallel tests, the dry run
(`python -m genesis_jax.train --dry_run`) and benchmarks/scaling.py.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path

from genesis_jax.hlo_cost import DTYPE_BYTES as _DTYPE_BYTES
from genesis_jax.hlo_cost import HloCost, format_bytes
from genesis_jax.hlo_cost import read as read_hlo_cost

COLLECTIVE_KINDS = ("all-reduce", "all-gather", "all-to-all", "reduce-scatter", "collective-permute",
                    "ragged-all-to-all")

# `name = SHAPE op(` where op is a collective or its async -start half (the -done half
# carries no new data). SHAPE is one array type or a tuple of them.
_OPS = "|".join(sorted(map(re.escape, COLLECTIVE_KINDS), key=len, reverse=True))
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<op>(?:" + _OPS + r")(?:-start)?)\(",
    re.MULTILINE)
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str            # "all-reduce", "all-gather", ... (async -start ops counted under their kind)
    bytes: int           # bytes of the arrays it produces on each device
    shapes: tuple        # ("f32[2,32,32,16]", ...)


def _arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims in _ARRAY.findall(shape_text)
            if dtype in _DTYPE_BYTES]


def _nbytes(arrays) -> int:
    total = 0.0
    for dtype, dims in arrays:
        count = 1
        for d in dims:
            count *= d
        total += count * _DTYPE_BYTES[dtype]
    return int(total)


def collectives_in_hlo(hlo_text: str) -> list[Collective]:
    """Every collective of an optimised HLO module, with the bytes it produces per device.

    Async forms: `all-gather-start` returns (operands, results), so its results are the
    second half of the tuple; `collective-permute-start` returns (operand, result,
    contexts...), counted by its result; `all-reduce-start` returns its results.
    """
    found = []
    for match in _INSTRUCTION.finditer(hlo_text):
        op, arrays = match["op"], _arrays(match["shape"])
        kind = op.removesuffix("-start")
        if op.endswith("-start") and kind == "all-gather":
            arrays = arrays[len(arrays) // 2:]
        elif op.endswith("-start") and kind == "collective-permute":
            arrays = arrays[1:2]
        found.append(Collective(kind, _nbytes(arrays), tuple(f"{d}[{','.join(map(str, s))}]" for d, s in arrays)))
    return found


@dataclasses.dataclass
class ProgramReport:
    """Per-device figures of one compiled SPMD program."""

    flops: float
    bytes_accessed: float
    argument_bytes: int
    output_bytes: int
    alias_bytes: int       # outputs that reuse (donated) argument buffers
    temp_bytes: int
    code_bytes: int
    collectives: list
    hlo: HloCost | None = None  # bytes per memory space, while loops, the TPU's cycle estimates

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries, donated buffers counted once: what must fit."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def collective_summary(self) -> dict:
        """{kind: {"count": n, "bytes": total, "largest": bytes of the largest one,
        "dtypes": {dtype: bytes}}}."""
        out = {}
        for c in self.collectives:
            entry = out.setdefault(c.kind, {"count": 0, "bytes": 0, "largest": 0})
            entry["count"] += 1
            entry["bytes"] += c.bytes
            entry["largest"] = max(entry["largest"], c.bytes)
        for kind, entry in out.items():
            entry["dtypes"] = bytes_by_dtype(self.collectives, kind)
        return out

    def largest(self, *kinds: str) -> int:
        return max((c.bytes for c in self.collectives if c.kind in kinds), default=0)

    def moved(self, *kinds: str) -> int:
        """Bytes all collectives of these kinds produce on each device."""
        return sum(c.bytes for c in self.collectives if c.kind in kinds)

    def to_dict(self) -> dict:
        return {"flops": self.flops, "bytes_accessed": self.bytes_accessed, "argument_bytes": self.argument_bytes,
                "output_bytes": self.output_bytes, "alias_bytes": self.alias_bytes, "temp_bytes": self.temp_bytes,
                "code_bytes": self.code_bytes, "peak_bytes": self.peak_bytes,
                "collectives": self.collective_summary(), "hlo": self.hlo.to_dict() if self.hlo else None}


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return cost or {}


def analyse(compiled) -> ProgramReport:
    """ProgramReport of a `jax.jit(...).lower(...).compile()` result.

    Caveat: XLA's cost analysis counts a while loop's body once, so a per-example
    lax.map contributes one example's FLOPs whatever the batch; its split shows in the
    shapes and collectives instead, and `hlo` lists the loops with their trip counts.
    """
    cost = _cost(compiled)
    memory = compiled.memory_analysis()
    text = compiled.as_text()
    return ProgramReport(
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        argument_bytes=int(getattr(memory, "argument_size_in_bytes", 0)),
        output_bytes=int(getattr(memory, "output_size_in_bytes", 0)),
        alias_bytes=int(getattr(memory, "alias_size_in_bytes", 0)),
        temp_bytes=int(getattr(memory, "temp_size_in_bytes", 0)),
        code_bytes=int(getattr(memory, "generated_code_size_in_bytes", 0)),
        collectives=collectives_in_hlo(text),
        hlo=read_hlo_cost(text),
    )


def partitioned_collectives(lowered) -> list[Collective]:
    """The collectives of a lowered program as the SPMD partitioner placed them, each with
    the dtype it sums in.

    A backend may retype a collective after partitioning: XLA:CPU widens a bf16 all-reduce
    to f32 around the same bf16 operand and result (its all-reduce-promotion pass), so the
    optimised HLO shows an f32 sum of numbers already rounded to bf16. The module right
    after partitioning shows what the program asks for, on every backend. This compiles
    the program once more with that module dumped, bypassing the persistent cache (a cache
    hit would dump nothing)."""
    import jax  # the reader above works on text alone
    from jax.experimental.compilation_cache import compilation_cache

    cache_was = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # JAX decides once whether the cache is used
    try:
        with tempfile.TemporaryDirectory() as where:
            lowered.compile(compiler_options={"xla_dump_to": where, "xla_dump_hlo_pass_re": "spmd-partitioning"})
            # A one-device program is not partitioned: its module as given is the answer.
            dumps = (sorted(Path(where).glob("*after_spmd-partitioning*.txt"))
                     or sorted(Path(where).glob("*before_optimizations.txt")))
            if not dumps:
                raise RuntimeError(f"XLA wrote no module after spmd-partitioning (found: {os.listdir(where)})")
            return collectives_in_hlo(dumps[-1].read_text())
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_was)
        compilation_cache.reset_cache()


def bytes_by_dtype(collectives, kind: str = "all-reduce") -> dict[str, int]:
    """{dtype: bytes} that the collectives of one kind produce per device."""
    out: dict[str, int] = {}
    for c in collectives:
        if c.kind == kind:
            for shape in c.shapes:
                dtype = shape.split("[")[0]
                out[dtype] = out.get(dtype, 0) + _nbytes(_arrays(shape))
    return out


def halo_bytes(closed_jaxpr, data: int = 1) -> float:
    """Halo bytes one device receives per step when the activations' X axis (axis 1 of
    every (N, X, Y, Z, C) array) is split over devices: for each convolution of the traced
    program (forward, and both gradients where traced with them: the input gradient's
    padding reaches into the output gradient's neighbours, the kernel gradient's into the
    input's) its padding along X, lo + hi planes of its input, which XLA's partitioner
    fetches from the neighbouring slabs (one collective-permute per side). The program is
    traced with global shapes; the batch is split `data` ways. A 1x1x1 convolution has
    no padding and no halo; neither have the pooling and the transposed convolution,
    which stay inside each slab."""
    import math
    total = 0.0

    def walk(jaxpr):
        nonlocal total
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                lhs = eqn.invars[0].aval
                x_axis = eqn.params["dimension_numbers"].lhs_spec[2]  # the first spatial axis
                planes = sum(eqn.params["padding"][0])
                total += planes * math.prod(lhs.shape) / lhs.shape[x_axis] * lhs.dtype.itemsize / data
            for sub in _sub_jaxprs(eqn.params):
                walk(sub)

    walk(getattr(closed_jaxpr, "jaxpr", closed_jaxpr))
    return total


def spatial_split_problems(split: "ProgramReport", unsplit_flops: float, space: int, halo: float,
                           smallest_activation: float, reduce_limit: float) -> list[str]:
    """What shows that a step whose activations are split `space` ways along X is not
    (empty: it is). Per-device FLOPs must be at most 1.15 x 1/space of the unsplit
    step's; the collective-permutes must move the predicted halo (halo_bytes) within a
    factor 1.5 either way; no all-gather or all-to-all may be as large as the smallest
    activation's per-device share (which a gathered activation would be); and the
    all-reduces (gradients, BatchNorm statistics, the loss's sums) must stay under
    reduce_limit bytes."""
    problems = []
    if split.flops > 1.15 * unsplit_flops / space:
        problems.append(f"per-device FLOPs {split.flops / 1e9:.3f} G > 1.15 x 1/{space} of the unsplit step's "
                        f"{unsplit_flops / 1e9:.3f} G ({split.flops * space / unsplit_flops:.2f} x its share)")
    permuted = split.moved("collective-permute")
    if not halo / 1.5 <= permuted <= 1.5 * halo:
        problems.append(f"collective-permutes move {format_bytes(permuted)}, the predicted halo is "
                        f"{format_bytes(halo)} (allowed: within 1.5x)")
    gathered = split.largest("all-gather", "all-to-all")
    if gathered >= smallest_activation:
        problems.append(f"an all-gather or all-to-all of {format_bytes(gathered)} (the smallest activation's "
                        f"per-device share is {format_bytes(smallest_activation)}): an activation was gathered")
    reduced = split.moved("all-reduce", "reduce-scatter")
    if reduced > reduce_limit:
        problems.append(f"all-reduces of {format_bytes(reduced)} > {format_bytes(reduce_limit)} (gradients, "
                        f"BatchNorm statistics and the loss's sums)")
    return problems


def tree_bytes(tree) -> int:
    """Bytes of every array leaf (arrays or ShapeDtypeStructs) of a pytree."""
    import jax
    import numpy as np
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))




def model_flops(closed_jaxpr) -> float:
    """FLOPs of the convolutions and matrix products of a traced program (`jax.make_jaxpr`, or
    the `.jaxpr` of `jax.jit(f).trace(...)`).

    Counted from the program as written, before any compiler sees it, so the count is the
    same on every backend: XLA's `cost_analysis()` leaves out work it hands to libraries
    (on GPU the cuDNN convolutions, most of a U-Net), which makes MFU from it meaningless
    there. 2 FLOPs per multiply-add; elementwise work is not counted (the usual MFU
    convention). Loops: a scan's body counts `length` times, a while loop's once (its
    trip count is not in the program), a conditional its most expensive branch; a
    shard_map body counts once per device of its mesh.
    """
    return _jaxpr_flops(getattr(closed_jaxpr, "jaxpr", closed_jaxpr))


def _jaxpr_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "cond":
            total += max(_jaxpr_flops(branch.jaxpr) for branch in eqn.params["branches"])
        else:
            inner = sum(_jaxpr_flops(sub) for sub in _sub_jaxprs(eqn.params))
            if name == "scan":
                inner *= eqn.params["length"]
            elif name == "shard_map":
                inner *= eqn.params["mesh"].size
            total += inner
    return total


def primitive_counts(closed_jaxpr) -> dict[str, int]:
    """How often each primitive occurs in a traced program, inner programs (jit, cond,
    scan, shard_map, ...) included: e.g. whether a formulation is free of gathers."""
    counts: dict[str, int] = {}

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            counts[eqn.primitive.name] = counts.get(eqn.primitive.name, 0) + 1
            for sub in _sub_jaxprs(eqn.params):
                walk(sub)

    walk(getattr(closed_jaxpr, "jaxpr", closed_jaxpr))
    return counts


def _sub_jaxprs(params):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(getattr(item, "jaxpr", None), "eqns"):
                yield item.jaxpr


def _conv_flops(eqn) -> float:
    import math
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    out = eqn.outvars[0].aval
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
    # Each output element sums in_features x kernel taps products; the kernel's in-feature
    # size is already divided by feature_group_count. batch_group_count (weight gradients
    # of grouped convs) splits the batch, which the output's shape already reflects.
    taps = math.prod(rhs.shape[d] for d in rhs_spec[2:])
    del lhs
    return 2.0 * math.prod(out.shape) * rhs.shape[rhs_spec[1]] * taps


def _dot_flops(eqn) -> float:
    import math
    lhs = eqn.invars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    out = eqn.outvars[0].aval
    return 2.0 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)
