#!/usr/bin/env bash
# All GPU checks in one run, sized for about 5 minutes on one H100/H200. Used on the lent device machine:
#   bash benchmarks/gpu_check.sh            # writes JSON under $OUT (default: a new temporary folder)
# It needs only what the device image has (jax, numpy); the package is used from the
# source tree, not installed (the device machine has no network for pip).
# On a CPU-only machine it runs the same checks, smaller, so the script itself is tested.
# The device image lacks ml_collections, nibabel and tensorboardX (parts 3, 4 and 7 import
# them; part 4 reads the bundled sample and writes TensorBoard logs): carry their wheels
#   echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     ml_collections==1.1.0 nibabel==5.4.2 tensorboardX==2.6.5 importlib-resources
# name .whl in the run's carry, and start the device command with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Not benchmarks/results: the JSON there backs README's tables, one file per measured run.
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
echo "results: $OUT"
# The device image has python3 only; a venv here has both.
PY="$(command -v python3 || command -v python)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$PY" - <<'PY'
import jax
print("jax", jax.__version__, "backend", jax.default_backend(), "devices", jax.devices())
PY

if "$PY" -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)"; then
  BATCHES="64 256 1024 4096"; REF=10
  # One batch: on the H100 (2026-11-27) batch 64 gave the same MFU as 32 (26.7 vs 27.2%)
  # and its compile took 192 s of the run (batch 32: 105 s, mostly cuDNN autotuning).
  STEP_ARGS="--batch 32 --width 32 --dtype bfloat16 --steps 10 --warmup 3"
  E2E_ARGS="--batch 32 --width 32 --dtype bfloat16 --steps 5 --warmup 2"
  CLI_ARGS="--batch 32 --width 32 --dtype bfloat16 --steps 10 --windows 2"
  OFFICIAL_ARGS="--batch 6 --width 32 --dtype bfloat16 --steps 3 --warmup 1"
  PROFILE_ARGS="--batch 32 --width 32 --dtype bfloat16 --steps 5 --warmup 2"
  # Autotuning results persist between the steps' processes: later compiles of the same
  # convolutions reuse them instead of tuning again.
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_per_fusion_autotune_cache_dir=$(mktemp -d)"
  # The dry run only compiles (memory, FLOPs): no need to tune kernels it never runs.
  DRY_XLA_FLAGS="$XLA_FLAGS --xla_gpu_autotune_level=0"
else
  echo "no GPU: running the CPU-sized variant of the checks"
  BATCHES="6 64"; REF=5
  STEP_ARGS="--batch 2 --width 4 --shape 32 32 16 --dtype float32 --steps 2 --warmup 1"
  E2E_ARGS="--batch 2 --width 4 --shape 32 32 16 --steps 3 --warmup 1"
  CLI_ARGS="--batch 2 --width 4 --shape 32 32 16 --steps 3 --windows 2"
  OFFICIAL_ARGS="--batch 6 --width 4 --shape 32 32 16 --steps 2 --warmup 1"
  PROFILE_ARGS="--batch 2 --width 4 --shape 32 32 16 --dtype float32 --steps 2 --warmup 1"
  DRY_XLA_FLAGS="${XLA_FLAGS:-}"
fi
# Seconds since the start, printed with each part: where a lent GPU's minutes go.
section() { echo "== $1 [${SECONDS} s]"; }
BACKEND=$("$PY" -c 'import jax; print(jax.default_backend())')

section "1. Genesis deformations: genesis_batch cubes/s vs the NumPy reference (issue 2; goal >= 200k cubes/s on one H100)"
"$PY" -m benchmarks.deform_throughput --batch-sizes $BATCHES --reference-cubes $REF --stages \
  --json "$OUT/deform_throughput_$BACKEND.json"

section "2. Train step: JAX bf16 samples/s + MFU vs PyTorch (bf16 autocast, channels_last_3d), fast vs lax transposed conv (issue 3; goal >= 50% MFU, >= 1.5x PyTorch on one H100)"
TORCH_FLAG=""
"$PY" -c "import torch" 2>/dev/null && TORCH_FLAG="--torch" || echo "(torch not importable: PyTorch side skipped)"
# JAX takes 75% of GPU memory by default; PyTorch in the same process needs the rest.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 "$PY" -m benchmarks.train_step $STEP_ARGS $TORCH_FLAG --json "$OUT/train_step_$BACKEND.json"

section "3. End to end: host data + transfer + on-device deformation + step vs the step alone (issue 5; goal: deformation + data overhead < 5% of the step on GPU)"
"$PY" -m benchmarks.end_to_end $E2E_ARGS --json "$OUT/end_to_end_$BACKEND.json"

# The parts below were added after the first H100 run (issue 26): each failure is reported
# and the script goes on, so one part's problem does not cost the others' minutes.
section "4. The train CLI end to end from a cube store (prepare @sample, then python -m genesis_jax.train), against the step alone of part 3"
"$PY" -m benchmarks.train_cli $CLI_ARGS --compare "$OUT/end_to_end_$BACKEND.json" --json "$OUT/train_cli_$BACKEND.json" \
  || echo "(train CLI part failed: exit $?)"

section "5. The official-style loop: NumPy reference deformations in the main process feeding the PyTorch step, batch 6"
if [ -n "$TORCH_FLAG" ]; then
  "$PY" -m benchmarks.official_pipeline $OFFICIAL_ARGS --json "$OUT/official_pipeline_$BACKEND.json" \
    || echo "(official-style part failed: exit $?)"
else
  echo "(torch not importable: skipped)"
fi

section "6. Profile of the bf16 train step (jax.profiler): time per kind of operation"
"$PY" -m benchmarks.profile_step $PROFILE_ARGS --trace-dir "$OUT/profile_trace" --json "$OUT/profile_step_$BACKEND.json" \
  || echo "(profile part failed: exit $?)"

section "7. Dry run of the full-width bf16 pre-training step: per-GPU memory, FLOPs, collectives, largest batch that fits (issue 8)"
if "$PY" -c "import ml_collections" 2>/dev/null; then
  if [ "$BACKEND" = "gpu" ]; then
    DRY_ARGS="--config=genesis_chest_ct --config.batch_size=32 --fit_compiles=1"
  else
    DRY_ARGS="--config.batch_size=2 --device_memory_gb=1 --fit_compiles=1"
  fi
  XLA_FLAGS="$DRY_XLA_FLAGS" "$PY" -m genesis_jax.train --dry_run $DRY_ARGS --json "$OUT/dry_run_$BACKEND.json"
else
  echo "(ml_collections not importable: dry run skipped; carry its wheel, see the device tool's README)"
fi
echo "== done [${SECONDS} s]"
