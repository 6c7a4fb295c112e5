#!/usr/bin/env bash
# Storyboard quality on a GPU (docs/scenes.md): `baton bench scenes` over bench/topics.txt for
# SmolLM2-135M and Gemma 3 270M, the storyboards of the generator before issue #19 judged by the
# same code (`--judge`), and the monolithic 3-scene run that used to stop at the token limit.
# Needs cuda builds of baton and baton-stages in $NOW (this version) and $BEFORE (optional, an
# earlier one), the models at $SMOL and $GEMMA. From the repository root:
#   NOW=… BEFORE=… SMOL=….gguf GEMMA=….gguf bash scripts/gpu/scenes-quality.sh [OUTPUT_DIR] [PART]
# PART: before, smol, gemma, monolithic or all (the default).
set -u
OUT=${1:-${OUT:-/tmp/baton-gpu}}
PART=${2:-all}
WORK=$(mktemp -d)
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export BATON_STATE_DIR=$WORK/state
mkdir -p "$OUT"
section() { printf '\n=== %s\n' "$*"; }
want() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

if want before && [ -n "${BEFORE:-}" ]; then
    section "before: $($BEFORE/baton --version), one baton scenes per topic"
    grep -v '^#' bench/topics.txt | grep -v '^$' | while read -r topic; do
        $BEFORE/baton scenes --topic "$topic" --model "$SMOL" --compute gpu --output "$WORK/before" \
            >/dev/null 2>"$WORK/err" || echo "FAILED: $topic: $(tail -1 "$WORK/err")"
    done
    $NOW/baton bench scenes --judge "$WORK/before"
    tar -C "$WORK" -czf "$OUT/before.tgz" before
fi
if want smol; then
    section "now: SmolLM2-135M-Instruct Q4_1"
    $NOW/baton bench scenes --topics bench/topics.txt --model "$SMOL" --compute gpu --out "$WORK/smol" 2>/dev/null
    tar -C "$WORK" -czf "$OUT/smol.tgz" smol
fi
if want gemma; then
    section "now: Gemma 3 270M Q4_K_M"
    $NOW/baton bench scenes --topics bench/topics.txt --model "$GEMMA" --compute gpu --out "$WORK/gemma" 2>/dev/null
    tar -C "$WORK" -czf "$OUT/gemma.tgz" gemma
fi
if want monolithic; then
    section "monolithic, 3 scenes (the built-in pipeline; eSpeak NG voice, cards, video if ffmpeg is here)"
    BATON_SCENES=3 BATON_SCENES_MODEL=$SMOL BATON_VOICE_ENGINE=espeak $NOW/baton run --mode monolithic \
        --topic "A lighthouse keeper's last night" --output "$WORK/mono" 2>&1 | grep -v INFO | tail -14
    cp "$WORK"/mono/*/1_scripts/*_scenes.json "$OUT/monolithic-scenes.json" 2>/dev/null
fi
rm -rf "$WORK"
