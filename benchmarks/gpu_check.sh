#!/usr/bin/env bash
# All GPU checks in one run (< 5 minutes on one H100/H200; step 4 adds up to 4 compiles). Used on the lent device machine:
#   bash benchmarks/gpu_check.sh            # writes JSON under $OUT (or benchmarks/results)
# It needs only what the device image has (jax, numpy); the package is used from the
# source tree, not installed (the device machine has no network for pip).
# On a CPU-only machine it runs the same checks, smaller, so the script itself is tested.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"

python - <<'PY'
import jax
print("jax", jax.__version__, "backend", jax.default_backend(), "devices", jax.devices())
PY

if python -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)"; then
  BATCHES="64 256 1024 4096"; REF=10
  STEP_ARGS="--batch 32 64 --width 32 --dtype bfloat16 --steps 10 --warmup 3"
  E2E_ARGS="--batch 32 --width 32 --dtype bfloat16 --steps 10 --warmup 3"
else
  echo "no GPU: running the CPU-sized variant of the checks"
  BATCHES="6 64"; REF=5
  STEP_ARGS="--batch 2 --width 4 --shape 32 32 16 --dtype float32 --steps 2 --warmup 1"
  E2E_ARGS="--batch 2 --width 4 --shape 32 32 16 --steps 3 --warmup 1"
fi
BACKEND=$(python -c 'import jax; print(jax.default_backend())')

echo "== 1. Genesis deformations: genesis_batch cubes/s vs the NumPy reference (issue 2; goal >= 200k cubes/s on one H100)"
python benchmarks/deform_throughput.py --batch-sizes $BATCHES --reference-cubes $REF --stages \
  --json "$OUT/deform_throughput_$BACKEND.json"

echo "== 2. Train step: JAX bf16 samples/s + MFU vs PyTorch (bf16 autocast, channels_last_3d), fast vs lax transposed conv (issue 3; goal >= 50% MFU, >= 1.5x PyTorch on one H100)"
TORCH_FLAG=""
python -c "import torch" 2>/dev/null && TORCH_FLAG="--torch" || echo "(torch not importable: PyTorch side skipped)"
python benchmarks/train_step.py $STEP_ARGS $TORCH_FLAG --json "$OUT/train_step_$BACKEND.json"

echo "== 3. End to end: host data + transfer + on-device deformation + step vs the step alone (issue 5; goal: deformation + data overhead < 5% of the step on GPU)"
python benchmarks/end_to_end.py $E2E_ARGS --json "$OUT/end_to_end_$BACKEND.json"

echo "== 4. Dry run of the full-width bf16 pre-training step: per-GPU memory, FLOPs, collectives, largest batch that fits (issue 8)"
if python -c "import ml_collections" 2>/dev/null; then
  if [ "$BACKEND" = "gpu" ]; then
    DRY_ARGS="--config=genesis_chest_ct --config.batch_size=32 --fit_compiles=2"
  else
    DRY_ARGS="--config.batch_size=2 --device_memory_gb=1 --fit_compiles=1"
  fi
  python -m genesis_jax.train --dry_run $DRY_ARGS --json "$OUT/dry_run_$BACKEND.json"
else
  echo "(ml_collections not importable: dry run skipped; carry its wheel, see the device tool's README)"
fi
