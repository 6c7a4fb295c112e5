#!/usr/bin/env bash
# Checks the memory layer on a real NVIDIA GPU: `baton stats` against nvidia-smi, a PyTorch
# process seen under its PID, the snapshot benchmark, and what `baton watch` costs at 10 Hz.
# Run on the GPU machine from the repository root, with a release build in target/release:
#   bash scripts/gpu/foundation.sh [OUTPUT_DIR]
set -u
B=${BATON:-target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
mkdir -p "$OUT"
section() { printf '\n=== %s\n' "$*"; }

section "nvidia-smi"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,memory.reserved --format=csv

section "baton stats (idle)"
$B stats
$B stats --json > "$OUT/stats_idle.json"
nvidia-smi --query-gpu=memory.total,memory.used --format=csv,noheader,nounits > "$OUT/smi_idle.csv"

section "a PyTorch process holding 2 GiB"
python3 -c "import torch,time; x=torch.empty(2**31,dtype=torch.uint8,device='cuda'); x.fill_(1); torch.cuda.synchronize(); print('torch holds', flush=True); time.sleep(40)" &
TORCH=$!
for _ in $(seq 1 300); do
  nvidia-smi --query-compute-apps=pid --format=csv,noheader | grep -qw "$TORCH" && break
  sleep 0.1
done
sleep 1
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
nvidia-smi --query-gpu=memory.total,memory.used --format=csv,noheader,nounits > "$OUT/smi_torch.csv"
$B stats
$B stats --json > "$OUT/stats_torch.json"
echo "torch pid: $TORCH"

section "compare with nvidia-smi (MiB; within 1%)"
python3 - "$OUT" "$TORCH" <<'PY'
import json, sys
out, torch_pid = sys.argv[1], int(sys.argv[2])
ok = True
for tag in ("idle", "torch"):
    smi = [list(map(float, l.split(","))) for l in open(f"{out}/smi_{tag}.csv") if l.strip()]
    dev = json.load(open(f"{out}/stats_{tag}.json"))["devices"]
    for i, (total, used) in enumerate(smi):
        bt, bu = dev[i]["total"] / 2**20, dev[i]["used"] / 2**20
        dt, du = abs(bt - total) / total * 100, abs(bu - used) / max(used, 1) * 100
        good = dt <= 1 and (du <= 1 or abs(bu - used) <= 16)
        ok &= good
        print(f"{tag} gpu{i}: total smi {total:.0f} baton {bt:.0f} ({dt:.2f}%), used smi {used:.0f} baton {bu:.0f} ({du:.2f}%) {'OK' if good else 'MISMATCH'}")
rows = json.load(open(f"{out}/stats_torch.json"))["devices"][0]["processes"]
seen = [r for r in rows if r["pid"] == torch_pid]
print("torch process row:", seen)
ok &= bool(seen)
print("VERDICT:", "match" if ok else "MISMATCH")
PY

section "baton watch, plain mode, 5 readings"
$B watch --interval 100ms --ticks 5 --jsonl "$OUT/watch.jsonl"

section "baton watch at 10 Hz for 10 s: CPU cost"
python3 - "$B" <<'PY'
import resource, subprocess, sys, time
start = time.time()
subprocess.run([sys.argv[1], "watch", "--interval", "100ms", "--ticks", "100"], stdout=subprocess.DEVNULL, check=True)
wall = time.time() - start
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = ru.ru_utime + ru.ru_stime
print(f"watch 100 readings at 10 Hz: wall {wall:.2f}s, cpu {cpu:.3f}s, {cpu / wall * 100:.2f}% of a core")
PY

section "snapshot benchmark"
$B bench snapshot --iterations 500

kill $TORCH 2>/dev/null; wait $TORCH 2>/dev/null
section "after the PyTorch process exits"
sleep 0.5
$B stats
