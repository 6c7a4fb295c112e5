#!/usr/bin/env bash
# The supervisor/stage-program split on a real GPU: what each program needs to load, how long
# each takes to start (with and without the CUDA libraries on the loader path), the runner
# benchmark with the cuda build's supervisor, the switch demo handed from `baton` to a cuda
# `baton-stages`, and warm.sh (the content catalog's weights probe warming the built-in images
# stage's model while the stage before it runs).
# Needs a build with --features cuda in target/release (baton, baton-stages, baton-espeak).
# From the repository root:
#   bash scripts/gpu/architecture.sh [OUTPUT_DIR]
set -u
B=${BATON:-$PWD/target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
CUDA_LIB=/usr/local/cuda-13.0/targets/x86_64-linux/lib
export BATON_STATE_DIR=$(mktemp -d)
mkdir -p "$OUT"
section() { printf '\n=== %s\n' "$*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

section "what each program needs to load (ldd, CUDA libraries only)"
for p in baton baton-stages; do
    echo "$p:"
    LD_LIBRARY_PATH=$CUDA_LIB ldd "$(dirname "$B")/$p" | grep -E "libcu|nvrtc|nvidia|not found" \
        | sed 's/ (0x[0-9a-f]*)//' || echo "    (none)"
done

section "start-up, whole processes"
LD_LIBRARY_PATH=$CUDA_LIB $B bench startup --repeat 30

section "baton stats with nothing on the loader path"
env -u LD_LIBRARY_PATH $B stats --top 3

section "runner benchmark (the cuda build's supervisor)"
LD_LIBRARY_PATH=$CUDA_LIB $B bench runner

section "demo switch, handed from baton to baton-stages (cuda)"
LD_LIBRARY_PATH=$CUDA_LIB $B demo switch --size 4GiB

section "warm.sh: the catalog's weights probe"
bash scripts/gpu/warm.sh "$OUT"
