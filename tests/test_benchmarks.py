"""`python -m benchmarks.run --quick`: every benchmark runs and the table is complete and
well-formed. No timing is asserted (CI machines vary); benchmarks.run.problems is the check."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import COLUMNS, SECTIONS, problems

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one device, as a user's machine
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out / "r.json"),
                           "--markdown", str(out / "r.md")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "r.json").read_text()), (out / "r.md").read_text(), proc.stdout


def test_the_quick_suite_is_complete(quick):
    result, _, _ = quick
    assert problems(result) == []
    assert {r["section"] for r in result["rows"]} == set(SECTIONS)
    assert all(r["device"] == result["environment"]["device"] and "jax" in r["versions"] for r in result["rows"])
    if result["torch"]:
        assert any(r["what"].startswith("PyTorch") for r in result["rows"])


def test_the_table_is_well_formed_markdown(quick):
    result, table, stdout = quick
    lines = table.strip().splitlines()
    header = lines.index("| " + " | ".join(COLUMNS) + " |")
    body = lines[header + 2:]
    assert len(body) == len(result["rows"])
    assert lines[header + 1].count("|") == len(COLUMNS) + 1 and set(lines[header + 1]) <= set("|-:")
    assert all(line.startswith("| ") and line.endswith(" |") and line.count("|") == len(COLUMNS) + 1
               for line in body)
    assert result["environment"]["device"] in lines[0] and "jax " in lines[0]
    assert table.strip() in stdout


def test_problems_names_what_is_missing_or_malformed(quick):
    result, _, _ = quick
    no_compile = copy.deepcopy(result)
    no_compile["rows"] = [r for r in no_compile["rows"] if r["section"] != "compile"]
    assert "no rows for section 'compile'" in problems(no_compile)
    nan = copy.deepcopy(result)
    nan["rows"][0]["value"] = float("nan")
    assert any("has value nan" in p for p in problems(nan))
    pipe = copy.deepcopy(result)
    pipe["rows"][1]["setting"] = "a | b"
    assert any("'|'" in p for p in problems(pipe))
    no_versions = copy.deepcopy(result)
    no_versions["environment"]["versions"] = {}
    assert "environment lacks versions" in problems(no_versions)


def test_the_2d_benchmarks_run_and_compare_like_with_like(tmp_path):
    """Models Genesis 2D's benchmarks at toy sizes: images/s against the 2D NumPy reference
    (the same block count), and each 2D model's step beside its PyTorch counterpart."""
    from benchmarks import deform_throughput, train_step_2d
    from genesis_jax.deform.shuffle import blocks_for_shape
    deform = deform_throughput.main(["--shape", "32", "32", "--batch-sizes", "2", "--repeats", "1",
                                     "--reference-cubes", "1", "--json", str(tmp_path / "d.json")])
    assert deform["local_blocks"] == blocks_for_shape((32, 32)) and deform["jax_runs"][0]["speedup_vs_reference"] > 0
    step = train_step_2d.main(["--batch", "2", "--shape", "32", "32", "--width", "4", "--steps", "1", "--warmup", "0"])
    frameworks = [(row["arch"], row["framework"].split()[0]) for row in step["rows"]]
    assert frameworks == [("unet", "JAX"), ("unet", "PyTorch"), ("resnet18_unet", "JAX"), ("resnet18_unet", "PyTorch")]
    assert all(row["jax_over_torch"] > 0 for row in step["rows"] if "jax_over_torch" in row)


GPU_LIKE_HLO = """HloModule jit_step

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%fused_bwd (p: bf16[2,8]) -> f32[8] {
  %p = bf16[2,8]{1,0} parameter(0)
  ROOT %c = f32[8]{0} convolution(%p, %p), dim_labels=bf_io->bf, metadata={op_name="jit(step)/transpose(jvp())/conv_general_dilated"}
}

%fused_bn (q: f32[8]) -> f32[8] {
  %q = f32[8]{0} parameter(0)
  ROOT %m = f32[8]{0} multiply(%q, %q)
}

ENTRY %main (x: bf16[2,8]) -> f32[8] {
  %x = bf16[2,8]{1,0} parameter(0)
  %cudnn-conv = (bf16[2,8]{1,0}, u8[0]{0}) custom-call(%x, %x), custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/jvp()/conv_general_dilated"}
  %cudnn-conv.1 = (bf16[2,8]{1,0}, u8[0]{0}) custom-call(%x, %x), custom_call_target="__cudnn$convBackwardFilter"
  %fusion = f32[8]{0} fusion(%x), kind=kOutput, calls=%fused_bwd
  %fusion.1 = f32[8]{0} fusion(%fusion), kind=kLoop, calls=%fused_bn
  %transpose.2 = f32[8]{0} transpose(%fusion.1), dimensions={0}
  %all-reduce-start = f32[8]{0} all-reduce-start(%transpose.2), to_apply=%add
  ROOT %all-reduce-done = f32[8]{0} all-reduce-done(%all-reduce-start)
}
"""


def test_the_profile_sorts_gpu_kernels_by_kind():
    """The GPU path, which CI cannot run: cuDNN's call targets and fusions around a
    convolution give the direction; events are summed per kind and per step."""
    from benchmarks.profile_step import instruction_kinds, summarise
    kinds = instruction_kinds(GPU_LIKE_HLO)
    assert kinds["cudnn-conv"] == "convolution forward"
    assert kinds["cudnn-conv.1"] == kinds["fusion"] == "convolution backward"
    assert kinds["fusion.1"] == "BatchNorm and other fusions" and kinds["transpose.2"] == "transposes and copies"
    assert kinds["all-reduce-start"] == kinds["all-reduce-done"] == "collectives"
    times = {"cudnn-conv": 4e6, "cudnn-conv.1": 6e6, "fusion": 2e6, "fusion.1": 1e6, "all-reduce-done": 1e6,
             "some_other_program_op": 9e9}
    summary = summarise(times, kinds, steps=2)
    assert summary["convolution forward"]["ms_per_step"] == 2.0
    assert summary["convolution backward"]["ms_per_step"] == 4.0
    assert summary["collectives"]["share"] == 1 / 14
