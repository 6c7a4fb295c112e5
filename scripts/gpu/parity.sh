#!/usr/bin/env bash
# Parity of baton's images stage with diffusers/transformers, and of its Parler-TTS with
# parler-tts, on the GPU machine, for each family named (default: sd-turbo sdxl-turbo
# flux-schnell:512 parler-mini).
#
# An image family: writes the family's model with random weights of its real shapes (`baton
# bench images`, with the repository's config files), draws two scenes with `baton images
# --dump`, then runs scripts/gpu/parity.py, which feeds the reference each component's own
# inputs from the dump and runs the reference pipeline from the same noise.
#
# parler-mini (or parler-tiny): writes Parler-TTS mini's shapes with random weights (`baton bench
# voice`), speaks two clips greedily with `baton voice --engine parler --greedy --frames N
# --dump` (N = 100 unless given), then runs scripts/gpu/parity_voice.py: tokens, T5, every
# step's logits with the decoder fed baton's codes, and parler-tts' own greedy generate().
#
# Tables are appended to $OUT/parity.md (or ./parity.md). Without a GPU, baton and the reference
# both compute on the CPU (in f32).
#
# Needs: target/release/baton and baton-stages (a cuda build), python3 with torch and
# transformers, and diffusers: carried as wheels in .whl/ (diffusers, importlib_metadata) and
# installed here. parler-tts pins transformers 4.46.1: it and its wheels (parler_tts,
# transformers, tokenizers, huggingface_hub) travel in .whl/parler/ and are installed apart, for
# the voice's reference only. Each model is deleted after its family's run (FLUX's is 32 GB; the
# disk is 64 GB).
#
#   scripts/gpu/parity.sh [FAMILY[:SIZE[:STEPS]] | parler-SIZE[:FRAMES[:f32]] ...]
#
# parler-mini:100:f32 computes in f32 on the GPU too (`baton voice --f32`, and the reference in
# the same dtype): with random weights, bf16's rounding through T5's 24 layers moves baton and
# the reference each about 50% away from f32, so only f32 shows whether they compute the same.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -d .whl ] && ! python3 -c "import diffusers" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
parler_site=/tmp/site-parler
if [ -d .whl/parler ] && [ ! -d $parler_site ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target $parler_site .whl/parler/*.whl
fi
out=${OUT:-.}
md=$out/parity.md
work=${PARITY_DIR:-/tmp/parity}
baton=target/release/baton
[ $# -gt 0 ] || set -- sd-turbo sdxl-turbo flux-schnell:512 parler-mini
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null |
    tee -a "$md" || echo "no GPU: $(nproc) CPU cores" | tee -a "$md"

voice_parity() {
    local family=$1 frames=${2:-100} dtype=${3:-}
    local size=${family#parler-} dir=$work/$1
    local f32=()
    [ "$dtype" = f32 ] && f32=(--f32)
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "== $family, $frames frames${dtype:+, $dtype} ($(date +%T))"
    "$baton" bench voice --size "$size" --scenes 2 --dir "$dir" >"$dir/bench.log" 2>&1 ||
        { tail -20 "$dir/bench.log"; exit 1; }
    local model=$dir/parler-$size-random run=$dir/run-parity
    mkdir -p "$run/1_scripts"
    cp "$dir/run/1_scripts/benchmark_scenes.json" "$run/1_scripts/"
    "$baton" voice --input "$run/1_scripts/benchmark_scenes.json" --run-dir "$run" \
        --engine parler --voice-model "$model" --greedy --frames "$frames" \
        "${f32[@]}" --dump "$dir/dump" 2>&1 | tail -3
    echo "   reference ($(date +%T))"
    PYTHONPATH=$parler_site PYTHONUNBUFFERED=1 python3 scripts/gpu/parity_voice.py \
        --model "$model" --dump "$dir/dump" --md "$md" 2>&1 |
        grep -v -e "overwritten by shared" -e "^  " -e "^[{}]" -e "Flash attention" -e "attention mask"
    rm -rf "$model"
}

for spec in "$@"; do
    if [[ $spec == parler-* ]]; then
        IFS=: read -r family frames dtype <<<"$spec"
        voice_parity "$family" "${frames:-}" "${dtype:-}"
        continue
    fi
    IFS=: read -r family size steps <<<"$spec"
    size=${size:-512}
    steps_arg=()
    [ -n "${steps:-}" ] && steps_arg=(--steps "$steps")
    dir=$work/$family
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "== $family at ${size}x$size ($(date +%T))"
    "$baton" bench images --family "$family" --scenes 2 --size "$size" --dir "$dir" \
        "${steps_arg[@]}" >"$dir/bench.log" 2>&1 || { tail -20 "$dir/bench.log"; exit 1; }
    model=$(ls -d "$dir/$family"-random-*)
    run=$dir/run-parity
    mkdir -p "$run/1_scripts"
    cp "$dir/run-auto/1_scripts/benchmark_scenes.json" "$run/1_scripts/"
    "$baton" images --input "$run/1_scripts/benchmark_scenes.json" --run-dir "$run" \
        --model "$model" --family "$family" --width "$size" --height "$size" \
        "${steps_arg[@]}" --dump "$dir/dump" 2>&1 | tail -6
    echo "   reference ($(date +%T))"
    PYTHONUNBUFFERED=1 python3 scripts/gpu/parity.py --model "$model" --family "$family" \
        --run "$run" --dump "$dir/dump" --md "$md" 2>&1 |
        grep -v -e "kept in float32" -e "scale_model_input" -e "requires torchvision"
    rm -rf "$model"
done
