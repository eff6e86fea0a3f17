#!/usr/bin/env bash
# TPU pod slice: the same command on every worker; jax.distributed.initialize() finds the
# other workers itself on TPU VMs.
#   launch/tpu_pod.sh TPU_NAME ZONE --config.data.store=/mnt/data/cubes.zarr --workdir=/mnt/shared/runs/pod
# Set up each worker first (once): the repository at ~/genesis-jax and
#   pip install -e ~/genesis-jax 'jax[tpu]'
# Paths are local filesystem paths: the cube store must be readable on every worker (a
# copy on each, or a shared mount such as gcsfuse), and the workdir must be one directory
# that all workers see, since checkpoints are written collectively.
set -euo pipefail
TPU="${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE [train flags...]}"
ZONE="${2:?usage: launch/tpu_pod.sh TPU_NAME ZONE [train flags...]}"
shift 2
printf -v ARGS '%q ' "$@"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command \
  "cd ~/genesis-jax && python -m genesis_jax.train --config=multi_device --distributed $ARGS"
