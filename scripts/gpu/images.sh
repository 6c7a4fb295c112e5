#!/usr/bin/env bash
# The images stage on a GPU for every family with its real shapes and random weights (written
# first by `baton bench images`): SD-Turbo and SDXL-Turbo (f16, 6 x 512x512), FLUX.1 schnell
# (bf16, 12B transformer + T5-XXL, 6 x 1024x1024; the model folder is 34 GB on disk), each
# watched from outside through NVML at 20 Hz; then the plan a 24 GB card would refuse.
# Needs a build with --features cuda in target/release. From the repository root:
#   bash scripts/gpu/images.sh [OUTPUT_DIR] [FAMILIES...]
set -u
B=${BATON:-$PWD/target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
shift || true
FAMILIES=${*:-sd-turbo sdxl-turbo flux-schnell}
WORK=${WORK:-$(mktemp -d)}
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mkdir -p "$OUT"
section() { printf '\n=== %s\n' "$*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

for family in $FAMILIES; do
    size=512
    [[ $family == flux-* ]] && size=1024
    section "$family: 6 scenes at ${size}x${size}"
    $B watch --interval 50ms --jsonl "$OUT/watch-$family.jsonl" >/dev/null 2>&1 &
    watcher=$!
    sleep 0.5
    /usr/bin/time -f "wall %e s, host peak RSS %M KiB" \
        $B bench images --family "$family" --scenes 6 --size $size --dir "$WORK/$family" --compute cuda 2>&1 \
        | grep -v " INFO "
    sleep 0.5
    kill $watcher
    cp "$WORK/$family/run/3_images/images.json" "$OUT/images-$family.json"
    cp "$WORK/$family/run/3_images/scene_01.png" "$OUT/$family-scene_01.png"
    python3 - "$OUT/watch-$family.jsonl" <<'PY'
import json, sys
used = [json.loads(l)["devices"][0]["used"] for l in open(sys.argv[1])]
print(f"NVML from outside: {len(used)} samples, before {used[0]/2**30:.2f} GiB, "
      f"highest {max(used)/2**30:.2f} GiB, after {used[-1]/2**30:.2f} GiB")
PY
    if [[ $family == flux-* ]]; then
        section "$family on a 24 GB card: --max-vram 23GiB"
        $B images --input "$WORK/$family/run/1_scripts/benchmark_scenes.json" --run-dir "$WORK/refused" \
            --model "$(ls -d "$WORK/$family"/*-random-*/)" --family "$family" --compute cuda --max-vram 23GiB 2>&1 | tail -6
        echo "exit ${PIPESTATUS[0]}"
    fi
    du -sh "$WORK/$family"/*-random-*/ | sed 's/^/model folder: /'
    rm -rf "$WORK/$family"
done
