#!/usr/bin/env bash
# `baton scenes` on a real GPU: SmolLM2 from a model file at $MODEL, on the GPU and on the CPU of
# the same machine, then as a stage of `baton run`, watched and reclaimed from outside.
# Needs a build with --features cuda in target/release. From the repository root:
#   MODEL=/path/SmolLM2-135M-Instruct.Q4_1.gguf bash scripts/gpu/scenes.sh [OUTPUT_DIR]
set -u
B=${BATON:-$PWD/target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
WORK=$(mktemp -d)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export BATON_STATE_DIR=$WORK/state
mkdir -p "$OUT"
section() { printf '\n=== %s\n' "$*"; }

section "on the GPU"
$B scenes --topic "Cyberpunk Tokyo" --model "$MODEL" --compute cuda --output "$WORK/gpu"
section "on the CPU of the same machine"
$B scenes --topic "Cyberpunk Tokyo" --model "$MODEL" --compute cpu --output "$WORK/cpu"
cmp <(python3 -c "import json,glob;print(json.load(open(glob.glob('$WORK/gpu/*/1_scripts/*.json')[0]))['scenes'][0]['narration'])") \
    <(python3 -c "import json,glob;print(json.load(open(glob.glob('$WORK/cpu/*/1_scripts/*.json')[0]))['scenes'][0]['narration'])") \
  && echo "GPU and CPU wrote the same first narration" || echo "GPU and CPU storyboards differ (float rounding changes sampling)"
cp "$(ls "$WORK"/gpu/*/1_scripts/*.json | head -1)" "$OUT/scenes-gpu.json"

section "as a stage of baton run, watched through NVML"
cat > "$WORK/pipeline.toml" <<TOML
name = "scenes-on-gpu"
[[stage]]
name = "scenes"
command = ["{baton}", "scenes", "--topic", "{topic}", "--model", "$MODEL", "--compute", "cuda", "--run-dir", "{run_dir}"]
outputs = ["1_scripts/{slug}_scenes.json"]
memory = "learn"
memory_initial = "2GiB"
TOML
$B run --device nvml --pipeline "$WORK/pipeline.toml" --topic "Cyberpunk Tokyo" --output "$WORK/run"
cp "$(ls -d "$WORK"/run/*/ | head -1)/run.json" "$OUT/scenes-run.json"
rm -rf "$WORK"
