#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for baton's `--executor slurm` tests and for trying
# it by hand: Debian's slurm-wlm (22.05) and munge, the node offering 4 GPUs as GRES backed by
# fake device files, so `--gres=gpu:N` sets CUDA_VISIBLE_DEVICES as on a real cluster (baton's
# simulated GPUs take their index from it).
#
#   scripts/slurm-local.sh up      installs what is missing (apt, as root), starts munged,
#                                  slurmctld and slurmd, waits until the node is idle
#   scripts/slurm-local.sh down    stops what `up` started
#   scripts/slurm-local.sh status  the node and the queue
#
# Needs root (Slurm's daemons run as root here; munged runs as the munge user). The cluster's
# files live in $BATON_SLURM_DIR (default /tmp/baton-slurm): its config, state, spool and logs.
# GPUS (default 4) sets the GRES count; CPUS (default 32) the cores the node claims, so GPU jobs
# are not held back by this machine's real core count. GRES_FILES (e.g. /dev/nvidia0) gives the
# node real GPU device files instead of the fake ones, as on a GPU machine.
#
# SLURM_DEBS=DIR installs from .deb files in DIR instead of apt (a GPU machine with no package
# archive): each is unpacked, and its files copied only where no file is already, so nothing the
# machine has is replaced. `apt-get download slurmctld slurmd slurm-client
# slurm-wlm-basic-plugins munge libmunge2 libhwloc15 libjson-c5 liblua5.1-0 libnuma1 libyaml-0-2
# libdbus-1-3` on Debian 12 fetches them (4 MB; docs/gpu/slurm-h200.md).
set -euo pipefail
dir=${BATON_SLURM_DIR:-/tmp/baton-slurm}
gpus=${GPUS:-4}
cpus=${CPUS:-32}
host=$(hostname -s)

die() { echo "slurm-local: $*" >&2; exit 1; }

install() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are missing; run as root to install them"
    if [ -n "${SLURM_DEBS:-}" ]; then
        ls "$SLURM_DEBS"/*.deb >/dev/null 2>&1 || die "SLURM_DEBS=$SLURM_DEBS holds no .deb files"
        local unpacked
        unpacked=$(mktemp -d)
        for deb in "$SLURM_DEBS"/*.deb; do dpkg -x "$deb" "$unpacked"; done
        # On a merged-/usr system (/lib a link to usr/lib) a package's /lib goes under /usr.
        for top in lib lib64 bin sbin; do
            if [ -L /$top ] && [ -d "$unpacked/$top" ]; then
                mkdir -p "$unpacked/usr/$top"
                cp -rn "$unpacked/$top"/. "$unpacked/usr/$top"/
                rm -rf "${unpacked:?}/$top"
            fi
        done
        cp -rn "$unpacked"/. / 2>/dev/null || true
        rm -rf "$unpacked"
        # Debian names the daemons *-wlm and links them in its postinst (update-alternatives).
        for daemon in slurmctld slurmd slurmstepd; do
            [ -e /usr/sbin/$daemon ] || ln -s /usr/sbin/$daemon-wlm /usr/sbin/$daemon
        done
        ldconfig
        id munge >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin munge
        mkdir -p /etc/munge /etc/slurm
        command -v slurmctld >/dev/null || die "slurmctld is still missing after unpacking $SLURM_DEBS"
        return
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
    fi
}

up() {
    [ "$(id -u)" = 0 ] || die "run as root: Slurm's daemons run as root in this one-node setup"
    install
    down quiet
    mkdir -p "$dir"/{state,spool,log}
    # munge: a key, its socket folder, and the daemon as its own user.
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged --force
    local files=${GRES_FILES:-/dev/fakegpu[0-$((gpus - 1))]}
    if [ -z "${GRES_FILES:-}" ]; then
        for i in $(seq 0 $((gpus - 1))); do
            [ -e /dev/fakegpu$i ] || mknod /dev/fakegpu$i c 1 3
        done
    fi
    cat >"$dir/slurm.conf" <<EOF
ClusterName=baton
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,defer_batch
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=65536 Gres=gpu:$gpus State=UNKNOWN
PartitionName=baton Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$dir/gres.conf" <<EOF
AutoDetect=off
NodeName=$host Name=gpu File=$files
EOF
    # Slurm 22.05's cgroup/v2 plugin asks systemd, over D-Bus, for slurmstepd's scope. A
    # container on cgroup v2 (as the GPU machines are) has neither: slurmd then makes the scope
    # itself, under a system.slice it may have to create.
    if [ ! -S /run/dbus/system_bus_socket ] && [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
        printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\nIgnoreSystemdOnFailure=yes\n' \
            >/etc/slurm/cgroup.conf
        mkdir -p /sys/fs/cgroup/system.slice
    fi
    cp "$dir/gres.conf" /etc/slurm/gres.conf
    cp "$dir/slurm.conf" /etc/slurm/slurm.conf
    /usr/sbin/slurmctld -i
    /usr/sbin/slurmd
    for _ in $(seq 1 60); do
        state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
        case $state in
            idle*|mix*|alloc*) echo "slurm-local: node $host is $state with gpu:$gpus ($dir)"; return ;;
        esac
        sleep 0.5
    done
    tail -20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    die "the node did not become idle (state '${state:-none}')"
}

down() {
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        if [ -s "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
        fi
    done
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    pkill -x -u munge munged 2>/dev/null || true
    for _ in $(seq 1 50); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null ||
            pgrep -x -u munge munged >/dev/null || break
        sleep 0.1
    done
    [ "${1:-}" = quiet ] || echo "slurm-local: stopped"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) sinfo -N -o '%N %t %G %c'; squeue ;;
    *) die "usage: $0 up|down|status" ;;
esac
