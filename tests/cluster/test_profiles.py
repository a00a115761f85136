"""The cluster profiles without a scheduler: dry runs, the rule graph, and job counts.

None of these needs SLURM or SGE: a dry run with a cluster profile plans the same jobs
and group jobs the executor would submit, which is what a user checks before submitting.
"""

from __future__ import annotations

import json
import math
import os
import re
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


def install_profiles(home: Path, env: dict) -> tuple[dict, subprocess.CompletedProcess]:
    """Run profiles/install.sh with HOME and XDG_CONFIG_HOME under home.

    Returns the environment it installed into and the installer's result.
    """
    env = {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "xdg")}
    result = subprocess.run(
        ["bash", str(REPO / "profiles" / "install.sh")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    return env, result


@pytest.fixture(scope="module")
def installed_env(tmp_path_factory, no_scheduler_env) -> dict:
    """Return the no-scheduler environment with both profiles installed by name."""
    env, result = install_profiles(tmp_path_factory.mktemp("home"), no_scheduler_env)
    assert result.returncode == 0, result.stdout + result.stderr
    return env


@pytest.mark.parametrize("profile", PROFILES)
def test_installed_profile_by_name(profile, installed_env):
    """After profiles/install.sh, `snakemake --profile <name> -n` plans the analysis.

    Run exactly as a user types it, from the repository root (the example config).
    """
    result = subprocess.run(
        ["snakemake", "--profile", profile, "-n"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=installed_env,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert f"Using profiles {profile} and workflow specific profile" in out
    # The Job stats table plans the voxel batches' estimation.
    assert re.search(r"^estimate\s+[1-9]\d*$", out, re.MULTILINE), out[-3000:]
    # A link, not a copy: the installed profile is the repository's folder.
    linked = Path(installed_env["XDG_CONFIG_HOME"]) / "snakemake" / profile
    assert linked.is_symlink(), f"{linked} is not a symlink"
    assert linked.resolve() == REPO / "profiles" / profile


def test_installed_sge_status_script_resolves(installed_env, example):
    """Through the installed link, from another directory, sge-status.sh is found.

    Asked of the functions `snakemake --profile` itself uses to find a profile by
    name and read its config.yaml, run from the example's directory.
    """
    code = (
        "from snakemake.cli import get_profile_dir\n"
        "from snakemake.profiles import ProfileConfigFileParser\n"
        "folder, path = get_profile_dir('sge')\n"
        "with open(path) as f:\n"
        "    print(ProfileConfigFileParser().parse(f)['cluster-generic-status-cmd'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=example,
        capture_output=True,
        text=True,
        env=installed_env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    status_cmd = Path(result.stdout.strip())
    installed = Path(installed_env["XDG_CONFIG_HOME"]) / "snakemake" / "sge"
    assert status_cmd == installed / "sge-status.sh"
    assert status_cmd.resolve() == REPO / "profiles" / "sge" / "sge-status.sh"
    assert os.access(status_cmd, os.X_OK)


def test_install_is_idempotent_and_keeps_other_profiles(tmp_path, no_scheduler_env):
    """A second run changes nothing; a profile folder of the same name is kept."""
    _, first = install_profiles(tmp_path, no_scheduler_env)
    _, again = install_profiles(tmp_path, no_scheduler_env)
    assert first.returncode == again.returncode == 0, again.stderr
    assert again.stdout.count("already installed") == len(PROFILES)

    other = tmp_path / "other"
    own = other / "xdg" / "snakemake" / "sge"
    own.mkdir(parents=True)
    (own / "config.yaml").write_text("jobs: 1\n")
    _, refused = install_profiles(other, no_scheduler_env)
    assert refused.returncode != 0
    assert f"{own} exists and is not a symlink" in refused.stderr
    assert (own / "config.yaml").read_text() == "jobs: 1\n"
    assert not own.is_symlink()
    assert (other / "xdg" / "snakemake" / "slurm").is_symlink()


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


@pytest.mark.parametrize("profile", PROFILES)
def test_submission_rate_is_limited(profile):
    """The profiles' 5 jobs a second reach Snakemake's scheduler.

    Snakemake 9 ignores `max-jobs-per-second` whenever `max-jobs-per-timespan` has a
    value, and the latter defaults to 100/1s: the limit must be given as a timespan.
    The workflow profile is read last, as Snakemake does.
    """
    from snakemake.cli import get_argument_parser

    profiles = [REPO / "profiles" / profile, REPO / "profiles" / "default"]
    args = get_argument_parser(profiles=profiles).parse_args([])
    limit = args.max_jobs_per_timespan
    assert (limit.max_jobs, limit.timespan) == (5, 1.0)
