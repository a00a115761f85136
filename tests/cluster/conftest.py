"""Fixtures for the scheduler tests: SLURM or SGE, the example study, a local run.

The schedulers are started by tests/cluster/slurm.sh and sge.sh (root only, packages
from tests/cluster/install-schedulers.sh) once per session and stopped at its end; a
scheduler that cannot be started skips its tests with the reason, or fails them when
BLMM_REQUIRE_SCHEDULERS=1 (for CI, where both must work).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cluster_helpers import (
    EXAMPLE_ARGS,
    HERE,
    REPO,
    copy_study,
    read_maps,
    run_snakemake,
    tail,
)


def pytest_configure(config):
    """Register the markers used here."""
    config.addinivalue_line(
        "markers", "cluster: needs a real scheduler started on this machine (root)"
    )
    config.addinivalue_line(
        "markers", "slow: takes more than a few seconds (end-to-end Snakemake runs)"
    )


def _unavailable(reason: str):
    """Skip, or fail where the schedulers are required."""
    if os.environ.get("BLMM_REQUIRE_SCHEDULERS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


USERS_DIR = Path("/run/blmm-test-cluster")


def _alive(pid: int) -> bool:
    """Return whether a process exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _users(name: str, add: int | None = None, remove: int | None = None) -> set[int]:
    """Update and return the live test sessions using a scheduler (a locked PID file).

    Several test sessions may share one machine's scheduler; the last one out stops it.
    """
    USERS_DIR.mkdir(parents=True, exist_ok=True)
    path = USERS_DIR / f"{name}.users"
    with path.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        pids = {int(x) for x in f.read().split() if x.isdigit()}
        pids = {pid for pid in pids if _alive(pid)}
        if add is not None:
            pids.add(add)
        if remove is not None:
            pids.discard(remove)
        f.seek(0)
        f.truncate()
        f.write("".join(f"{pid}\n" for pid in sorted(pids)))
        return pids


def _scheduler(name: str, binary: str):
    """Start a scheduler with its script; yield; stop it when no session uses it."""
    if os.geteuid() != 0:
        _unavailable(f"{name}: starting the daemons needs root")
    if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists():
        _unavailable(
            f"{name}: {binary} not installed (tests/cluster/install-schedulers.sh)"
        )
    script = HERE / f"{name}.sh"
    _users(name, add=os.getpid())
    try:
        started = subprocess.run(
            [str(script), "start"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _users(name, remove=os.getpid())
        _unavailable(f"{name}: {script.name} start timed out")
    if started.returncode != 0:
        _users(name, remove=os.getpid())
        _unavailable(f"{name}: {script.name} start failed: {started.stderr[-2000:]}")
    yield name
    if not _users(name, remove=os.getpid()):
        subprocess.run(
            [str(script), "stop"], capture_output=True, timeout=120, check=False
        )


@pytest.fixture(scope="session")
def slurm():
    """Start a one-node SLURM for the session."""
    yield from _scheduler("slurm", "slurmctld")


@pytest.fixture(scope="session")
def sge():
    """Start a one-host SGE for the session."""
    yield from _scheduler("sge", "sge_qmaster")


@pytest.fixture(scope="session")
def example_data(tmp_path_factory) -> Path:
    """Run the example study of config/config.yaml locally (--cores 2, no profile).

    Returns its working directory: the simulated study in example/, the maps in
    results/example/. Other runs copy the study from here instead of simulating it.
    """
    root = tmp_path_factory.mktemp("local")
    shutil.copy(REPO / "config" / "config.yaml", root / "config.yaml")
    result = run_snakemake(root, "--cores", "2", *EXAMPLE_ARGS, timeout=300)
    assert result.returncode == 0, tail(result)
    return root


@pytest.fixture(scope="session")
def local_maps(example_data) -> dict:
    """Return the maps of the local run, by file name."""
    maps = read_maps(example_data / "results" / "example")
    assert maps, "the local run wrote no maps"
    return maps


@pytest.fixture
def study(example_data, tmp_path) -> Path:
    """Return a fresh working directory with the example study and config."""
    copy_study(example_data, tmp_path)
    return tmp_path
