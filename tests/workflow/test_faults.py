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
from helpers import snakemake_command
from tiny_study import make_tiny_study

from blmm_scripts.runlock import LOCK_NAME, read_holder

pytestmark = pytest.mark.slow

# 4 image batches and 4 voxel batches (13 jobs): moments between jobs to kill at.
STUDY = {"MAXMEM": "3 * 8 * 960 * 4", "maxnvb": 4}


def run(workdir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run snakemake to the end; return the result."""
    return subprocess.run(
        snakemake_command(workdir, *args, **kwargs),
        capture_output=True,
        text=True,
        check=False,
    )


def start(workdir: Path, *args: str) -> subprocess.Popen:
    """Start snakemake in a process group of its own (output in workdir/run.log)."""
    log = (Path(workdir) / "run.log").open("a")
    return subprocess.Popen(
        snakemake_command(workdir, *args),
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
    """Return {relative path: md5} of the files below a folder matching a pattern."""
    return {
        str(path.relative_to(outdir)): hashlib.md5(path.read_bytes()).hexdigest()
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
    """SIGKILL of the maps job's process while it writes; the rerun redoes it alone.

    The job is killed once its first map is in place: Snakemake reports it as
    failed (and removes what it wrote); only maps is planned again.
    """
    make_tiny_study(tmp_path, **STUDY)
    out = tmp_path / "out"
    proc = start(tmp_path)
    pids = []

    def maps_started() -> bool:
        pids[:] = [p for p in _group_pids(proc.pid) if "maps.py" in _cmdline(p)]
        return bool(pids)

    assert wait_for(maps_started, proc), "the run ended before maps started"
    assert wait_for(new_file(out, "*blmm_vox_*"), proc)  # it writes the maps
    os.kill(pids[0], signal.SIGKILL)
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

    def holder_is_first() -> bool:
        return getattr(read_holder(out / LOCK_NAME), "pid", 0) == proc.pid

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


def image_paths(root: Path) -> list[Path]:
    """Return the images that the study's Y_files lists."""
    config = yaml.safe_load((root / "config.yaml").read_text())
    return [Path(line) for line in (root / config["Y_files"]).read_text().splitlines()]


def test_not_an_image_is_named_before_any_job(tmp_path):
    """A Y_files entry that is not an image stops the run at parse time, named."""
    make_tiny_study(tmp_path, **STUDY)
    bad = image_paths(tmp_path)[3]
    bad.write_text("subject,visit\n1,2\n")
    result = run(tmp_path)
    assert result.returncode != 0
    assert f"Y_files image 4: {bad} cannot be read as an image" in result.stderr
    assert not (tmp_path / "out").exists()  # no job ran


def test_unsupported_datatype_is_named_before_any_job(tmp_path):
    """A complex-valued image is refused at parse time, with its data type."""
    make_tiny_study(tmp_path, **STUDY)
    bad = image_paths(tmp_path)[2]
    img = nib.load(bad)
    data = np.asarray(img.dataobj).astype(np.complex64)
    nib.save(nib.Nifti1Image(data, img.affine), bad)
    result = run(tmp_path)
    assert result.returncode != 0
    assert f"{bad} cannot be read as an image" in result.stderr
    assert "data type complex64 is not supported" in result.stderr


def test_truncated_image_fails_its_batch_and_outdir_keeps_its_maps(tmp_path):
    """An image cut short fails its batch job naming the file; earlier maps stay.

    The header is intact (parse time passes); the data block is half missing.
    The maps of the earlier run, and the intermediates, are untouched; once the
    image is mended the same command gives the same maps again.
    """
    make_tiny_study(tmp_path, **STUDY)
    assert run(tmp_path).returncode == 0
    out = tmp_path / "out"
    before = md5s(out, "**/*.n*")
    bad = image_paths(tmp_path)[5]
    data = bad.read_bytes()
    bad.write_bytes(data[: 352 + (len(data) - 352) // 2])
    result = run(tmp_path)
    assert result.returncode != 0
    assert f"image {bad} cannot be read: the data block is cut short" in (result.stderr)
    after = md5s(out, "**/*.n*")  # plus the batch files of the batches that ran
    assert {name: after.get(name) for name in before} == before
    assert partial_files(out) == []
    # Mended, the image is newer than the maps: the same command redoes its batch
    # (the other batches' files are reused) and everything after it.
    bad.write_bytes(data)
    result = run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert md5s(out) == {k: v for k, v in before.items() if "/" not in k}


def test_nan_and_inf_are_missing_and_counted(tmp_path):
    """NaN and Inf values are missing, counted in the batch log.

    An image that is NaN everywhere is missing everywhere, and noted.
    """
    make_tiny_study(tmp_path, **STUDY)
    images = image_paths(tmp_path)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    inside = np.flatnonzero(
        np.asarray(nib.load(tmp_path / config["analysis_mask"]).dataobj)
    )
    some, every = images[0], images[7]
    for path in (some, every):
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32).copy()
        flat = data.reshape(-1)  # C order, as the voxel indices
        if path == every:
            flat[:] = np.nan
        else:
            flat[inside[:5]] = np.nan
            flat[inside[5:7]] = np.inf
            flat[inside[7]] = -np.inf
        nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    result = run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = "".join(
        p.read_text() for p in sorted((tmp_path / "out/work/logs/batch").glob("*"))
    )
    n_inside = inside.size
    assert f"{some}: 5 NaN and 3 Inf values of {n_inside}, taken as missing" in logs
    assert f"{every} is NaN or Inf at every voxel read: missing everywhere" in logs
    n = np.asarray(nib.load(tmp_path / "out/blmm_vox_n.nii").dataobj)
    assert n.max() <= len(images) - 1  # the NaN image is missing everywhere
    status = np.asarray(nib.load(tmp_path / "out/blmm_vox_status.nii").dataobj)
    assert status.size == 120


def test_odd_paths(tmp_path, reference):
    """Paths as users have them give the same maps.

    Spaces and non-ASCII letters in the working directory, outdir and image paths,
    images behind symlinks, and .nii mixed with .nii.gz.
    """
    root = tmp_path / "wörk dir ü"
    make_tiny_study(root, outdir="résultats d'été/out put", **STUDY)
    images = image_paths(root)
    moved = root / "bilder mit Leerzeichen ß"
    moved.mkdir()
    listed = []
    for i, path in enumerate(images):
        if i % 3 == 0:  # compressed
            target = moved / f"bild {i}.nii.gz"
            nib.save(nib.load(path), target)
        elif i % 3 == 1:  # a symlink to the image
            target = moved / f"verknüpft {i}.nii"
            target.symlink_to(path)
        else:
            target = moved / f"kopie {i}.nii"
            shutil.copy(path, target)
        listed.append(str(target))
    config = yaml.safe_load((root / "config.yaml").read_text())
    (root / config["Y_files"]).write_text("\n".join(listed) + "\n")
    result = run(root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert md5s(root / "résultats d'été" / "out put") == reference


@pytest.fixture
def small_disk(tmp_path):
    """Mount a 1 MiB tmpfs (root only); unmount it afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_writing_maps(tmp_path, small_disk, reference):
    """A full disk fails maps with a clear message and leaves nothing half-written.

    The earlier stages' files are intact, and after freeing space the same command
    redoes only the maps, bit-identical.

    The outdir lives on a 1 MiB tmpfs; the study needs ~0.5 MiB there before the
    maps, then a ballast file leaves room for a few maps only.
    """
    make_tiny_study(tmp_path, outdir=str(small_disk / "out"), **STUDY)
    out = small_disk / "out"
    result = run(tmp_path, "--until", "inference")
    assert result.returncode == 0, result.stderr[-3000:]
    before = md5s(out, "work/**/*.np*")
    free = shutil.disk_usage(small_disk).free
    ballast = small_disk / "ballast"
    with ballast.open("wb") as fh:  # leaves room for about three maps
        fh.write(b"\0" * max(free - 20_000, 0))
    result = run(tmp_path)
    assert result.returncode != 0
    assert "No space left on the device (disk full or quota) while writing" in (
        result.stderr
    )
    assert partial_files(out) == []
    assert md5s(out) == {}  # Snakemake removes the failed job's maps
    assert md5s(out, "work/**/*.np*") == before
    ballast.unlink()
    plan = run(tmp_path, "-n")
    assert "rule maps" in plan.stdout
    assert "rule inference" not in plan.stdout
    result = run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert md5s(out) == reference
