#!/usr/bin/env bash
# A PyTorch stage's peak with baton in the host's PID namespace, and with baton in a PID
# namespace of its own (`unshare --pid --fork --mount-proc`), where, as in a container, NVML
# reports PIDs that this namespace's /proc has no process for. Also the interrupt path on a
# real GPU: SIGINT to baton while the stage holds memory.
# Needs a release build in target/release and python3 with torch. From the repository root:
#   bash scripts/gpu/namespace.sh [OUTPUT_DIR]
set -u
B=${BATON:-$PWD/target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
WORK=$(mktemp -d)
export BATON_STATE_DIR=$WORK/state
mkdir -p "$OUT"
section() { printf '\n=== %s\n' "$*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
cat > "$WORK/p.toml" <<'TOML'
[[stage]]
name = "torch"
command = ["python3", "-c", "import torch, time; x = torch.empty(4 << 30, dtype=torch.uint8, device='cuda'); x.fill_(1); torch.cuda.synchronize(); print('holding', flush=True); time.sleep(3)"]
memory = "6GiB"
TOML
peaks() {
    python3 - "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for s in m["stages"]:
    for a in s["attempts"]:
        print(f"  {s['name']} attempt {a['number']}: {s['state']}, peak {a['peak_bytes']/2**30:.2f} GiB, reclaim {a['reclaim'] and a['reclaim']['verified']}, warnings {a.get('warnings')}")
print(f"  run: {m['state']}")
PY
}
section "baton in the host's PID namespace"
$B run --device gpu --pipeline "$WORK/p.toml" --topic host --output "$WORK/host" 2>&1 | grep -v " INFO "
peaks "$(ls -d "$WORK"/host/*/)run.json"

section "baton in a PID namespace of its own"
if unshare --pid --fork --mount-proc true 2>/dev/null; then
    unshare --pid --fork --mount-proc $B run --device gpu --pipeline "$WORK/p.toml" --topic ns --output "$WORK/ns" 2>&1 | grep -v " INFO "
    peaks "$(ls -d "$WORK"/ns/*/)run.json"
else
    echo "unshare --pid --fork --mount-proc is not allowed here: $(unshare --pid --fork --mount-proc true 2>&1)"
fi

section "SIGINT to baton while the stage holds 4 GiB"
$B run --device gpu --pipeline "$WORK/p.toml" --topic interrupted --output "$WORK/int" > "$WORK/int.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -qx holding "$WORK"/int/*/logs/torch.log 2>/dev/null && break; sleep 0.1; done
nvidia-smi --query-gpu=memory.used --format=csv,noheader
kill -INT $pid; wait $pid; echo "exit code $?"
grep -v " INFO " "$WORK/int.log" | tail -6
nvidia-smi --query-gpu=memory.used --format=csv,noheader
peaks "$(ls -d "$WORK"/int/*/)run.json"
section "kill -9 of baton while the stage's shell holds a PyTorch grandchild of 4 GiB"
cat > "$WORK/hold.py" <<'PY'
import time, torch
x = torch.empty(4 << 30, dtype=torch.uint8, device="cuda")
x.fill_(1)
torch.cuda.synchronize()
print("holding", flush=True)
time.sleep(60)
PY
cat > "$WORK/family.toml" <<'TOML'
[[stage]]
name = "family"
command = ["sh", "-c", "sh -c 'python3 {pipeline_dir}/hold.py' & wait"]
memory = "6GiB"
TOML
$B run --device gpu --pipeline "$WORK/family.toml" --topic family --output "$WORK/family" > "$WORK/family.log" 2>&1 &
pid=$!
for _ in $(seq 150); do grep -qx holding "$WORK"/family/*/logs/family.log 2>/dev/null && break; sleep 0.1; done
echo "before: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader)"
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader
kill -9 $pid; t0=$(date +%s.%N)
while :; do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)
    now=$(date +%s.%N)
    if [ "$used" -lt 100 ]; then echo "back to ${used} MiB $(python3 -c "print(f'{($now - $t0)*1000:.0f}')") ms after kill -9"; break; fi
    if python3 -c "import sys; sys.exit(0 if $now - $t0 > 5 else 1)"; then echo "still ${used} MiB 5 s after kill -9"; break; fi
done
sleep 0.5
echo "python3 and sh processes 0.5 s later (Z: a zombie, dead and waiting to be reaped):"
ps -eo stat,pid,ppid,pgid,comm | awk 'NR == 1 || $5 == "python3" || $5 == "sh"' || true
rm -rf "$WORK"
