"""The example study through profiles/slurm on a real one-node SLURM 22.05.

Each test starts from a copy of the simulated example study and compares its maps with
the local run's (`--cores 2`, no profile): the same code on the same batches must give
the same bits, whatever ran it. Test-only overrides: SLURM_TEST_ARGS (2 CPUs, fast
status checks).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from cluster_helpers import (
    SLURM_TEST_ARGS,
    assert_maps_equal,
    copy_study,
    read_maps,
    run_snakemake,
    snakemake_cmd,
    tail,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

#: The first attempt of `setup` gets 100 MB, less than Snakemake and numpy take inside
#: the job; SLURM kills it (OverMemoryKill) and the retry gets 2000 MB.
STARVED_SETUP = "setup:mem_mb=100 if attempt == 1 else 2000"


@pytest.fixture(scope="module")
def starved_run(slurm, example_data, tmp_path_factory):
    """One profile run in which setup's first attempt exceeds its memory."""
    workdir = tmp_path_factory.mktemp("slurm_run")
    copy_study(example_data, workdir)
    result = run_snakemake(
        workdir,
        *SLURM_TEST_ARGS,
        "--slurm-keep-successful-logs",
        "--set-resources",
        STARVED_SETUP,
        profile="slurm",
        timeout=300,
    )
    return workdir, result


def test_profile_run_maps_equal_local_run(starved_run, local_maps):
    """Every map of the SLURM run equals the local run's, bit for bit."""
    workdir, result = starved_run
    assert result.returncode == 0, tail(result)
    assert_maps_equal(read_maps(workdir / "results" / "example"), local_maps)


def test_job_over_memory_is_retried_with_more(starved_run):
    """SLURM kills setup's first attempt for its memory; the second succeeds."""
    workdir, result = starved_run
    assert result.returncode == 0, tail(result)
    logs = {
        p: p.read_text() for p in (workdir / ".snakemake" / "slurm_logs").rglob("*.log")
    }
    killed = [p for p, text in logs.items() if "exceeded memory limit" in text]
    assert killed, "no SLURM log shows a job killed for its memory"
    assert all("rule_setup" in str(p) for p in killed)
    out = result.stdout + result.stderr
    assert re.search(r"Error in rule setup", out), tail(result)
    assert "Trying to restart job" in out, tail(result)


def _squeue(*fields: str) -> list[list[str]]:
    """Return squeue's rows (all states) as lists of fields."""
    out = subprocess.run(
        ["squeue", "-h", "--states=all", "-o", "|".join(fields)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def test_cancelled_job_fails_and_rerun_completes_missing_work(slurm, study, local_maps):
    """A scancel'ed voxel-batch job is a failed job; the rerun redoes only that part."""
    known = {row[0] for row in _squeue("%i")}
    cmd = ["timeout", "-k", "10", "240"]
    cmd += snakemake_cmd(study, *SLURM_TEST_ARGS, "--retries", "0", profile="slurm")
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as run:
        cancelled = None
        deadline = time.monotonic() + 180
        while cancelled is None and time.monotonic() < deadline and run.poll() is None:
            for jobid, state, comment in _squeue("%i", "%T", "%k"):
                if jobid not in known and state == "RUNNING" and "voxels" in comment:
                    subprocess.run(["scancel", jobid], check=True)
                    cancelled = jobid
            time.sleep(0.5)
        out, _ = run.communicate(timeout=240)
    assert cancelled is not None, f"the voxels job never ran:\n{out[-4000:]}"
    assert run.returncode != 0, out[-4000:]
    # The group job is reported as failed, with its SLURM log (show-failed-logs).
    assert "Error in group voxels" in out, out[-4000:]
    assert f"JOB {cancelled} ON" in out and "CANCELLED" in out, out[-4000:]

    # What is left: the voxel-batch chain and the maps; the study, setup and products
    # stay.
    dry = run_snakemake(study, "--dry-run", *SLURM_TEST_ARGS, profile="slurm")
    assert dry.returncode == 0, tail(dry)
    planned = set(re.findall(r"^\s*rule (\w+):", dry.stdout, flags=re.MULTILINE))
    assert planned >= {"concat", "estimate", "inference", "maps"}, tail(dry)
    assert not planned & {"simulate", "setup", "batch"}, tail(dry)

    rerun = run_snakemake(study, *SLURM_TEST_ARGS, profile="slurm", timeout=240)
    assert rerun.returncode == 0, tail(rerun)
    assert_maps_equal(read_maps(study / "results" / "example"), local_maps)
