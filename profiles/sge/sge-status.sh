#!/usr/bin/env bash
# Status command for snakemake-executor-plugin-cluster-generic on (Son of / Open) Grid Engine.
# Usage: sge-status.sh JOBID   ->  prints exactly one of: running, success, failed
#
# - In qstat: "failed" when its state has an E (e.g. Eqw: the job cannot start and would wait
#   forever), otherwise "running" (queued, held and transferring count as running).
# - Gone from qstat: qacct decides. "success" only when both `failed` and `exit_status` are 0;
#   a job killed by qdel, by h_vmem/h_rt or by a signal has a non-zero one of them.
# - In neither: the job either just ended and is not yet in the accounting file (sites flush it
#   every few seconds), or was deleted before it started (qdel of a queued job leaves no
#   accounting record). Report "running" for SGE_STATUS_GRACE seconds (default 60) after first
#   seeing it missing, then "failed", so a deleted queued job cannot hang the workflow.
set -uo pipefail

jid=${1:?usage: sge-status.sh JOBID}
jid=${jid%%.*}   # an array task id "123.1" is followed through its job
grace=${SGE_STATUS_GRACE:-60}
state_dir=${TMPDIR:-/tmp}/sge-status-$(id -u)

if qstat -j "$jid" >/dev/null 2>&1; then
    state=$(qstat | awk -v j="$jid" '$1 == j {print $5; exit}')
    if [[ $state == *E* ]]; then echo failed; else echo running; fi
    exit 0
fi

acct=$(qacct -j "$jid" 2>/dev/null)
if [[ -z $acct ]]; then
    mkdir -p "$state_dir"
    marker=$state_dir/$jid
    [[ -e $marker ]] || touch "$marker"
    if (($(date +%s) - $(stat -c %Y "$marker") >= grace)); then
        rm -f "$marker"
        echo failed
    else
        echo running
    fi
    exit 0
fi
rm -f "$state_dir/$jid" 2>/dev/null

# qacct lists one record per run of the job id; the last one is the latest.
failed=$(awk '$1 == "failed" {v = $2} END {print v}' <<<"$acct")
status=$(awk '$1 == "exit_status" {v = $2} END {print v}' <<<"$acct")
if [[ $failed == 0 && $status == 0 ]]; then echo success; else echo failed; fi
