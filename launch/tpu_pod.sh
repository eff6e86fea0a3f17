#!/usr/bin/env bash
# TPU pod slice: the same command on every worker; jax.distributed.initialize() finds the
# other workers itself on TPU VMs.
#   launch/tpu_pod.sh TPU_NAME ZONE --config.data.store=/mnt/data/cubes.zarr --workdir=/mnt/shared/runs/pod
# Size the job before booking the slice (on any machine with libtpu, no TPU needed):
#   python -m genesis_jax.train --config=multi_device --dry_run --topology=v5e:4x4 --config.batch_size=256
# Set up each worker first (once): the repository at ~/genesis-jax and
#   pip install -e "$HOME/genesis-jax[tpu]"
# The cube store may be a bucket URL every worker reads (--config.data.store=gs://bucket/cubes.zarr)
# or a path readable on every worker; the workdir must be one directory that all workers
# see (a shared mount), since checkpoints are written collectively.
set -euo pipefail
TPU="${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE [train flags...]}"
ZONE="${2:?usage: launch/tpu_pod.sh TPU_NAME ZONE [train flags...]}"
shift 2
printf -v ARGS '%q ' "$@"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command \
  "cd ~/genesis-jax && python -m genesis_jax.train --config=multi_device --distributed $ARGS"
