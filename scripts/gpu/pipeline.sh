#!/usr/bin/env bash
# The whole content pipeline on a GPU, in both modes: SmolLM2 (a GGUF at $MODEL) on the GPU, the
# voice (the embedded eSpeak NG; with VOICE=parler, Parler-TTS with mini's shapes and random bf16
# weights on the GPU), and a model with SD-Turbo's real shapes and random f16 weights (written
# first by `baton bench images`). NVML is watched from outside at 20 Hz during each run.
# Needs a build with --features cuda in target/release (baton and baton-espeak). From the
# repository root:
#   MODEL=/path/SmolLM2-135M-Instruct.Q4_1.gguf [VOICE=parler] bash scripts/gpu/pipeline.sh [OUTPUT_DIR]
set -u
B=${BATON:-$PWD/target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
WORK=$(mktemp -d)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export BATON_STATE_DIR=$WORK/state BATON_SCENES_MODEL=$MODEL
export BATON_ESPEAK=$(dirname "$B")/baton-espeak
mkdir -p "$OUT"
section() { printf '\n=== %s\n' "$*"; }

section "an SD-Turbo-shaped model with random weights"
$B bench images --family sd-turbo --scenes 1 --size 512 --dir "$WORK/sd" --compute cuda | head -1
export BATON_IMAGES_MODEL=$WORK/sd/sd-turbo-random-f16 BATON_IMAGES_FAMILY=sd-turbo
if [[ ${VOICE:-espeak} == parler ]]; then
    section "a Parler-TTS mini-shaped model with random weights"
    $B bench voice --size mini --scenes 1 --dir "$WORK/voice" --compute cuda | head -1
    export BATON_VOICE_ENGINE=parler BATON_VOICE_MODEL=$WORK/voice/parler-mini-random
fi

for mode in processes monolithic; do
    section "baton run --mode $mode"
    $B watch --interval 50ms --jsonl "$OUT/watch-$mode.jsonl" >/dev/null 2>&1 &
    watcher=$!
    sleep 0.5
    $B run --mode $mode --device nvml --topic "Cyberpunk Tokyo" --output "$WORK/$mode" 2>&1 \
        | grep -v " INFO " | tail -16
    sleep 0.5
    kill $watcher
    run=$(ls -d "$WORK/$mode"/*/ | head -1)
    ls "$run"/1_scripts "$run"/2_audio "$run"/3_images | tr '\n' ' '; echo
    python3 - "$OUT/watch-$mode.jsonl" <<'PY'
import json, sys
used = [json.loads(l)["devices"][0]["used"] for l in open(sys.argv[1])]
print(f"NVML from outside: {len(used)} samples, before {used[0]/2**30:.2f} GiB, "
      f"highest {max(used)/2**30:.2f} GiB, after {used[-1]/2**30:.2f} GiB")
PY
done
run=$(ls -d "$WORK/processes"/*/ | head -1)
cp "$run/run.json" "$OUT/pipeline-run.json"
cp "$run/report/vram.svg" "$OUT/pipeline-vram.svg" 2>/dev/null
cp "$(ls -d "$WORK/monolithic"/*/ | head -1)/monolithic.json" "$OUT/pipeline-monolithic.json"
rm -rf "$WORK"
