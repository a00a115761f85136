"""The example study through profiles/sge on a real one-host Grid Engine 8.1.9.

As tests/cluster/test_slurm.py, with the cluster-generic plugin, the profile's qsub
command and its status script. Test-only overrides: SGE_TEST_ARGS (2 slots, status every
2 s).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from cluster_helpers import (
    SGE_TEST_ARGS,
    assert_maps_equal,
    copy_study,
    read_maps,
    run_snakemake,
    snakemake_cmd,
    tail,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

#: h_vmem is a limit on virtual memory (setrlimit): with 100 MB the Snakemake process
#: inside the job cannot even map its libraries, as any program over its h_vmem fails to
#: allocate. The retry asks for 2000 MB.
STARVED_SETUP = "setup:mem_mb=100 if attempt == 1 else 2000"
MEMORY_ERRORS = ("failed to map segment", "Cannot allocate memory", "MemoryError")


@pytest.fixture(scope="module")
def starved_run(sge, example_data, tmp_path_factory):
    """One profile run in which setup's first attempt exceeds its h_vmem."""
    workdir = tmp_path_factory.mktemp("sge_run")
    copy_study(example_data, workdir)
    result = run_snakemake(
        workdir,
        *SGE_TEST_ARGS,
        "--set-resources",
        STARVED_SETUP,
        profile="sge",
        timeout=240,
    )
    return workdir, result


def test_profile_run_maps_equal_local_run(starved_run, local_maps):
    """Every map of the SGE run equals the local run's, bit for bit."""
    workdir, result = starved_run
    assert result.returncode == 0, tail(result)
    assert_maps_equal(read_maps(workdir / "results" / "example"), local_maps)


def test_job_over_memory_is_retried_with_more(starved_run):
    """The first attempt of setup fails at its h_vmem; the second succeeds."""
    workdir, result = starved_run
    assert result.returncode == 0, tail(result)
    setup_errors = [
        p.read_text() for p in (workdir / "logs" / "sge").glob("smk.setup.e*")
    ]
    assert len(setup_errors) == 2, "expected two attempts of setup"
    assert sum(any(e in text for e in MEMORY_ERRORS) for text in setup_errors) == 1
    out = result.stdout + result.stderr
    assert "Error in rule setup" in out and "Trying to restart job" in out, tail(result)


def _qstat() -> list[tuple[str, str, str]]:
    """Return (job id, name, state) of the jobs in qstat."""
    out = subprocess.run(["qstat"], capture_output=True, text=True, check=False).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    return [(r[0], r[2], r[4]) for r in rows if len(r) >= 5]


def test_qdel_job_fails_and_rerun_completes_missing_work(sge, study, local_maps):
    """A qdel'ed voxel-batch job is a failed job; the rerun redoes only that part."""
    cmd = ["timeout", "-k", "10", "180"]
    cmd += snakemake_cmd(study, *SGE_TEST_ARGS, "--retries", "0", profile="sge")
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as run:
        deleted = None
        deadline = time.monotonic() + 150
        while deleted is None and time.monotonic() < deadline and run.poll() is None:
            for jobid, name, state in _qstat():
                # qstat shows the first 10 characters of the name, "smk.voxels".
                if name.startswith("smk.voxels") and state == "r":
                    subprocess.run(["qdel", jobid], capture_output=True, check=True)
                    deleted = jobid
            time.sleep(0.5)
        out, _ = run.communicate(timeout=180)
    assert deleted is not None, f"the voxels job never ran:\n{out[-4000:]}"
    assert run.returncode != 0, out[-4000:]
    assert "Error in group voxels" in out, out[-4000:]
    assert f"external jobid '{deleted}'" in out, out[-4000:]

    dry = run_snakemake(study, "--dry-run", *SGE_TEST_ARGS, profile="sge")
    assert dry.returncode == 0, tail(dry)
    planned = set(re.findall(r"^\s*rule (\w+):", dry.stdout, flags=re.MULTILINE))
    assert planned >= {"concat", "estimate", "inference", "maps"}, tail(dry)
    assert not planned & {"simulate", "setup", "batch"}, tail(dry)

    rerun = run_snakemake(study, *SGE_TEST_ARGS, profile="sge", timeout=180)
    assert rerun.returncode == 0, tail(rerun)
    assert_maps_equal(read_maps(study / "results" / "example"), local_maps)
