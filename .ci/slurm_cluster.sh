#!/usr/bin/env bash
# Single-node SLURM "cluster" on this machine, for testing the Snakemake slurm
# executor profile (profiles/slurm) without a real cluster.
#
#   bash .ci/slurm_cluster.sh install   # apt-get install slurm-wlm + munge (idempotent)
#   bash .ci/slurm_cluster.sh start     # write slurm.conf, start munged/slurmctld/slurmd,
#                                       # wait for the node to be idle, run a test job
#   bash .ci/slurm_cluster.sh status    # what is running, sinfo/squeue
#   bash .ci/slurm_cluster.sh stop      # stop ONLY the daemons this script started
#   bash .ci/slurm_cluster.sh ours      # list the running daemons this script started
#
# Needs root (Debian/Ubuntu, no systemd required: daemons are started by hand).
# Everything this script creates lives in:
#   /etc/slurm/slurm.conf (+ gres.conf when GPUs are present), written only if
#       no slurmctld is already answering; an existing foreign file is kept as
#       slurm.conf.bench-bak
#   $BENCH_SLURM_STATE (default /run/bench-slurm): pid files of daemons WE started
#   $BENCH_SLURM_VAR   (default /var/lib/bench-slurm): slurmctld state, slurmd spool
#   $BENCH_SLURM_LOG   (default /var/log/bench-slurm): daemon logs
# GPUs: /dev/nvidia0.. become GRES gpu (GresTypes=gpu + gres.conf), so jobs can ask
# --gpus=N / --gres=gpu:N; BENCH_SLURM_GPU_FILES="none" (or a list of files) overrides.
# No accounting database: use `--slurm-status-command squeue` (MinJobAge=300 keeps
# finished jobs visible to squeue for 5 minutes).
set -euo pipefail
# the daemons live in /usr/sbin, which a CI or user PATH may lack
export PATH="$PATH:/usr/sbin:/sbin:/usr/bin:/bin"

STATE_DIR=${BENCH_SLURM_STATE:-/run/bench-slurm}
VAR_DIR=${BENCH_SLURM_VAR:-/var/lib/bench-slurm}
LOG_DIR=${BENCH_SLURM_LOG:-/var/log/bench-slurm}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARKER="# written by bench .ci/slurm_cluster.sh"
START_TIMEOUT=${BENCH_SLURM_START_TIMEOUT:-90}

log() { echo "[slurm_cluster] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it starts munged/slurmctld/slurmd)"
}

# pid recorded in $STATE_DIR/<name>.pid and that process is alive and is <name>
our_pid() {
    local name=$1 f=$STATE_DIR/$1.pid pid
    [[ -s $f ]] || return 1
    pid=$(tr -dc '0-9' <"$f")
    [[ -n $pid ]] || return 1
    alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
    echo "$pid"
}

# process exists and is not a zombie (a killed daemon may wait a while to be reaped)
alive() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

is_running() {
    local pid
    for pid in $(pgrep -x "$1" 2>/dev/null); do
        alive "$pid" && return 0
    done
    return 1
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
    local secs=$1 what=$2; shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then
            log "timed out after ${secs}s waiting for: $what"
            return 1
        fi
        sleep 1
    done
}

show_logs() {
    local f
    for f in "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd.log /var/log/munge/munged.log; do
        [[ -f $f ]] || continue
        log "---- last lines of $f"
        tail -n 25 "$f" >&2 || true
    done
}

# --------------------------------------------------------------------------- install
cmd_install() {
    need_root
    local pkgs=(slurm-wlm munge)
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v sbatch >/dev/null && command -v munged >/dev/null; then
        log "slurm-wlm and munge already installed ($(slurmctld -V 2>/dev/null || true))"
        return 0
    fi
    log "installing ${pkgs[*]} via apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # keep the package scripts from trying to start services themselves
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    local rc=0
    {
        apt-get update -qq &&
            apt-get install -y -qq --no-install-recommends "${pkgs[@]}" procps
    } >/tmp/bench-slurm-apt.log 2>&1 || rc=$?
    ((created_policy)) && rm -f "$policy"
    if ((rc != 0)); then
        tail -n 30 /tmp/bench-slurm-apt.log >&2
        die "apt-get failed (rc=$rc), full log: /tmp/bench-slurm-apt.log"
    fi
    log "installed: $(slurmctld -V)"
}

# --------------------------------------------------------------------------- munge
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then
        log "munged already answering"
        return 0
    fi
    local key=/etc/munge/munge.key
    install -d -o munge -g munge -m 0700 /etc/munge
    install -d -o munge -g munge -m 0711 /var/lib/munge
    install -d -o munge -g munge -m 0700 /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s $key ]]; then
        log "creating munge key $key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$key" --force
        else
            dd if=/dev/urandom bs=1 count=1024 of="$key" status=none
        fi
    fi
    chown munge:munge "$key"
    chmod 0400 "$key"
    # A dead munged may have left its socket/pid behind.
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
    log "starting munged"
    # munged daemonizes and writes its pid file; run it as the munge user.
    runuser -u munge -- /usr/sbin/munged \
        --pid-file=/run/munge/munged.pid \
        --log-file=/var/log/munge/munged.log ||
        { show_logs; die "munged failed to start"; }
    wait_for 20 "munged" munge_ok || { show_logs; die "munged not answering"; }
    cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
}

# --------------------------------------------------------------------------- conf
write_conf() {
    local host cpus line mem gres_line="" gres_types=""
    host=$(hostname -s)
    # Hardware as slurmd sees it, e.g.
    # NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
    line=$(slurmd -C | head -n 1)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$line")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")
    [[ -n $cpus && -n $mem ]] || die "cannot parse 'slurmd -C': $line"
    # never advertise more than this process may use (cgroup/affinity limits)
    local nproc_
    nproc_=$(nproc)
    ((nproc_ < cpus)) && cpus=$nproc_
    # a bit below the measured total, so the node never drains for 'Low RealMemory'
    mem=$((mem * 95 / 100))
    local topo
    if [[ $cpus -eq $(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$line") ]]; then
        topo=$(grep -o 'Boards=.* ThreadsPerCore=[0-9]*' <<<"$line")
        topo="CPUs=$cpus $topo"
    else
        topo="CPUs=$cpus"
    fi

    # GPUs: only when nvidia device files exist (declared by file, no NVML needed).
    # BENCH_SLURM_GPU_FILES="f1 f2" names them instead; "none" declares no GPU.
    local ngpu=0 files
    if [[ -n ${BENCH_SLURM_GPU_FILES:-} ]]; then
        files=$(tr ' ' '\n' <<<"$BENCH_SLURM_GPU_FILES" | grep -v '^none$' | grep . || true)
    else
        files=$(ls /dev/nvidia[0-9]* 2>/dev/null | sort -V || true)
    fi
    local gres_conf=$CONF_DIR/gres.conf
    if [[ -f $gres_conf ]]; then
        if grep -qF "$MARKER" "$gres_conf"; then
            rm -f "$gres_conf"
        else
            log "moving existing foreign $gres_conf to $gres_conf.bench-bak"
            mv "$gres_conf" "$gres_conf.bench-bak"
        fi
    fi
    if [[ -n $files ]]; then
        ngpu=$(wc -l <<<"$files")
        gres_types="GresTypes=gpu"
        gres_line="Gres=gpu:$ngpu"
        {
            echo "$MARKER"
            local f
            for f in $files; do echo "NodeName=$host Name=gpu File=$f"; done
        } >"$gres_conf"
    fi

    if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        log "keeping existing foreign $CONF as $CONF.bench-bak"
        cp -p "$CONF" "$CONF.bench-bak"
    fi
    cat >"$CONF" <<EOF
$MARKER on $(date -u +%FT%TZ)
# Single node cluster for local tests. No accounting database.
ClusterName=benchlocal
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# keep finished jobs visible to squeue for 5 min (snakemake --slurm-status-command squeue)
MinJobAge=300
ReturnToService=2
SlurmctldTimeout=60
SlurmdTimeout=120
InactiveLimit=0
KillWait=10
Waittime=0
StateSaveLocation=$VAR_DIR/slurmctld
SlurmdSpoolDir=$VAR_DIR/slurmd
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$gres_types
NodeName=$host NodeAddr=127.0.0.1 $topo RealMemory=$mem $gres_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    log "wrote $CONF: node $host, $cpus CPUs, ${mem} MB, $ngpu GPUs"
}

# --------------------------------------------------------------------------- checks
ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n 1; }

node_ready() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

smoke_jobs() {
    local out
    out=$(timeout 60 srun -N1 -n1 -t 1 --mem=100 hostname 2>&1) ||
        { log "srun failed: $out"; return 1; }
    log "srun hostname -> $out"
    out=$(timeout 60 sbatch --parsable --wait -t 1 --mem=100 -o /dev/null --wrap "true" 2>&1) ||
        { log "sbatch --wait failed: $out"; return 1; }
    log "sbatch --wait job $out completed"
}

# --------------------------------------------------------------------------- start
cmd_start() {
    need_root
    command -v slurmctld >/dev/null || die "slurm not installed: run '$0 install' first"
    mkdir -p "$STATE_DIR" "$LOG_DIR" "$VAR_DIR/slurmctld" "$VAR_DIR/slurmd" "$CONF_DIR"

    start_munge

    local wrote_conf=0
    if ctld_ok; then
        log "slurmctld already answering; leaving $CONF as it is"
    else
        wrote_conf=1
        if is_running slurmctld; then
            die "a slurmctld process exists but does not answer 'scontrol ping'; not touching it"
        fi
        write_conf
        log "starting slurmctld (-c: jobs of an earlier run of this test cluster are dropped)"
        slurmctld -c </dev/null >>"$LOG_DIR/slurmctld.out" 2>&1 ||
            { show_logs; die "slurmctld failed to start"; }
        wait_for 30 "slurmctld ping" ctld_ok || { show_logs; die "slurmctld not answering"; }
    fi

    if ((wrote_conf)) && our_pid slurmd >/dev/null; then
        log "restarting our slurmd for the new $CONF"
        stop_one slurmd
    fi
    if is_running slurmd; then
        log "slurmd already running"
    else
        log "starting slurmd"
        slurmd </dev/null >>"$LOG_DIR/slurmd.out" 2>&1 ||
            { show_logs; die "slurmd failed to start"; }
    fi

    if ! wait_for "$START_TIMEOUT" "node idle in sinfo" node_ready; then
        log "node state: '$(node_state)'; trying 'scontrol update state=resume'"
        scontrol update nodename="$(sinfo -h -N -o '%N' | head -n 1)" state=resume || true
        wait_for 30 "node idle after resume" node_ready ||
            { sinfo -N -l >&2 || true; show_logs; die "node never became idle"; }
    fi
    sinfo >&2
    smoke_jobs || { show_logs; die "test job did not run"; }
    log "cluster up"
}

# --------------------------------------------------------------------------- stop
stop_one() {
    local name=$1 pid
    if ! pid=$(our_pid "$name"); then
        rm -f "$STATE_DIR/$name.pid"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        alive "$pid" || break
        sleep 0.5
    done
    if alive "$pid"; then
        log "$name still alive, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE_DIR/$name.pid"
}

cmd_stop() {  # stop [DAEMON...]: default all three, in this order
    need_root
    # Daemons write their own pid files into $STATE_DIR only when this script
    # configured them (slurm.conf points there); munged's is copied there by start.
    local names=("$@") name
    ((${#names[@]})) || names=(slurmd slurmctld munged)
    for name in "${names[@]}"; do
        case $name in
            slurmd | slurmctld | munged) stop_one "$name" ;;
            *) die "stop: unknown daemon '$name'" ;;
        esac
    done
    log "stopped: ${names[*]}"
}

cmd_ours() {  # the daemons that run now and were started by this script
    local name
    for name in munged slurmctld slurmd; do
        our_pid "$name" >/dev/null && echo "$name"
    done
    return 0
}

# --------------------------------------------------------------------------- status
cmd_status() {
    local name pid rc=0
    for name in munged slurmctld slurmd; do
        if pid=$(our_pid "$name"); then
            echo "$name: running (pid $pid, started by this script)"
        elif is_running "$name"; then
            echo "$name: running (not started by this script)"
        else
            echo "$name: not running"
            rc=1
        fi
    done
    if command -v sinfo >/dev/null && ctld_ok; then
        sinfo
        squeue
    else
        echo "slurmctld: not answering"
        rc=1
    fi
    return $rc
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) shift; cmd_stop "$@" ;;
    status) cmd_status ;;
    ours) cmd_ours ;;
    *)
        echo "usage: $0 {install|start|stop [slurmd|slurmctld|munged ...]|status|ours}" >&2
        exit 2
        ;;
esac
