#!/usr/bin/env bash
# What the runner's warming saves: a two-stage pipeline (a 6 s CPU stage that writes the
# storyboard, then the built-in images stage on a model with SD-Turbo's shapes, 2.5 GB) run with
# the model's files dropped from the page cache first, once with warming off
# (BATON_WARM_AHEAD=0) and once on. The images stage's loads (GB/s) come from run.json.
# Needs a build with --features cuda in target/release. From the repository root:
#   bash scripts/gpu/warm.sh [OUTPUT_DIR]
set -u
B=${BATON:-$PWD/target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
WORK=${WORK:-$(mktemp -d)}
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export BATON_STATE_DIR=$WORK/state
mkdir -p "$OUT"
section() { printf '\n=== %s\n' "$*"; }
nvidia-smi --query-gpu=name --format=csv,noheader

$B bench images --family sd-turbo --scenes 1 --size 512 --dir "$WORK/sd" --compute cuda | head -1
export BATON_IMAGES_MODEL=$WORK/sd/sd-turbo-random-f16 BATON_IMAGES_FAMILY=sd-turbo
cp "$WORK/sd/run/1_scripts/benchmark_scenes.json" "$WORK/scenes.json"
cat > "$WORK/pipeline.toml" <<TOML
name = "warm-ahead"
[[stage]]
name = "storyboard"
command = ["sh", "-c", "sleep 6 && mkdir -p 1_scripts && cp $WORK/scenes.json 1_scripts/{slug}_scenes.json"]
outputs = ["1_scripts/{slug}_scenes.json"]
device = "cpu"
memory = "64MiB"
[[stage]]
name = "images"
builtin = "images"
after = ["storyboard"]
inputs = ["1_scripts/{slug}_scenes.json"]
memory = "6GiB"
TOML
for mode in off on; do
    section "warming $mode, model dropped from the page cache first"
    $B models evict $(find "$BATON_IMAGES_MODEL" -name '*.safetensors') | sed 's/^/  /'
    if [[ $mode == off ]]; then export BATON_WARM_AHEAD=0; else unset BATON_WARM_AHEAD; fi
    $B run --pipeline "$WORK/pipeline.toml" --topic "Warm $mode" --output "$WORK/$mode" 2>&1 \
        | grep -E "warming|succeeded|total" | grep -v " INFO "
    run=$(ls -d "$WORK/$mode"/*/ | head -1)
    cp "$run/run.json" "$OUT/warm-$mode-run.json"
    python3 - "$run/run.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
st = m["stages"]
st = st if isinstance(st, list) else list(st.values())
for s in st:
    if s["name"] != "images":
        continue
    a = s["attempts"][-1]
    for l in a.get("loads", []):
        print(f"  images load {l['name']}: {l['bytes']/1e9:.2f} GB in {l['seconds']:.3f} s = {l['bytes']/1e9/max(l['seconds'],1e-9):.1f} GB/s")
PY
done
rm -rf "$WORK"
