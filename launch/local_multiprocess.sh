#!/usr/bin/env bash
# N cooperating processes on this machine, each with its own devices, as one data-parallel
# run (the multi-host code path, testable on one CPU box):
#   launch/local_multiprocess.sh 2 --workdir=runs/mp --config.total_steps=10
# Each process gets DEVICES_PER_PROCESS simulated CPU devices unless XLA_FLAGS is set;
# PYTHON picks the interpreter (default: python on PATH).
# Logs: WORKDIR-less runs write to ./runs; per-process output goes to logs/process_<i>.log.
set -euo pipefail
N="${1:?usage: launch/local_multiprocess.sh NUM_PROCESSES [train flags...]}"
shift
PORT="${PORT:-$((20000 + RANDOM % 20000))}"
LOGS="${LOGS:-logs}"
mkdir -p "$LOGS"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4}}"
pids=()
for ((i = 0; i < N; i++)); do
  "${PYTHON:-python}" -m genesis_jax.train --distributed --coordinator_address="127.0.0.1:$PORT" \
    --num_processes="$N" --process_id="$i" "$@" > "$LOGS/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 3 "$LOGS/process_0.log"
exit "$status"
