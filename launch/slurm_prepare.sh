#!/usr/bin/env bash
# Prepare a cube store on a SLURM cluster: a job array of SHARDS tasks (task I runs
# prepare --shard I/SHARDS with all its CPUs as workers), then a finalize job that starts
# when every task has succeeded (afterok) and commits the store.
#   launch/slurm_prepare.sh 16 /shared/cubes.zarr /data/archive --filter foreground
# STORE must be on storage every node sees (or a bucket URL). A task that fails or is
# killed keeps what it finished: resubmit just it (sbatch --array=I launch/slurm_prepare.sbatch
# 16 /shared/cubes.zarr /data/archive ...) and, once it succeeds, the finalize job
# (sbatch launch/slurm_prepare.sbatch finalize /shared/cubes.zarr). Size each task in
# launch/slurm_prepare.sbatch (CPUs, memory: 4 GiB per worker holds a full-size CT).
set -euo pipefail
SHARDS="${1:?usage: launch/slurm_prepare.sh SHARDS STORE INPUT... [prepare flags...]}"
STORE="${2:?usage: launch/slurm_prepare.sh SHARDS STORE INPUT... [prepare flags...]}"
shift 2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
array=$(sbatch --parsable --array="0-$((SHARDS - 1))" "$HERE/slurm_prepare.sbatch" "$SHARDS" "$STORE" "$@")
array="${array%%;*}"  # --parsable: "jobid" or "jobid;cluster"
finalize=$(sbatch --parsable --dependency="afterok:$array" "$HERE/slurm_prepare.sbatch" finalize "$STORE")
echo "prepare: job array $array ($SHARDS shards), then finalize job ${finalize%%;*}"
