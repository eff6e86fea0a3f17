"""Reading a compiled module for what the compiler's totals leave out: bytes per memory
space at the tiled layout's size, while loops with their trip counts, the TPU
compiler's cycle estimates with loops multiplied out."""

import importlib.util

import jax
import jax.numpy as jnp
import pytest

from genesis_jax import hlo_cost, program

# Lines in the form XLA:TPU prints them (trimmed from the v5e pre-training step's module,
# whose shuffle scatter-max ran as a loop of 80,000 iterations): a fusion reading a
# device-memory buffer and writing to on-chip memory (S(1)), an async copy into chip
# memory, and a while loop `i < 80000` whose body has a cycle estimate.
TPU_MODULE = """HloModule step

%fused_computation (param_0: f32[8,131072]) -> f32[8,131072] {
  %param_0 = f32[8,131072]{1,0:T(8,128)} parameter(0)
  ROOT %negate = f32[8,131072]{1,0:T(8,128)S(1)} negate(%param_0)
}

%cond (p: (s32[], s16[8,6,3])) -> pred[] {
  %p = (s32[]{:T(128)}, s16[8,6,3]{2,1,0:T(8,128)(2,1)S(1)}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  %limit = s32[]{:T(128)} constant(80000)
  ROOT %lt = pred[]{:T(512)} compare(%i, %limit), direction=LT
}

%body (p.1: (s32[], s16[8,6,3])) -> (s32[], s16[8,6,3]) {
  %p.1 = (s32[]{:T(128)}, s16[8,6,3]{2,1,0:T(8,128)(2,1)S(1)}) parameter(0)
  %i.1 = s32[]{:T(128)} get-tuple-element(%p.1), index=0
  %w = s16[8,6,3]{2,1,0:T(8,128)(2,1)S(1)} get-tuple-element(%p.1), index=1
  %step = s16[8,6,3]{2,1,0:T(8,128)(2,1)S(1)} fusion(%w), kind=kLoop, calls=%fused_computation, backend_config={"window_config":{"estimated_cycles":"1830"}}
  ROOT %t = (s32[]{:T(128)}, s16[8,6,3]{2,1,0:T(8,128)(2,1)S(1)}) tuple(%i.1, %step)
}

ENTRY %main (x: f32[8,131072], w0: s16[8,6,3]) -> f32[8,131072] {
  %x = f32[8,131072]{1,0:T(8,128)} parameter(0)
  %w0 = s16[8,6,3]{2,1,0:T(8,128)(2,1)S(1)} parameter(1)
  %copy-start = (f32[8,131072]{1,0:T(8,128)S(1)}, f32[8,131072]{1,0:T(8,128)}, u32[]{:S(2)}) copy-start(%x)
  %copy-done = f32[8,131072]{1,0:T(8,128)S(1)} copy-done(%copy-start)
  %zero = s32[]{:T(128)} constant(0)
  %init = (s32[]{:T(128)}, s16[8,6,3]{2,1,0:T(8,128)(2,1)S(1)}) tuple(%zero, %w0)
  %loop = (s32[]{:T(128)}, s16[8,6,3]{2,1,0:T(8,128)(2,1)S(1)}) while(%init), condition=%cond, body=%body
  ROOT %out = f32[8,131072]{1,0:T(8,128)} fusion(%copy-done), kind=kLoop, calls=%fused_computation, backend_config={"window_config":{"estimated_cycles":"2000"}}
}
"""
ARRAY = 8 * 131072 * 4        # f32[8,131072]: tiles fit exactly
WINDOW = 8 * 8 * 128 * 2      # s16[8,6,3] tiled T(8,128): (6, 3) padded to (8, 128)


def test_buffer_sizes_follow_the_tiled_layout_and_its_memory_space():
    assert hlo_cost.buffer_bytes("f32[8,131072]{1,0:T(8,128)S(1)}") == [(1, ARRAY)]
    assert hlo_cost.buffer_bytes("s16[8,6,3]{2,1,0:T(8,128)(2,1)}") == [(0, WINDOW)]
    # the tile follows the layout's minor-to-major order, not the shape's last axes
    assert hlo_cost.buffer_bytes("s16[8,6,3]{1,2,0:T(8,128)}") == [(0, 8 * 128 * 8 * 2)]
    assert hlo_cost.buffer_bytes("(f32[8]{0}, pred[3,3]{1,0})") == [(0, 32), (0, 9)]


def test_a_tpu_module_splits_its_bytes_by_memory_and_multiplies_loop_cycles():
    cost = hlo_cost.read(TPU_MODULE)
    assert cost.loops == [hlo_cost.Loop("body", 80000)]
    # cycles: the root fusion once, the loop's fusion 80,000 times
    assert cost.estimated_cycles == 2000 + 1830 * 80000
    # device memory: the copy's source read, the root's result written; on chip: the
    # copy's destination, the root's operand, the loop body's fusion (once) in and out
    assert cost.bytes_by_space == {0: 2 * ARRAY, 1: 2 * ARRAY + 2 * WINDOW}
    rows = dict(hlo_cost.report_rows(cost.to_dict()))
    assert rows["while loops"].startswith("1 of 80,000 iterations")
    assert "device memory 8.00 MiB, on-chip memory 8.03 MiB" in rows["bytes by memory"]


def test_compiled_cpu_programs_report_their_loops_with_trip_counts():
    looped = program.analyse(jax.jit(lambda x: jax.lax.fori_loop(0, 37, lambda i, a: a * 2 + i, x))
                             .lower(jnp.ones(8)).compile())
    assert [loop.trip_count for loop in looped.hlo.loops] == [37]
    straight = program.analyse(jax.jit(lambda x: x * 2).lower(jnp.ones(8)).compile())
    assert straight.hlo.loops == [] and set(straight.hlo.bytes_by_space) == {0}
    assert straight.hlo.estimated_cycles is None  # XLA:CPU writes no estimates
    assert dict(hlo_cost.report_rows(straight.hlo.to_dict()))["while loops"].startswith("none")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu: pip install 'genesis-jax[tpu]'")
def test_the_tpu_shuffle_compiles_without_a_loop_over_its_blocks():
    """v5e, 8 cubes, ahead of time: the TPU form of the shuffle has no while loop (its
    windowed scatter-max was one of 80,000 iterations) and reads its cube on chip."""
    from genesis_jax.deform import local_pixel_shuffle
    from genesis_jax.dryrun import topology_devices
    on_chip = jax.sharding.SingleDeviceSharding(topology_devices("v5e:2x2")[0])
    key = jax.eval_shape(lambda: jax.random.key(0))
    keys = jax.ShapeDtypeStruct((8, *key.shape), key.dtype, sharding=on_chip)
    cubes = jax.ShapeDtypeStruct((8, 64, 64, 32), jnp.float32, sharding=on_chip)
    for lookups, loops in (("compute", 0), ("table", 1)):
        shuffle = jax.vmap(lambda k, x: local_pixel_shuffle(k, x, lookups=lookups))
        text = jax.jit(shuffle).lower(keys, cubes).compile().as_text()
        cost = hlo_cost.read(text)
        assert len(cost.loops) == loops, (lookups, cost.loops)
        if lookups == "compute":
            assert on_chip_gather_operands(text) == [1, 1], "the cube and the indices in VMEM"
    assert cost.loops[0].trip_count == 80000


def on_chip_gather_operands(hlo_text):
    """Memory space of each operand of the module's one gather of the cube."""
    entry, bodies = hlo_cost.computations(hlo_text)
    shapes, gathers = {}, []
    for line in bodies[entry]:
        parsed = hlo_cost.parse_instruction(line)
        if parsed:
            shapes[parsed[0]] = parsed[1]
            if 'op_name="' in line and line.split('op_name="')[1].split('"')[0].endswith("/gather"):
                gathers.append(parsed[3])
    assert len(gathers) == 1, gathers
    return [space for name in gathers[0] for space, _ in hlo_cost.buffer_bytes(shapes[name])]
