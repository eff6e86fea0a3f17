#!/usr/bin/env bash
# Prepare a cube store on every host of a TPU pod slice: host I of N (from the TPU VM's
# metadata) runs prepare --shard I/N with all its cores as workers; when every host has
# finished, host 0 commits the store (--finalize).
#   launch/tpu_pod_prepare.sh TPU_NAME ZONE gs://bucket/cubes.zarr /mnt/data/archive --filter foreground
# STORE must be one place every host writes: a bucket URL, or a shared mount. A host that
# fails stops the script before finalize; what every host finished is kept: run the same
# command again and each shard goes on from there.
set -euo pipefail
TPU="${1:?usage: launch/tpu_pod_prepare.sh TPU_NAME ZONE STORE INPUT... [prepare flags...]}"
ZONE="${2:?usage: launch/tpu_pod_prepare.sh TPU_NAME ZONE STORE INPUT... [prepare flags...]}"
STORE="${3:?usage: launch/tpu_pod_prepare.sh TPU_NAME ZONE STORE INPUT... [prepare flags...]}"
shift 3
printf -v ARGS '%q ' "$@"
printf -v OUT '%q' "$STORE"
META='http://metadata.google.internal/computeMetadata/v1/instance/attributes'
SHARD="I=\$(curl -sf -H Metadata-Flavor:Google $META/agent-worker-number); \
N=\$(curl -sf -H Metadata-Flavor:Google $META/worker-network-endpoints | tr ',' '\n' | grep -c .)"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command \
  "cd ~/genesis-jax && $SHARD && python -m genesis_jax.prepare $ARGS --out $OUT --shard \$I/\$N"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=0 --command \
  "cd ~/genesis-jax && python -m genesis_jax.prepare --finalize --out $OUT"
