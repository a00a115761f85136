#!/usr/bin/env bash
# Start, stop or query a one-node SLURM (munged, slurmctld, slurmd) on this machine, for the tests
# in tests/cluster/. Run as root, after tests/cluster/install-schedulers.sh.
#
#   tests/cluster/slurm.sh start    # idempotent: starts only what is not already answering
#   tests/cluster/slurm.sh stop     # stops only the daemons this script started (PID files)
#   tests/cluster/slurm.sh status   # exit 0 when the node accepts jobs
#
# No accounting database: jobs are followed with `squeue --states=all`, which lists finished jobs
# for MinJobAge seconds (600 here; the Snakemake plugin needs at least 3x its first status delay).
# Memory is enforced without cgroups: jobacct_gather/linux samples each step's RSS every second
# and OverMemoryKill kills a step above its --mem (state OUT_OF_MEMORY), which is what a real
# cluster's cgroup limit does, only polled. That is what the memory-retry test relies on.
set -euo pipefail

STATE_DIR=/run/blmm-test-cluster/slurm   # which daemons we started; /run is emptied on reboot
CONF=/etc/slurm/slurm.conf               # jobstep srun drops SLURM_CONF, so it must live here
MARK="# Written by tests/cluster/slurm.sh"
WAIT_S=${SLURM_START_TIMEOUT:-30}

log() { echo "slurm.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s, fail after SECONDS.
wait_for() {
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${limit}s waiting for ${what}"
        sleep 0.2
    done
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
ctld_ok() { timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_ok() { timeout 5 sinfo -h -N -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }
pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
    local host hw tmp
    host=$(hostname -s)
    # First line of `slurmd -C` is "NodeName=<host> CPUs=... RealMemory=..."; RealMemory must not
    # exceed what the node has, or the node is never usable.
    hw=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')
    tmp=$(mktemp)
    cat >"$tmp" <<CONF
${MARK}; rewritten on every start.
ClusterName=blmmtest
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
NodeName=${host} NodeAddr=127.0.0.1 ${hw} State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    install -d -m 0755 /etc/slurm
    if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        rm -f "$tmp"
        die "$CONF exists and was not written by this script; refusing to replace it"
    fi
    install -m 0644 "$tmp" "$CONF"
    rm -f "$tmp"
}

started() { echo "$1" >>"$STATE_DIR/started"; }

# A daemon that refuses to start writes why to its log, not to us (e.g. slurmctld's
# "CLUSTER NAME MISMATCH" for a StateSaveLocation of another cluster name): on a failed
# start, show the last lines of the log of the daemon being started (STARTING_LOG).
STARTING_LOG=
explain_failure() {
    local rc=$?
    ((rc == 0)) && return 0
    if [[ -s $STARTING_LOG ]]; then
        log "start failed (exit $rc); last lines of $STARTING_LOG:"
        tail -n 12 "$STARTING_LOG" | sed 's/^/    /' >&2
    fi
    return "$rc"
}

start() {
    trap explain_failure EXIT
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    command -v slurmctld >/dev/null || die "slurmctld not found; run tests/cluster/install-schedulers.sh"
    install -d -m 0755 "$STATE_DIR"
    touch "$STATE_DIR/started"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge
    # A log file left by a munged once started as root makes munged refuse to start as munge.
    [[ -e /var/log/munge/munged.log ]] && chown munge:munge /var/log/munge/munged.log
    install -d -m 0755 /var/spool/slurmd /var/spool/slurmctld /var/log/slurm

    STARTING_LOG=/var/log/munge/munged.log
    if ! munge_ok; then
        runuser -u munge -- /usr/sbin/munged || die "munged did not start (exit $?)"
        started munged
    fi
    wait_for "$WAIT_S" munged munge_ok

    write_conf
    STARTING_LOG=/var/log/slurm/slurmctld.log
    if ctld_ok; then
        scontrol reconfigure
    else
        # recovers jobs and job ids from StateSaveLocation, if any
        /usr/sbin/slurmctld || die "slurmctld did not start (exit $?)"
        started slurmctld
    fi
    wait_for "$WAIT_S" slurmctld ctld_ok

    STARTING_LOG=/var/log/slurm/slurmd.log
    if ! pid_alive /run/slurmd.pid; then
        /usr/sbin/slurmd || die "slurmd did not start (exit $?)"
        started slurmd
    fi
    wait_for "$WAIT_S" "the node to become idle" node_ok
    # A node left DOWN/DRAIN by an earlier run (e.g. killed mid-job) comes back here.
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    log "up: $(sinfo -h -o '%P %a %D %T' | head -1)"
    trap - EXIT
}

stop_pid() {   # stop_pid NAME PIDFILE
    local name=$1 pidfile=$2 pid
    grep -qx "$name" "$STATE_DIR/started" 2>/dev/null || return 0
    if pid_alive "$pidfile"; then
        pid=$(cat "$pidfile")
        kill -TERM "$pid"
        local deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then kill -KILL "$pid" 2>/dev/null || true; break; fi
            sleep 0.2
        done
    fi
    sed -i "/^${name}\$/d" "$STATE_DIR/started"
}

stop() {
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    [[ -s $STATE_DIR/started ]] || { log "nothing started by this script is running"; return 0; }
    if grep -qx slurmctld "$STATE_DIR/started"; then
        timeout 10 scancel --state=PENDING,RUNNING -u root 2>/dev/null || true
    fi
    stop_pid slurmd /run/slurmd.pid
    stop_pid slurmctld /run/slurmctld.pid
    stop_pid munged /run/munge/munged.pid
    log "stopped"
}

status() {
    munge_ok || { log "munged not answering"; return 1; }
    ctld_ok || { log "slurmctld not answering"; return 1; }
    node_ok || { log "node not usable: $(sinfo -h -N -o %T 2>&1 | head -1)"; return 1; }
    sinfo
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
