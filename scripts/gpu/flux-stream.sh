#!/usr/bin/env bash
# FLUX.1 on a 24 GB budget (issue #17): the transformer resident (no budget) and streamed from
# host memory (through pinned staging buffers) under --max-vram, side by side in one process
# (time per image, peaks, the pictures compared pixel by pixel), then the streamed run alone watched from outside through
# NVML at 20 Hz (the CUDA context counted) under each budget. Real shapes, random bf16 weights
# (written first by `baton bench images`: 32 GiB on disk).
#   bash scripts/gpu/flux-stream.sh OUT FAMILY SCENES STEPS "BUDGETS..."
# e.g. bash scripts/gpu/flux-stream.sh /tmp/out flux-schnell 6 4 "23GiB 16GiB"
set -u
B=${BATON:-$PWD/target/release/baton}
OUT=$1 FAMILY=$2 SCENES=$3 STEPS=$4 BUDGETS=$5
WORK=${WORK:-$(mktemp -d)}
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mkdir -p "$OUT"
section() { printf '\n=== %s\n' "$*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
first=${BUDGETS%% *}
section "$FAMILY: $SCENES scenes at 1024x1024, $STEPS steps: resident, then streamed within $first"
/usr/bin/time -f "wall %e s, host peak RSS %M KiB" \
    $B bench images --family "$FAMILY" --scenes "$SCENES" --size 1024 --steps "$STEPS" \
    --dir "$WORK" --compute cuda --max-vram "$first" 2>&1 | grep -v " INFO "
for budget in $BUDGETS; do
    section "$FAMILY streamed within $budget, alone, NVML from outside"
    $B watch --interval 50ms --jsonl "$OUT/watch-$FAMILY-$budget.jsonl" >/dev/null 2>&1 &
    watcher=$!
    sleep 0.5
    /usr/bin/time -f "wall %e s, host peak RSS %M KiB" \
        $B bench images --family "$FAMILY" --scenes "$SCENES" --size 1024 --steps "$STEPS" \
        --dir "$WORK" --compute cuda --max-vram "$budget" --weights streamed 2>&1 \
        | grep -v " INFO " | grep -v "^  scene"
    sleep 0.5
    kill $watcher
    cp "$WORK/run-streamed/3_images/images.json" "$OUT/images-$FAMILY-$budget.json"
    python3 - "$OUT/watch-$FAMILY-$budget.jsonl" "$budget" <<'PY'
import json, sys
used = [json.loads(l)["devices"][0]["used"] for l in open(sys.argv[1])]
print(f"NVML from outside: {len(used)} samples, before {used[0]/2**30:.2f} GiB, "
      f"highest {max(used)/2**30:.2f} GiB (budget {sys.argv[2]}), after {used[-1]/2**30:.2f} GiB")
PY
done
cp "$WORK/run-streamed/3_images/scene_01.png" "$OUT/$FAMILY-streamed-scene_01.png"
rm -rf "$WORK"
