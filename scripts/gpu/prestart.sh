#!/usr/bin/env bash
# Issue #24's figures on a GPU: what starting the next stage ahead (prestart) saves.
#   1. `baton bench switch` with 4 GiB mock models, with prestart and with BATON_PRESTART=0:
#      the processes mode's switch (first model released -> second resident) against the
#      in-process switch, then `baton demo switch --mode processes`'s table;
#   2. the whole content pipeline (scripts/gpu/pipeline.sh: processes and monolithic), with
#      prestart and with BATON_PRESTART=0, NVML watched from outside.
# Needs a cuda build in target/release and MODEL (the SmolLM2 GGUF) as pipeline.sh does. From
# the repository root:
#   MODEL=/path/SmolLM2-135M-Instruct.Q4_1.gguf bash scripts/gpu/prestart.sh [OUTPUT_DIR] [PART]
# PART: switch (1, no model needed), pipeline (2) or all (the default).
set -u
B=${BATON:-$PWD/target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
PART=${2:-all}
want() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
want switch && for prestart in 1 0; do
    printf '\n=== baton bench switch, BATON_PRESTART=%s\n' "$prestart"
    BATON_PRESTART=$prestart $B bench switch --size 4GiB --device gpu --repeat 7 \
        --json "$OUT/switch-prestart-$prestart.json" 2>&1 | tail -12
done
if want switch; then
    printf '\n=== baton demo switch --mode processes\n'
    $B demo switch --mode processes --size 4GiB --device gpu 2>&1 | grep -v " INFO "
fi
want pipeline && for prestart in 1 0; do
    printf '\n=== the content pipeline, BATON_PRESTART=%s\n' "$prestart"
    BATON_PRESTART=$prestart bash scripts/gpu/pipeline.sh "$OUT/pipeline-prestart-$prestart" 2>&1 |
        grep -E "===|total|STAGE|prepared|succeeded|failed|peak|reclaim" | head -40
done
