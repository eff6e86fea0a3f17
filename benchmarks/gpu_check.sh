#!/usr/bin/env bash
# All GPU checks in one run (< 5 minutes on one H100/H200). Used on the lent device machine:
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
else
  echo "no GPU: running the CPU-sized variant of the checks"
  BATCHES="6 64"; REF=5
fi

echo "== 1. Genesis deformations: genesis_batch cubes/s vs the NumPy reference (issue 2; goal >= 200k cubes/s on one H100)"
python benchmarks/deform_throughput.py --batch-sizes $BATCHES --reference-cubes $REF --stages \
  --json "$OUT/deform_throughput_$(python -c 'import jax; print(jax.default_backend())').json"
