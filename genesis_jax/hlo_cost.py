"""What an optimised HLO module costs where the compiler's totals do not look.

`compiled.cost_analysis()` gives one "bytes accessed" figure and counts a while loop's
body once. On TPU both can mislead: bytes an instruction reads from on-chip memory
(VMEM: memory space 1, `S(1)` in a layout) count as much as HBM bytes, and a scatter
the compiler expands into a loop over its updates costs one iteration. This reads the
module's text instead: every instruction that runs, the memory space of each buffer it
reads and writes (a loop body once, as the compiler counts it), every while loop with
its trip count, and, where the TPU compiler wrote one, its estimate of each
instruction's cycles, multiplied by the trip counts of the loops around it.

The byte model: each instruction reads each operand whole, once, and writes its result
once, at the size of its tiled layout (a (6, 3) tile of a T(8,128) layout takes 8 x 128
elements). What a fusion re-reads inside itself is not seen, and a fusion that reads a
slice of an operand is charged all of it: an estimate of the traffic, like the
compiler's, but one that tells device memory from on-chip memory.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re


DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
                "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
# XLA numbers memory spaces per backend: 0 is device memory (HBM) everywhere and 5 host
# memory; the TPU compiler puts on-chip buffers in others (VMEM is 1 on v5e and v5p; a
# v4 module uses 3).
SPACE_NAMES = {0: "device memory", 1: "on-chip memory", 5: "host memory"}
DEVICE, HOST = 0, 5

# Instructions that move no data of their own: views, bookkeeping, control flow (whose
# bodies are read as computations), and the -done half of async pairs (their -start
# half moved the data).
_FREE = {"parameter", "constant", "get-tuple-element", "bitcast", "tuple", "after-all", "partition-id",
         "replica-id", "while", "conditional", "call", "opt-barrier", "add-dependency"}
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_NAME = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*")
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\](?:\{([^}]*)\})?")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')


@dataclasses.dataclass(frozen=True)
class Loop:
    body: str
    trip_count: int | None   # None: neither known to the compiler nor `counter < constant(N)`


@dataclasses.dataclass
class HloCost:
    bytes_by_space: dict      # memory space -> bytes read and written (a loop body once)
    loops: list               # every while loop that runs, outermost first
    estimated_cycles: int | None  # the TPU compiler's per-instruction estimates, summed; None elsewhere

    def bytes_in(self, space: int) -> int:
        return self.bytes_by_space.get(space, 0)

    def on_chip_bytes(self) -> int:
        """Bytes in every memory but device and host memory."""
        return sum(n for space, n in self.bytes_by_space.items() if space not in (DEVICE, HOST))

    def loop_iterations(self) -> int:
        """Iterations of all loops with a known trip count."""
        return sum(loop.trip_count or 0 for loop in self.loops)

    def to_dict(self) -> dict:
        return {"bytes_by_space": {SPACE_NAMES.get(s, f"memory space {s}"): n
                                   for s, n in sorted(self.bytes_by_space.items())},
                "loops": [dataclasses.asdict(loop) for loop in self.loops],
                "estimated_cycles": self.estimated_cycles}


def buffer_bytes(shape_text: str) -> list[tuple[int, int]]:
    """(memory space, bytes of the tiled layout) of every array in a shape like
    `f32[8,64]{1,0:T(8,128)S(1)}` or a tuple of them."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(shape_text):
        if dtype not in DTYPE_BYTES:
            continue
        sizes = [int(d) for d in dims.split(",") if d]
        space = re.search(r"S\((\d+)\)", layout)
        if ":" in layout:
            minor_to_major, tiling = layout.split(":", 1)
            order = [int(i) for i in minor_to_major.split(",") if i]
            tile = re.match(r"T\(([\d,]+)\)", tiling)
            for axis, step in zip(order, reversed([int(t) for t in tile.group(1).split(",")]) if tile else ()):
                sizes[axis] = -(-sizes[axis] // step) * step
        out.append((int(space.group(1)) if space else 0, math.ceil(math.prod(sizes) * DTYPE_BYTES[dtype])))
    return out


def _closing(text: str, start: int) -> int:
    """Index just past the parenthesis that closes the one at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def parse_instruction(line: str):
    """(name, shape text, opcode, operand names, attributes text) of one HLO line, or None."""
    head = _NAME.match(line)
    if not head:
        return None
    rest = line[head.end():]
    shape_end = _closing(rest, 0) if rest.startswith("(") else rest.find(" ")
    shape, rest = rest[:shape_end], rest[shape_end:].lstrip()
    paren = rest.find("(")
    if paren < 0:
        return None
    operands_end = _closing(rest, paren)
    operands = re.findall(r"%([\w.\-]+)", rest[paren:operands_end])
    return head.group(1), shape, rest[:paren], operands, rest[operands_end:]


def computations(hlo_text: str) -> tuple[str, dict]:
    """(the entry computation's name, {name: [instruction lines]})."""
    found, entry, current = {}, None, None
    for line in hlo_text.splitlines():
        header = None if line.startswith(" ") else _HEADER.match(line)
        if header:
            current = header.group(2)
            found[current] = []
            entry = current if header.group(1) else entry
        elif line.strip() == "}":
            current = None
        elif current is not None:
            found[current].append(line)
    return entry, found


def trip_count(condition: list[str]) -> int | None:
    """N when a loop condition is `counter < constant(N)`."""
    constants = {}
    for line in condition:
        parsed = parse_instruction(line)
        if parsed and parsed[2] == "constant":
            value = re.search(r"constant\((-?\d+)\)", line)
            constants[parsed[0]] = int(value.group(1)) if value else None
        elif parsed and parsed[2] == "compare" and "direction=LT" in parsed[4] and parsed[3][-1] in constants:
            return constants[parsed[3][-1]]
    return None


def _output_bytes(opcode: str, shape: str) -> list[tuple[int, int]]:
    """The buffers an instruction writes. An async -start returns its operands' buffers
    beside the result (copy-start: (destination, source, context))."""
    arrays = buffer_bytes(shape)
    if opcode == "copy-start":
        return arrays[:1]
    if opcode == "all-gather-start":
        return arrays[len(arrays) // 2:]
    if opcode == "collective-permute-start":
        return arrays[1:2]
    if opcode.endswith("-start") and shape.startswith("(("):
        return buffer_bytes(shape[1:][_closing(shape[1:], 0):])
    return arrays


def read(hlo_text: str) -> HloCost:
    """HloCost of an optimised HLO module (`compiled.as_text()`)."""
    entry, bodies = computations(hlo_text)
    by_space, loops, cycles, seen_cycles = {}, [], 0, False
    pending = [(entry, 1)]
    while pending:
        name, times = pending.pop(0)
        shapes = {}
        for line in bodies.get(name, []):
            parsed = parse_instruction(line)
            if not parsed:
                continue
            instruction, shape, opcode, operands, attributes = parsed
            shapes[instruction] = shape
            if opcode == "while":
                body = re.search(r"body=%([\w.\-]+)", attributes).group(1)
                condition = re.search(r"condition=%([\w.\-]+)", attributes).group(1)
                known = re.search(r'"known_trip_count":\{"n":"(\d+)"', attributes)
                count = int(known.group(1)) if known else trip_count(bodies.get(condition, []))
                loops.append(Loop(body, count))
                pending.append((body, times * (count or 1)))
            elif opcode in ("call", "conditional"):  # every branch counted: a ceiling
                branches = re.search(r"branch_computations=\{([^}]*)\}", attributes)
                callees = re.findall(r"(?:to_apply|true_computation|false_computation)=%([\w.\-]+)", attributes)
                callees += re.findall(r"%([\w.\-]+)", branches.group(1)) if branches else []
                pending += [(callee, times) for callee in callees]
            if opcode in _FREE or opcode.endswith("-done"):
                continue
            estimate = _CYCLES.search(attributes)
            if estimate:
                cycles, seen_cycles = cycles + int(estimate.group(1)) * times, True
            buffers = _output_bytes(opcode, shape) + [b for o in operands if o in shapes for b in buffer_bytes(shapes[o])]
            for space, n in buffers:  # once per instruction, as cost_analysis() counts a loop body
                by_space[space] = by_space.get(space, 0) + n
    return HloCost(by_space, loops, cycles if seen_cycles else None)


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def report_rows(summary: dict | None) -> list[tuple[str, str]]:
    """The dry run's lines for an HloCost.to_dict(): bytes per memory space (when the
    layouts name more than one), while loops and the TPU compiler's cycle estimate."""
    if not summary:
        return []
    rows = []
    spaces = {name: n for name, n in summary["bytes_by_space"].items() if n >= 2**20}
    if len(spaces) > 1:
        rows.append(("bytes by memory", ", ".join(f"{name} {format_bytes(n)}" for name, n in spaces.items())
                     + " (each buffer read and written once per instruction)"))
    trips = collections.Counter(loop["trip_count"] for loop in summary["loops"])
    rows.append(("while loops", "none" if not trips else ", ".join(
        f"{n} of {f'{trip:,} iterations' if trip else 'unknown length'}"
        for trip, n in sorted(trips.items(), key=lambda item: -(item[0] or 0)))
        + " (the bytes and FLOPs above count a loop body once)"))
    if summary["estimated_cycles"]:
        rows.append(("compiler's cycle estimate", f"{summary['estimated_cycles'] / 1e6:,.1f} M cycles "
                                                  f"(loops multiplied out; library calls and custom kernels not estimated)"))
    return rows



def roofline_bytes(per_device: dict) -> tuple[float, str]:
    """(bytes, what they are) that a roofline charges to HBM, from ProgramReport.to_dict():
    where the module keeps buffers in a memory other than device or host memory (on chip,
    TPU), its device-memory buffers, since the
    compiler's "bytes accessed" also counts every read of on-chip memory (a gather from a
    cube held in VMEM is charged a tile per element); elsewhere the compiler's bytes."""
    spaces = (per_device.get("hlo") or {}).get("bytes_by_space", {})
    if any(n for name, n in spaces.items() if name not in (SPACE_NAMES[DEVICE], SPACE_NAMES[HOST])):
        return spaces.get(SPACE_NAMES[DEVICE], 0), "device-memory buffers"
    return per_device["bytes_accessed"], "XLA's bytes accessed"
