#!/usr/bin/env bash
# Start, stop or query a one-host Grid Engine (sge_qmaster, sge_execd) on this machine, for the
# tests in tests/cluster/. Run as root, after tests/cluster/install-schedulers.sh.
#
#   tests/cluster/sge.sh start    # idempotent: starts only what is not already answering
#   tests/cluster/sge.sh stop     # stops only the daemons this script started (PID files)
#   tests/cluster/sge.sh status   # exit 0 when all.q accepts jobs
#
# Configured for tests: root may run jobs (min_uid 0), the scheduler runs every second and
# accounting is flushed at once (qacct sees a job as soon as it ends; the profile's status script
# reads it), a queue all.q with one slot per CPU, and a parallel environment `smp`
# (allocation_rule $pe_slots: all slots on one host) that profiles/sge requests as `-pe smp N`.
set -euo pipefail

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
COMMON=$SGE_ROOT/$SGE_CELL/common
SPOOL=/var/spool/gridengine
QMASTER_PID=$SPOOL/qmaster/qmaster.pid
EXECD_PID=/run/gridengine/execd.pid
STATE_DIR=/run/blmm-test-cluster/sge
WAIT_S=${SGE_START_TIMEOUT:-60}
HOST=$(hostname)

log() { echo "sge.sh: $*" >&2; }
die() { log "$*"; exit 1; }

wait_for() {   # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${limit}s waiting for ${what}"
        sleep 0.2
    done
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# A daemon that refuses to start writes why to its messages file, not to us: on a failed
# start, show the last lines of the one of the daemon being started (STARTING_LOG, a glob:
# execd's spool folder is named after the host as SGE resolves it).
STARTING_LOG=
explain_failure() {
    local rc=$? f
    ((rc == 0)) && return 0
    for f in $STARTING_LOG; do   # unquoted: the glob expands
        [[ -s $f ]] || continue
        log "start failed (exit $rc); last lines of $f:"
        tail -n 12 "$f" | sed 's/^/    /' >&2
    done
    return "$rc"
}
qmaster_ok() { timeout 5 qconf -sh >/dev/null 2>&1; }
queue_ok() {
    # "all.q@vm  BIP  0/0/2  0.12  lx-amd64" with a load value and no state letters (column 6).
    timeout 5 qstat -f -q "all.q@${HOST}" 2>/dev/null |
        awk -v q="all.q@${HOST}" '$1 == q && $4 != "-NA-" && $6 == "" {ok = 1} END {exit !ok}'
}
started() { echo "$1" >>"$STATE_DIR/started"; }
# q COMMAND...: run a qconf/qmod command quietly (they report success on stderr), fail loudly.
q() {
    local out
    out=$("$@" 2>&1) || die "$* failed: $out"
}

ensure_cell() {
    # Redo what gridengine-common's postinst does with gridengineconfig=true, if it did not run.
    if [[ ! -s $COMMON/bootstrap ]]; then
        install -d -o sgeadmin -g sgeadmin "$COMMON"
        install -o sgeadmin -g sgeadmin -m 0644 /usr/share/gridengine/default-bootstrap "$COMMON/bootstrap"
    fi
    [[ -s $COMMON/act_qmaster ]] || echo "$HOST" >"$COMMON/act_qmaster"
    chown sgeadmin:sgeadmin "$COMMON/act_qmaster"
    if [[ ! -e $SPOOL/spooldb/sge ]]; then
        install -d -o sgeadmin -g sgeadmin "$SPOOL/qmaster" "$SPOOL/qmaster/job_scripts" "$SPOOL/spooldb"
        su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT $SGE_CELL $SPOOL/spooldb sgeadmin" sgeadmin
    fi
    # SGE compares the reverse lookup of the peer address with the name the client sends. Where
    # 127.0.0.1 reverse-resolves to "localhost" but hostname is another name, every connection
    # fails ("local host name error"). host_aliases maps the two onto one host.
    local rev
    rev=$(/usr/lib/gridengine/gethostbyaddr "$(getent ahostsv4 "$HOST" | awk 'NR==1 {print $1}')" 2>/dev/null |
        awk '/^Hostname:/ {print $2}')
    if [[ -n $rev && $rev != "$HOST" ]]; then
        echo "$HOST $rev" >"$COMMON/host_aliases"
        chown sgeadmin:sgeadmin "$COMMON/host_aliases"
    fi
}

configure() {
    local tmp
    tmp=$(mktemp -d)
    qconf -sh | grep -qx "$HOST" || q qconf -ah "$HOST"
    qconf -ss 2>/dev/null | grep -qx "$HOST" || q qconf -as "$HOST"

    # Global configuration. qconf -sconf wraps long values onto "\"-continued lines, and
    # qconf -Mconf takes the configuration's name from the file name, hence "global".
    qconf -sconf | sed -e ':a' -e '/\\$/N; s/\\\n *//; ta' |
        awk '$1 == "min_uid" {print "min_uid 0"; next}
             $1 == "min_gid" {print "min_gid 0"; next}
             $1 == "load_report_time" {print "load_report_time 00:00:05"; next}
             $1 == "reporting_params" {print "reporting_params accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00"; next}
             {print}' >"$tmp/global"
    q qconf -Mconf "$tmp/global"

    # Scheduler: every second instead of every 15 s.
    qconf -ssconf |
        awk '$1 == "schedule_interval" {print "schedule_interval 0:0:1"; next}
             $1 == "flush_submit_sec" {print "flush_submit_sec 1"; next}
             $1 == "flush_finish_sec" {print "flush_finish_sec 1"; next}
             {print}' >"$tmp/sconf"
    q qconf -Msconf "$tmp/sconf"

    # Parallel environment for threaded rules: `qsub -pe smp N` takes N slots on one host.
    cat >"$tmp/smp" <<PE
pe_name            smp
slots              999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
PE
    if qconf -spl 2>/dev/null | grep -qx smp; then q qconf -Mp "$tmp/smp"; else q qconf -Ap "$tmp/smp"; fi
    rm -rf "$tmp"
}

write_queue() {   # 8.1.9 wants every attribute in the file
    local file=$1 lim
    cat >"$file" <<Q
qname all.q
hostlist ${HOST}
seq_no 0
load_thresholds NONE
suspend_thresholds NONE
nsuspend 1
suspend_interval 00:05:00
priority 0
min_cpu_interval 00:05:00
processors UNDEFINED
qtype BATCH INTERACTIVE
ckpt_list NONE
pe_list make smp
rerun FALSE
slots $(nproc)
tmpdir /tmp
shell /bin/bash
prolog NONE
epilog NONE
shell_start_mode unix_behavior
starter_method NONE
suspend_method NONE
resume_method NONE
terminate_method NONE
notify 00:00:60
owner_list NONE
user_lists NONE
xuser_lists NONE
subordinate_list NONE
complex_values NONE
projects NONE
xprojects NONE
calendar NONE
initial_state default
Q
    for lim in s_rt h_rt s_cpu h_cpu s_fsize h_fsize s_data h_data s_stack h_stack s_core h_core s_rss h_rss s_vmem h_vmem; do
        echo "$lim INFINITY" >>"$file"
    done
}

start() {
    trap explain_failure EXIT
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    [[ -x /usr/sbin/sge_qmaster ]] || die "sge_qmaster not found; run tests/cluster/install-schedulers.sh"
    getent hosts "$HOST" >/dev/null || die "host name $HOST does not resolve; add it to /etc/hosts"
    install -d -m 0755 "$STATE_DIR"
    touch "$STATE_DIR/started"
    ensure_cell
    install -d -o sgeadmin -g sgeadmin /run/gridengine

    STARTING_LOG=$SPOOL/qmaster/messages
    if ! qmaster_ok; then
        # daemonizes, runs as sgeadmin, writes $QMASTER_PID
        /usr/sbin/sge_qmaster || die "sge_qmaster did not start (exit $?)"
        started qmaster
    fi
    wait_for "$WAIT_S" sge_qmaster qmaster_ok
    configure

    STARTING_LOG="$SPOOL/execd/*/messages"
    if ! pid_alive "$EXECD_PID"; then
        # registers itself as execution host
        SGE_EXECD_PIDFILE=$EXECD_PID /usr/sbin/sge_execd || die "sge_execd did not start (exit $?)"
        started execd
    fi
    local tmp
    tmp=$(mktemp)
    write_queue "$tmp"
    if qconf -sql 2>/dev/null | grep -qx all.q; then q qconf -Mq "$tmp"; else q qconf -Aq "$tmp"; fi
    rm -f "$tmp"
    # Clear an error state left on the queue by an earlier run (e.g. a job killed with its execd).
    qmod -c "all.q@${HOST}" >/dev/null 2>&1 || true
    wait_for "$WAIT_S" "all.q@${HOST} to report load" queue_ok
    log "up: $(qstat -f -q "all.q@${HOST}" | awk -v q="all.q@${HOST}" '$1 == q')"
    trap - EXIT
}

stop_pid() {   # stop_pid NAME PIDFILE: wait until a daemon asked to quit is gone
    local name=$1 pidfile=$2 pid
    if pid_alive "$pidfile"; then
        pid=$(cat "$pidfile")
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
    if grep -qx qmaster "$STATE_DIR/started"; then
        timeout 10 qdel -f -u '*' >/dev/null 2>&1 || true
    fi
    if grep -qx execd "$STATE_DIR/started"; then
        timeout 10 qconf -ke "$HOST" >/dev/null 2>&1 || { pid_alive "$EXECD_PID" && kill -TERM "$(cat "$EXECD_PID")"; }
        stop_pid execd "$EXECD_PID"
    fi
    if grep -qx qmaster "$STATE_DIR/started"; then
        timeout 10 qconf -km >/dev/null 2>&1 || { pid_alive "$QMASTER_PID" && kill -TERM "$(cat "$QMASTER_PID")"; }
        stop_pid qmaster "$QMASTER_PID"
    fi
    log "stopped"
}

status() {
    qmaster_ok || { log "sge_qmaster not answering"; return 1; }
    queue_ok || { log "all.q@${HOST} not usable"; qstat -f 2>&1 | head -5 >&2; return 1; }
    qstat -f -q "all.q@${HOST}"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
