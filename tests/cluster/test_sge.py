"""The example study through profiles/sge on a real one-host Grid Engine 8.1.9.

The scenario of tests/cluster/test_slurm.py with the cluster-generic plugin, the
profile's qsub command and its status script (sge-status.sh):

1. a profile run of `setup` alone, whose first attempt exceeds its h_vmem and is
   retried with more; then the rest without retries, in which the voxel-batch job is
   deleted with qdel, so the run ends with that job failed;
2. a dry run then plans only the missing work;
3. the rerun completes it, and every map equals the local run's bit for bit.

Test-only overrides: SGE_TEST_ARGS (2 slots, status every second).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from cluster_helpers import (
    EXAMPLE_ARGS,
    SGE_TEST_ARGS,
    assert_maps_equal,
    copy_study,
    read_maps,
    run_snakemake,
    snakemake_cmd,
    tail,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

#: h_vmem limits virtual memory (setrlimit): with 100 MB the Snakemake process inside
#: the job cannot even map its libraries, as any program over its h_vmem fails to
#: allocate. The retry asks for 2000 MB.
STARVED_SETUP = "setup:mem_mb=100 if attempt == 1 else 2000"
MEMORY_ERRORS = ("failed to map segment", "Cannot allocate memory", "MemoryError")
ARGS = (*SGE_TEST_ARGS, *EXAMPLE_ARGS)


def _own_running_voxels_jobs(workdir: Path) -> list[str]:
    """Return the ids of running voxel-batch jobs whose working directory is workdir."""
    out = subprocess.run(["qstat"], capture_output=True, text=True, check=False).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    # qstat shows the first 10 characters of the name: "smk.voxels".
    candidates = [
        r[0] for r in rows if len(r) >= 5 and r[2] == "smk.voxels" and r[4] == "r"
    ]
    own = []
    for jobid in candidates:
        detail = subprocess.run(
            ["qstat", "-j", jobid], capture_output=True, text=True, check=False
        ).stdout
        cwd = re.search(r"^cwd:\s+(\S+)", detail, flags=re.MULTILINE)
        if cwd and cwd.group(1) == str(workdir):
            own.append(jobid)
    return own


@pytest.fixture(scope="module")
def scenario(sge, example_data, tmp_path_factory):
    """Run the scenario; return the workdir and the three runs' results."""
    workdir = tmp_path_factory.mktemp("sge")
    copy_study(example_data, workdir)
    # 1. Only setup, whose first attempt exceeds its h_vmem; one retry.
    memory = run_snakemake(
        workdir,
        "setup",
        *ARGS,
        "--retries",
        "1",
        "--set-resources",
        STARVED_SETUP,
        profile="sge",
    )
    # 2. The rest, without retries; the voxel-batch job is deleted once it runs.
    # 300 s as for SLURM: on 2 shared cores the example's voxel jobs under SGE
    # took more than 240 s once (the maps job still queued at the limit)
    cmd = ["timeout", "-k", "10", "300"]
    cmd += snakemake_cmd(workdir, *ARGS, "--retries", "0", profile="sge")
    deleted: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as run:
        deadline = time.monotonic() + 280
        while run.poll() is None and time.monotonic() < deadline and not deleted:
            for jobid in _own_running_voxels_jobs(workdir)[:1]:
                subprocess.run(["qdel", jobid], capture_output=True, check=True)
                deleted.append(jobid)
            time.sleep(0.5)
        first_out, _ = run.communicate(timeout=300)
    first = subprocess.CompletedProcess(cmd, run.returncode, first_out, "")
    dry = run_snakemake(workdir, "--dry-run", *ARGS, profile="sge")
    rerun = run_snakemake(workdir, *ARGS, profile="sge", timeout=300)
    return workdir, memory, deleted, first, dry, rerun


def test_job_over_memory_is_retried_with_more(scenario):
    """The first attempt of setup fails at its h_vmem; the second succeeds."""
    workdir, memory, _, _, _, _ = scenario
    errors = [p.read_text() for p in (workdir / "logs" / "sge").glob("smk.setup.e*")]
    assert len(errors) == 2, "expected two attempts of setup"
    assert sum(any(e in text for e in MEMORY_ERRORS) for text in errors) == 1
    assert memory.returncode == 0, tail(memory)
    out = memory.stdout + memory.stderr
    assert "Error in rule setup" in out and "Trying to restart job" in out, tail(memory)


def test_deleted_job_is_reported_failed(scenario):
    """A voxel-batch job deleted with qdel is reported failed."""
    _, _, deleted, first, _, _ = scenario
    assert len(deleted) == 1, f"nothing deleted:\n{tail(first)}"
    assert first.returncode != 0, tail(first)
    assert "Error in group voxels" in first.stdout, tail(first)
    for jobid in deleted:
        assert f"external jobid '{jobid}'" in first.stdout, tail(first)


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
