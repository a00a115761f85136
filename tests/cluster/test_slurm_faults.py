"""Faults on a real one-node SLURM: a failed start says why; a stalled job times out.

1. `slurm.sh start` on a StateSaveLocation of another cluster name fails, and its
   message holds slurmctld's reason (the log's tail), not an empty line. Run only
   while no other test session uses the scheduler (it is stopped then).
2. `setup`'s first attempt is stalled (SIGSTOP of the job's processes, as on a hung
   filesystem) past its time limit: SLURM ends it as TIMEOUT, and the retry asks for
   a longer limit (runtime times the attempt, as in profiles/default) and succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cluster_helpers import (
    EXAMPLE_ARGS,
    HERE,
    SLURM_TEST_ARGS,
    slurm_jobs,
    snakemake_cmd,
    tail,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

STATE = Path("/var/spool/slurmctld/clustername")
USERS = Path("/run/blmm-test-cluster/slurm.users")  # see conftest._users


def _in_use() -> bool:
    """Return whether SLURM answers or a live test session has registered for it."""
    pids = USERS.read_text().split() if USERS.exists() else []
    if any(Path(f"/proc/{pid}").exists() for pid in pids if pid.isdigit()):
        return True
    status = subprocess.run(
        [str(HERE / "slurm.sh"), "status"], capture_output=True, check=False
    )
    return status.returncode == 0


def test_failed_start_says_why():
    """A cluster-name mismatch in the state dir: the start fails, naming it."""
    if os.geteuid() != 0 or not STATE.exists():
        pytest.skip("needs root and a SLURM state dir made by tests/cluster/slurm.sh")
    if _in_use():
        pytest.skip("SLURM is running for another test session; not stopping it")
    saved = STATE.read_bytes()
    STATE.write_text("anothercluster\n")
    try:
        started = subprocess.run(
            [str(HERE / "slurm.sh"), "start"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "SLURM_START_TIMEOUT": "5"},
            check=False,
        )
    finally:
        STATE.write_bytes(saved)
        subprocess.run(
            [str(HERE / "slurm.sh"), "stop"], capture_output=True, timeout=120
        )
    assert started.returncode != 0
    assert "slurmctld did not start" in started.stderr, started.stderr
    assert "CLUSTER NAME MISMATCH" in started.stderr, started.stderr


def test_job_over_time_limit_is_retried_with_a_longer_limit(slurm, study):
    """A stalled setup job is killed at its 1-minute limit; the retry gets 2."""
    stalled: list[str] = []

    def stall_first_attempt(proc: subprocess.Popen) -> None:
        while proc.poll() is None and not stalled:
            for job in slurm_jobs(study):
                if job["state"] == "RUNNING" and "setup" in job["comment"]:
                    listed = subprocess.run(
                        ["scontrol", "listpids", job["id"]],
                        capture_output=True,
                        text=True,
                        check=False,
                    ).stdout.splitlines()[1:]  # PID JOBID STEPID LOCALID GLOBALID
                    for line in listed:
                        if line.split() and line.split()[0].isdigit():
                            os.kill(int(line.split()[0]), signal.SIGSTOP)
                    stalled.append(job["id"])
            time.sleep(0.5)

    cmd = ["timeout", "-k", "10", "420"]
    cmd += snakemake_cmd(
        study,
        "setup",
        *SLURM_TEST_ARGS,
        *EXAMPLE_ARGS,
        "--retries",
        "1",
        "--set-resources",  # the profile's "10 * attempt", scaled down to a test
        "setup:runtime=1 * attempt",
        profile="slurm",
    )
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        stall_first_attempt(proc)
        out, _ = proc.communicate(timeout=430)
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
    assert stalled, f"setup never ran:\n{tail(result)}"
    assert result.returncode == 0, tail(result)
    jobs = {job["id"]: job for job in slurm_jobs(study)}
    assert jobs[stalled[0]]["state"] == "TIMEOUT", jobs
    assert jobs[stalled[0]]["limit"] == "1:00", jobs
    retries = [
        j for i, j in jobs.items() if i != stalled[0] and "setup" in j["comment"]
    ]
    assert [(j["state"], j["limit"]) for j in retries] == [("COMPLETED", "2:00")]
    assert "Trying to restart job" in out, tail(result)
