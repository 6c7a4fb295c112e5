#!/usr/bin/env bash
# The voice stage's neural engine (Parler-TTS) on a GPU: a model with parler-tts-mini-v1's
# shapes and random bf16 weights (written first by `baton bench voice`), 6 scenes, watched from
# outside through NVML at 20 Hz; then the same on the machine's CPU for one scene.
# Needs a build with --features cuda in target/release. From the repository root:
#   bash scripts/gpu/voice.sh [OUTPUT_DIR]
set -u
B=${BATON:-$PWD/target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
WORK=${WORK:-$(mktemp -d)}
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mkdir -p "$OUT"
section() { printf '\n=== %s\n' "$*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

section "Parler-TTS mini shapes, random bf16, 6 scenes on the GPU"
$B watch --interval 50ms --jsonl "$OUT/watch-voice.jsonl" >/dev/null 2>&1 &
watcher=$!
sleep 0.5
/usr/bin/time -f "wall %e s, host peak RSS %M KiB" \
    $B bench voice --size mini --scenes 6 --dir "$WORK/voice" --compute cuda 2>&1 | grep -v " INFO "
sleep 0.5
kill $watcher
cp "$WORK/voice/run/2_audio/voice.json" "$OUT/voice-gpu.json"
python3 - "$OUT/watch-voice.jsonl" <<'PY'
import json, sys
used = [json.loads(l)["devices"][0]["used"] for l in open(sys.argv[1])]
print(f"NVML from outside: {len(used)} samples, before {used[0]/2**30:.2f} GiB, "
      f"highest {max(used)/2**30:.2f} GiB, after {used[-1]/2**30:.2f} GiB")
PY
du -sh "$WORK/voice/parler-mini-random" | sed 's/^/model folder: /'
rm -rf "$WORK"
