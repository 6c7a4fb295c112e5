#!/usr/bin/env bash
# Parity of baton's images stage with diffusers/transformers, on the GPU machine, for each
# family named (default: sd-turbo sdxl-turbo flux-schnell): writes the family's model with random
# weights of its real shapes (`baton bench images`, with the repository's config files), draws
# two scenes with `baton images --dump`, then runs scripts/gpu/parity.py, which feeds the
# reference each component's own inputs from the dump and runs the reference pipeline from the
# same noise. Tables are appended to $OUT/parity.md (or ./parity.md).
#
# Needs: target/release/baton and baton-stages (a cuda build), python3 with torch and
# transformers, and diffusers: carried as wheels in .whl/ (diffusers, importlib_metadata) and
# installed here. Each model is deleted after its family's run (FLUX's is 32 GB; the disk is
# 64 GB).
#
#   scripts/gpu/parity.sh [FAMILY[:SIZE[:STEPS]] ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -d .whl ] && ! python3 -c "import diffusers" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
out=${OUT:-.}
md=$out/parity.md
work=${PARITY_DIR:-/tmp/parity}
baton=target/release/baton
[ $# -gt 0 ] || set -- sd-turbo sdxl-turbo flux-schnell:512
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$md"
for spec in "$@"; do
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
