"""The cluster profiles without a scheduler: dry runs, the rule graph, and job counts.

None of these needs SLURM or SGE: a dry run with a cluster profile plans the same jobs
and group jobs the executor would submit, which is what a user checks before submitting.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_helpers import HERE, REPO, snakemake_cmd, write_scaled_study

pytestmark = pytest.mark.slow

PROFILES = ("slurm", "sge")
SCHEDULER_COMMANDS = frozenset(
    [
        *("sbatch", "squeue", "sacct", "sinfo", "scontrol", "scancel", "srun"),
        *("salloc", "sacctmgr", "sstat", "sprio", "sshare"),
        *("qsub", "qstat", "qacct", "qdel", "qconf", "qhost", "qmod", "qalter"),
        *("qrsh", "qlogin", "qsh", "qhold", "qrls", "qselect"),
    ]
)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """Return a working directory with the example config (study not simulated)."""
    root = tmp_path_factory.mktemp("profiles")
    (root / "config.yaml").write_bytes((REPO / "config" / "config.yaml").read_bytes())
    return root


@pytest.fixture(scope="module")
def no_scheduler_env(tmp_path_factory) -> dict:
    """Return this environment less every SLURM and SGE command and variable."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for folder in (
        Path(sys.executable).parent,
        Path("/usr/local/bin"),
        Path("/usr/bin"),
    ):
        for tool in folder.iterdir() if folder.is_dir() else ():
            link = bin_dir / tool.name
            if tool.name not in SCHEDULER_COMMANDS and not link.exists():
                link.symlink_to(tool)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SGE_"))}
    env["PATH"] = str(bin_dir)
    return env


@pytest.mark.parametrize("profile", PROFILES)
def test_dry_run_without_scheduler(profile, example, no_scheduler_env):
    """`snakemake -n --profile profiles/<x>` plans the analysis with no scheduler."""
    assert not any(
        (Path(no_scheduler_env["PATH"]) / c).exists() for c in SCHEDULER_COMMANDS
    )
    result = subprocess.run(
        snakemake_cmd(example, "--dry-run", profile=profile),
        capture_output=True,
        text=True,
        env=no_scheduler_env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "Job stats:" in out
    for group in ("products", "voxels", "outputs"):
        assert f"Group job {group}" in out, group


@pytest.mark.parametrize("profile", PROFILES)
def test_rulegraph_renders(profile, example):
    """--rulegraph with the profile gives a graph with every stage of the analysis."""
    result = subprocess.run(
        snakemake_cmd(example, "--rulegraph", profile=profile),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    dot = result.stdout
    assert dot.lstrip().startswith("digraph")
    for rule in ("setup", "batch", "concat", "estimate", "inference", "maps"):
        assert f'label = "{rule}"' in dot, rule


def count_jobs(workdir: Path, *args: str, profile: str = "slurm") -> dict:
    """Return count_jobs.py's counts for a dry run of workdir's config."""
    # snakemake_cmd starts with "python -m snakemake"; count_jobs.py takes the rest.
    cmd = [sys.executable, str(HERE / "count_jobs.py")]
    cmd += snakemake_cmd(workdir, *args, profile=profile)[3:]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


#: Most cluster jobs an analysis may submit by default, at any size ("a few hundred").
MAX_SUBMITTED = 300


@pytest.mark.parametrize("n_images", [200, 2000, 20000])
def test_submitted_jobs_stay_few(n_images, tmp_path):
    """Jobs submitted for n images of a 2 mm brain (MAXMEM=2**32) stay few as n grows.

    Measured with the slurm profile (the sge profile bundles the same way); each
    count is
    printed, see profiles/README.md for the table.
    """
    write_scaled_study(tmp_path, n_images)
    counts = count_jobs(tmp_path)
    by_rule, by_name = counts["by_rule"], counts["by_name"]
    print(
        f"\n{n_images} images: {counts['rule_jobs']} rule jobs -> "
        f"{counts['submitted']} cluster jobs {by_name}"
    )
    assert by_name["products"] == math.ceil(by_rule["batch"] / 50)
    assert by_name["voxels"] == math.ceil(by_rule["estimate"] / 4)
    assert by_name["setup"] == 1 and by_name["outputs"] == 1
    assert counts["submitted"] == sum(by_name.values()) <= MAX_SUBMITTED


def test_bundling_is_configurable(tmp_path):
    """--group-components changes how many rule jobs go into one cluster job."""
    write_scaled_study(tmp_path, 2000)
    counts = count_jobs(tmp_path, "--group-components", "products=10", "voxels=1")
    by_rule, by_name = counts["by_rule"], counts["by_name"]
    assert by_name["products"] == math.ceil(by_rule["batch"] / 10)
    assert by_name["voxels"] == by_rule["estimate"]
