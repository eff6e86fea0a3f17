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
