#!/usr/bin/env bash
# Issues #21 and #22 on a GPU machine:
#   1. a one-node Slurm over the machine's real GPUs (scripts/slurm-local.sh with GRES_FILES set
#      to /dev/nvidiaN, installed from the .deb files in $SLURM_DEBS), running the PyTorch mock
#      pipeline (examples/gpu/mock.toml) through `baton run --executor slurm --device nvml`, with
#      NVML read from outside at 20 Hz;
#   2. meanwhile `baton watch` in tmux (a 132x44 pane), its screen captured with `tmux
#      capture-pane` while the stages run and after.
# Needs a cuda build in target/release, python3 with torch, and tmux (TMUX_DEBS=DIR unpacks
# Debian's tmux, libevent-core and libutempter into /tmp/tmux-root when tmux is missing). From
# the repository root:
#   SLURM_DEBS=.slurm-debs TMUX_DEBS=.slurm-debs bash scripts/gpu/slurm.sh [OUTPUT_DIR]
set -u
B=${BATON:-$PWD/target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export BATON_STATE_DIR=$WORK/state
section() { printf '\n=== %s\n' "$*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if ! command -v tmux >/dev/null && [ -n "${TMUX_DEBS:-}" ]; then
    for deb in "$TMUX_DEBS"/tmux_*.deb "$TMUX_DEBS"/libevent-core-*.deb "$TMUX_DEBS"/libutempter0_*.deb; do
        dpkg -x "$deb" /tmp/tmux-root
    done
    export PATH=/tmp/tmux-root/usr/bin:$PATH
    export LD_LIBRARY_PATH=/tmp/tmux-root/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH
fi

section "a one-node Slurm over the real GPUs"
gpus=$(nvidia-smi -L | wc -l)
if [ "$gpus" = 1 ]; then files=/dev/nvidia0; else files="/dev/nvidia[0-$((gpus - 1))]"; fi
GPUS=$gpus GRES_FILES=$files CPUS=$(nproc) bash scripts/slurm-local.sh up || {
    tail -n 30 /tmp/baton-slurm/log/*.log
    exit 1
}
trap 'bash scripts/slurm-local.sh down' EXIT
scontrol show node | grep -E "NodeName|Gres|State"

capture() {
    tmux capture-pane -p -t watch >"$OUT/watch-$1.txt" 2>/dev/null &&
        echo "captured baton watch ($1): $(grep -c . "$OUT/watch-$1.txt") lines"
}
if command -v tmux >/dev/null; then
    tmux new-session -d -s watch -x 132 -y 44 \
        "env LD_LIBRARY_PATH=$LD_LIBRARY_PATH $B watch --device gpu --interval 250ms; sleep 60"
fi

section "baton run --executor slurm --device nvml --pipeline examples/gpu/mock.toml"
$B watch --device gpu --interval 50ms --jsonl "$OUT/nvml-slurm.jsonl" >/dev/null 2>&1 &
watcher=$!
sleep 0.5
$B run --executor slurm --device nvml --pipeline examples/gpu/mock.toml --topic "Cyberpunk Tokyo" \
    --output "$WORK/out" >"$WORK/run.log" 2>&1 &
run=$!
# Capture the watch while a stage holds the GPU: the first time NVML says more than 2 GiB is used.
for _ in $(seq 1 400); do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    if [ "${used:-0}" -gt 2048 ]; then
        sleep 0.6
        capture during
        break
    fi
    kill -0 $run 2>/dev/null || break
    sleep 0.1
done
wait $run
echo "baton run exited $?"
sleep 1
capture after
kill $watcher
grep -v " INFO " "$WORK/run.log" | tail -20
dir=$(ls -d "$WORK"/out/*/ | head -1)
ls "$dir/slurm"
for out in "$dir"/slurm/*.out; do
    echo "--- $(basename "$out")"
    tail -5 "$out"
done
python3 - "$dir/run.json" "$OUT/nvml-slurm.jsonl" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
for stage in run["stages"]:
    for a in stage.get("attempts", []):
        r = a.get("reclaim") or {}
        print(f'{stage["name"]}: {stage["state"]}, job {a.get("job_id")}, exit {a.get("exit_code")}, '
              f'peak {a["peak_bytes"]/2**30:.2f} GiB, reclaim verified {r.get("verified")} '
              f'in {r.get("ms", 0):.0f} ms, orphans {len(r.get("orphans", []))}, '
              f'leaked {r.get("leaked_bytes")} B')
used = [json.loads(l)["devices"][0]["used"] for l in open(sys.argv[2])]
print(f"NVML from outside: {len(used)} samples, before {used[0]/2**30:.2f} GiB, "
      f"highest {max(used)/2**30:.2f} GiB, after {used[-1]/2**30:.2f} GiB")
PY
cp "$dir/run.json" "$OUT/slurm-run.json"
tmux kill-server 2>/dev/null
rm -rf "$WORK"
