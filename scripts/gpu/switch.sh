#!/usr/bin/env bash
# The switch demo on a real GPU, and baton against PyTorch, in one command. Needs a build with
# `--features cuda` in target/release and python3 with torch. From the repository root:
#   bash scripts/gpu/switch.sh [OUTPUT_DIR] [REPEAT]
set -u
B=${BATON:-target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
REPEAT=${2:-5}
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mkdir -p "$OUT"
section() { printf '\n=== %s\n' "$*"; }

section "baton demo switch --mode both"
$B demo switch --mode both
echo "exit status $?"

section "the verdict with a leak injected on purpose (must fail)"
$B demo switch --mode in-process --size 1GiB --inject-leak 2>&1 | tail -3

section "bad sizes"
$B demo switch --size 0; $B demo switch --size 100000GiB

section "baton bench switch (repeat $REPEAT)"
$B bench switch --repeat "$REPEAT" --json "$OUT/switch-baton.json"

section "PyTorch baseline (repeat $REPEAT)"
python3 bench/pytorch_switch.py --repeat "$REPEAT" --json "$OUT/switch-pytorch.json"

section "comparison"
python3 - "$OUT/switch-baton.json" "$OUT/switch-pytorch.json" <<'PY'
import json, statistics, sys
b, t = (json.load(open(p)) for p in sys.argv[1:3])
med = lambda d, mode, key: statistics.median(d["modes"][mode][key])
GIB, MIB = 2**30, 2**20
rows = [
    ("process-mode switch", med(b, "processes", "switch_seconds") * 1000, med(t, "processes", "switch_seconds") * 1000, "ms"),
    ("in-process switch", med(b, "in-process", "switch_seconds") * 1000, med(t, "in-process", "switch_seconds") * 1000, "ms"),
    ("in-process left after release", med(b, "in-process", "left_after_release") / MIB, med(t, "in-process", "left_after_release") / MIB, "MiB"),
    ("processes left after release", med(b, "processes", "left_after_release") / MIB, med(t, "processes", "left_after_release") / MIB, "MiB"),
]
print(f"{'measure':<32} {'baton':>12} {'pytorch':>12}")
for name, x, y, unit in rows:
    print(f"{name:<32} {x:>9.1f} {unit:<3}{y:>9.1f} {unit}")
ratio = med(b, "processes", "switch_seconds") / med(t, "processes", "switch_seconds")
print(f"\ntarget: process-mode switch at most 1/10 of PyTorch's: {ratio:.3f} ({'met' if ratio <= 0.1 else 'MISSED'})")
left = med(b, "in-process", "left_after_release")
print(f"target: in-process holds nothing beyond its CUDA context after release: {left / MIB:.1f} MiB "
      f"beyond the context (PyTorch: {med(t, 'in-process', 'left_after_release') / GIB:.2f} GiB context included, "
      f"{med(t, 'in-process', 'left_beyond_context') / MIB:.1f} MiB beyond its context) ({'met' if left <= 64 * MIB else 'MISSED'})")
sw = med(b, "in-process", "switch_seconds") * 1000
print(f"target: in-process switch of the models under 50 ms: {sw:.1f} ms ({'met' if sw < 50 else 'MISSED'})")
PY
