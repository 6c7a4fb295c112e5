#!/usr/bin/env bash
# The stage runner on real NVIDIA GPUs: the mock pipeline (placement, watch, reclaim), a stage
# that leaves an orphan, a batch spread over every GPU, and the runner benchmark.
# Run on the GPU machine from the repository root, with a release build in target/release:
#   bash scripts/gpu/runner.sh [OUTPUT_DIR]
set -u
B=${BATON:-$PWD/target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
WORK=$(mktemp -d)
export BATON_STATE_DIR=$WORK/state PYTHONUNBUFFERED=1
mkdir -p "$OUT"
section() { printf '\n=== %s\n' "$*"; }

section "devices"
nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv
$B stats

section "mock pipeline (scenes, then voice and images side by side)"
$B run --device nvml --pipeline examples/gpu/mock.toml --topic "Cyberpunk Tokyo" --output "$WORK/out"
run=$(ls -d "$WORK"/out/*cyberpunk_tokyo | head -1)
cp "$run/run.json" "$OUT/mock-run.json"; cp "$run/report/vram.svg" "$OUT/mock-vram.svg"

section "the same run resumed: every stage verified and kept"
$B resume "$run"

section "a stage that leaves an orphan holding GPU memory"
$B run --device nvml --pipeline examples/gpu/orphan.toml --topic "orphan" --output "$WORK/out"
cp "$(ls -d "$WORK"/out/*_orphan | head -1)/run.json" "$OUT/orphan-run.json"
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv

section "batch over every GPU"
$B batch --device nvml --pipeline examples/gpu/batch.toml examples/gpu/topics.txt --output "$WORK/batch"
cp "$(ls -d "$WORK"/batch/batch_*)/report/vram.svg" "$OUT/batch-vram.svg"

section "runner benchmark (simulated GPUs, this machine's CPUs)"
$B bench runner

section "snapshot benchmark"
$B bench snapshot --iterations 500
rm -rf "$WORK"
