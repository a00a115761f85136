"""Faults injected for real into runs of the workflow (README, Reliability).

SIGKILL of the whole run at several moments and of a single job, a second run on
the same outdir from another working directory, images that are not images or are
cut short, NaN images, paths with spaces, non-ASCII letters and symlinks, and a full
disk (a size-limited tmpfs).  After each fault the same command finishes and the
maps are bit-identical (md5) to an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from helpers import REPO
from tiny_study import make_tiny_study

from blmm_scripts.runlock import LOCK_NAME, read_holder

pytestmark = pytest.mark.slow

# 4 image batches and 4 voxel batches (13 jobs): moments between jobs to kill at.
STUDY = {"MAXMEM": "3 * 8 * 960 * 4", "maxnvb": 4}


def command(workdir: Path, *args: str, configfile: str = "config.yaml") -> list[str]:
    """Return the snakemake command a user types for the study in `workdir`."""
    return [
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(Path(workdir) / configfile),
        "--cores",
        "2",
        *args,
    ]


def run(workdir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run snakemake to the end; return the result."""
    return subprocess.run(
        command(workdir, *args, **kwargs), capture_output=True, text=True, check=False
    )


def start(workdir: Path, *args: str) -> subprocess.Popen:
    """Start snakemake in a process group of its own (output in workdir/run.log)."""
    log = (Path(workdir) / "run.log").open("a")
    return subprocess.Popen(
        command(workdir, *args),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen) -> bool:
    """Poll until `condition` holds (True) or the run ends first (False)."""
    while proc.poll() is None:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL Snakemake and every job it started (its process group)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def resume(workdir: Path) -> subprocess.CompletedProcess:
    """Type what README's Reliability section says after a crash.

    The same command; where Snakemake's own lock of the killed run stops it
    ("Directory cannot be locked"), the same command with --unlock, then again.
    """
    result = run(workdir)
    if result.returncode != 0 and "cannot be locked" in result.stderr:
        assert run(workdir, "--unlock").returncode == 0
        result = run(workdir)
    return result


def md5s(outdir: Path, pattern: str = "blmm_vox_*") -> dict[str, str]:
    """Return {file name: md5} of the files of a folder that match a pattern."""
    return {
        path.name: hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(Path(outdir).glob(pattern))
        if path.is_file()
    }


def partial_files(folder: Path) -> list[Path]:
    """Return temporary files of atomic writes left anywhere below a folder."""
    return sorted(Path(folder).rglob(".*.partial*"))


def new_file(folder: Path, pattern: str) -> Callable[[], bool]:
    """Return a condition: a file matching `pattern` appeared that was not there."""
    before = set(Path(folder).glob(pattern))
    return lambda: bool(set(Path(folder).glob(pattern)) - before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """Return the md5 of every map of an uninterrupted run of the study."""
    root = tmp_path_factory.mktemp("reference")
    make_tiny_study(root, **STUDY)
    result = run(root)
    assert result.returncode == 0, result.stderr[-3000:]
    maps = md5s(root / "out")
    assert len(maps) > 10
    return maps


def test_kill_whole_run_at_several_moments_then_resume(tmp_path, reference):
    """SIGKILL of the run's process group at four moments; the same command ends it.

    The moments: right after setup, after the first voxel batch's statistics,
    after its first fit, and while the maps are being written.  Each resume starts
    from what the killed run left; the outdir lock of the dead run does not block.
    """
    make_tiny_study(tmp_path, **STUDY)
    out = tmp_path / "out"
    moments = [
        "work/setup/design.npz",
        "work/vox/*/products.npz",
        "work/vox/*/fit.npz",
        "blmm_vox_*.nii",
    ]
    killed = []
    for pattern in moments:
        (tmp_path / ".snakemake" / "locks").mkdir(parents=True, exist_ok=True)
        for lock in (tmp_path / ".snakemake" / "locks").iterdir():
            lock.unlink()  # --unlock, as resume() does after a kill
        proc = start(tmp_path)
        if wait_for(new_file(out, pattern), proc):
            kill_run(proc)
            killed.append(pattern)
            assert read_holder(out / LOCK_NAME).pid == proc.pid  # left stale
    assert len(killed) >= 3, f"killed only at {killed}"
    result = resume(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert md5s(out) == reference
    assert partial_files(out) == []
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_kill_single_job_then_resume(tmp_path, reference):
    """SIGKILL of the maps job's process while it writes; the rerun redoes it alone."""
    make_tiny_study(tmp_path, **STUDY)
    out = tmp_path / "out"
    proc = start(tmp_path)

    def maps_writing() -> bool:
        return bool(list(out.glob("blmm_vox_*"))) or bool(partial_files(out))

    assert wait_for(maps_writing, proc), "the run ended before maps was seen"
    for pid in _group_pids(proc.pid):
        if "maps.py" in _cmdline(pid):
            os.kill(pid, signal.SIGKILL)
    assert proc.wait() != 0
    plan = run(tmp_path, "-n")
    assert "maps" in plan.stdout
    assert "rule estimate" not in plan.stdout, plan.stdout
    result = resume(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert md5s(out) == reference
    assert partial_files(out) == []


def _group_pids(pgid: int) -> list[int]:
    """Return the processes of a process group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                pass
    return pids


def _cmdline(pid: int) -> str:
    """Return a process's command line ('' once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_second_run_on_same_outdir_is_refused(tmp_path, reference):
    """A run from another working directory on a busy outdir stops before any job.

    The first run is frozen (SIGSTOP) while it holds the lock; the second's message
    names the outdir, it changes no file there, and the first then finishes.
    """
    first, second = tmp_path / "first", tmp_path / "second"
    out = tmp_path / "shared out"
    for root in (first, second):
        make_tiny_study(root, outdir=str(out), **STUDY)
    proc = start(first)
    holder_is_first = lambda: getattr(read_holder(out / LOCK_NAME), "pid", 0) == proc.pid  # noqa: E731
    assert wait_for(holder_is_first, proc)
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        result = run(second)
        after = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    assert result.returncode != 0
    assert f"outdir {out} is in use by another BLMM run" in result.stderr
    assert f"process {proc.pid}" in result.stderr
    assert after == before
    assert not list((second / ".snakemake" / "locks").glob("*"))  # no stale lock
    assert proc.wait() == 0
    assert md5s(out) == reference
    # the outdir is free again: the second run is not refused
    assert run(second).returncode == 0
