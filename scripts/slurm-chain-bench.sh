#!/usr/bin/env bash
# Which way should a run's stages reach Slurm (issue #21): each submitted when the one before it
# has ended (what baton does: `sbatch`, then `scontrol show job` every 250 ms), or all at once
# with `--dependency=afterok`? Times a chain of STAGES jobs of WORK seconds each, REPEAT times
# each way, on the cluster `scripts/slurm-local.sh up` started, and prints the overhead: the
# chain's time from the first submission to the last job's end, less the work.
#
#   STAGES=3 WORK=1 REPEAT=5 bash scripts/slurm-chain-bench.sh
set -euo pipefail
stages=${STAGES:-3}
work=${WORK:-1}
repeat=${REPEAT:-5}
now() { date +%s.%N; }
state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
wait_done() {
    local poll=$2
    while :; do
        case $(state "$1") in
            COMPLETED) return 0 ;;
            FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) echo "job $1 failed" >&2; return 1 ;;
        esac
        sleep "$poll"
    done
}
submit() { sbatch --parsable --job-name=chain-bench --output=/dev/null "$@" --wrap "sleep $work"; }

ready() {
    local job
    for _ in $(seq 1 "$stages"); do
        job=$(submit)
        wait_done "$job" 0.25
    done
}
afterok() {
    local job
    job=$(submit)
    for _ in $(seq 2 "$stages"); do
        job=$(submit --dependency=afterok:"$job")
    done
    wait_done "$job" 0.05
}

printf '%s jobs of %s s in a chain, %s times each way, on %s\n' "$stages" "$work" "$repeat" "$(sinfo -h -o %N | head -1)"
printf '%-34s %s\n' "WAY" "OVERHEAD s (chain time less the work), each run"
for way in ready afterok; do
    runs=()
    for _ in $(seq 1 "$repeat"); do
        start=$(now)
        $way
        runs+=("$(echo "$(now) - $start - $stages * $work" | bc -l | xargs printf '%.2f')")
    done
    case $way in
        ready) label="submitted when ready (baton)" ;;
        afterok) label="all at once, --dependency=afterok" ;;
    esac
    printf '%-34s %s\n' "$label" "${runs[*]}"
done
