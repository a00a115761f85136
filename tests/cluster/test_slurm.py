"""The example study through profiles/slurm on a real one-node SLURM 22.05.

One scenario, in the order a user meets it, checked step by step (one run of each kind
keeps the scheduler tests within a few minutes):

1. a profile run of `setup` alone, whose first attempt exceeds its memory (SLURM kills
   it, the retry gets more); then the rest without retries, in which the voxel-batch
   job is cancelled with scancel, so the run ends with that job failed;
2. a dry run then plans only the missing work;
3. the rerun completes it, and every map equals the local run's (`--cores 2`, no
   profile) bit for bit: the same code on the same batches, whatever ran it.

Test-only overrides: SLURM_TEST_ARGS (2 CPUs, fast status checks).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from cluster_helpers import (
    EXAMPLE_ARGS,
    SLURM_TEST_ARGS,
    assert_maps_equal,
    copy_study,
    read_maps,
    run_snakemake,
    slurm_jobs,
    snakemake_cmd,
    tail,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

#: The first attempt of `setup` gets 100 MB, less than Snakemake and numpy take inside
#: the job; SLURM kills it (OverMemoryKill, see slurm.sh) and the retry gets 2000 MB.
STARVED_SETUP = "setup:mem_mb=100 if attempt == 1 else 2000"
ARGS = (*SLURM_TEST_ARGS, *EXAMPLE_ARGS)


@pytest.fixture(scope="module")
def scenario(slurm, example_data, tmp_path_factory):
    """Run the scenario; return the workdir and the three runs' results."""
    workdir = tmp_path_factory.mktemp("slurm")
    copy_study(example_data, workdir)
    # 1. Only setup, whose first attempt exceeds its memory; one retry.
    memory = run_snakemake(
        workdir,
        "setup",
        *ARGS,
        "--retries",
        "1",
        "--slurm-keep-successful-logs",
        "--set-resources",
        STARVED_SETUP,
        profile="slurm",
    )
    # 2. The rest, without retries; the voxel-batch job is cancelled once it runs.
    cmd = ["timeout", "-k", "10", "300"]
    cmd += snakemake_cmd(workdir, *ARGS, "--retries", "0", profile="slurm")
    cancelled: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as run:
        deadline = time.monotonic() + 280
        while run.poll() is None and time.monotonic() < deadline and not cancelled:
            for job in slurm_jobs(workdir):
                running = job["state"] == "RUNNING" and "voxels" in job["comment"]
                if running and not cancelled:
                    subprocess.run(["scancel", job["id"]], check=True)
                    cancelled.append(job["id"])
            time.sleep(0.5)
        first_out, _ = run.communicate(timeout=300)
    first = subprocess.CompletedProcess(cmd, run.returncode, first_out, "")
    dry = run_snakemake(workdir, "--dry-run", *ARGS, profile="slurm")
    rerun = run_snakemake(workdir, *ARGS, profile="slurm", timeout=300)
    return workdir, memory, cancelled, first, dry, rerun


def test_job_over_memory_is_retried_with_more(scenario):
    """SLURM kills setup's first attempt for its memory; the second succeeds."""
    workdir, memory, _, _, _, _ = scenario
    logs = (workdir / ".snakemake" / "slurm_logs").rglob("*.log")
    killed = [p for p in logs if "exceeded memory limit" in p.read_text()]
    assert killed, "no SLURM log shows a job killed for its memory"
    assert all("rule_setup" in str(p) for p in killed)
    assert memory.returncode == 0, tail(memory)
    out = memory.stdout + memory.stderr
    assert "Error in rule setup" in out and "Trying to restart job" in out, tail(memory)


def test_cancelled_job_is_reported_failed(scenario):
    """A voxel-batch job cancelled with scancel is reported failed."""
    _, _, cancelled, first, _, _ = scenario
    assert len(cancelled) == 1, f"nothing cancelled:\n{tail(first)}"
    assert first.returncode != 0, tail(first)
    out = first.stdout
    # The group job is reported as failed, with its SLURM log (show-failed-logs).
    assert "Error in group voxels" in out, tail(first)
    for jobid in cancelled:
        assert f"JOB {jobid} ON" in out, tail(first)
    assert "CANCELLED" in out, tail(first)


def test_rerun_plans_only_missing_work(scenario):
    """After the failure, the study, setup and image batches are not redone."""
    _, _, _, _, dry, _ = scenario
    assert dry.returncode == 0, tail(dry)
    planned = set(re.findall(r"^\s*rule (\w+):", dry.stdout, flags=re.MULTILINE))
    assert planned >= {"concat", "estimate", "inference", "maps"}, tail(dry)
    assert not planned & {"simulate", "setup", "batch"}, tail(dry)


def test_rerun_maps_equal_local_run(scenario, local_maps):
    """The rerun completes the analysis; every map equals the local run's."""
    workdir, _, _, _, _, rerun = scenario
    assert rerun.returncode == 0, tail(rerun)
    assert_maps_equal(read_maps(workdir / "results" / "example"), local_maps)
