"""One run per outdir: a lock file in outdir, held by the main Snakemake process.

Snakemake locks its working directory, so two runs started from different working
directories could otherwise share an ``outdir`` and overwrite each other's files.
The Snakefile's ``onstart`` handler, which only the main Snakemake process runs and
only when it is about to start jobs (never in a dry run, in ``--unlock`` or in a
job), calls :func:`acquire`; the process keeps the lock until it ends, also while
its jobs run on a cluster, and ``onsuccess``/``onerror`` release it.

The lock is ``<outdir>/.blmm.lock``.  It is held in two ways at once:

* a POSIX record lock (``fcntl.lockf``) on the open file, which the kernel (or the
  NFS lock manager) drops when the holder dies, however it dies;
* the holder written into the file: host, process id, the process's start time
  and the host's boot id.  A lock whose holder ran on this host is *stale* when
  that process is gone (no such pid, a pid reused by another process, or a boot id
  of an earlier boot), and a stale lock does not block.  A holder on another host
  cannot be checked from here: the run is refused with the file's path to remove
  once that run is known to have ended (a filesystem mounted without locking would
  otherwise let two hosts in).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

#: Name of the lock file inside outdir.
LOCK_NAME = ".blmm.lock"

#: errno values of a filesystem that cannot lock: the written holder decides alone.
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class OutdirLockedError(RuntimeError):
    """Another run holds the outdir; the message names the outdir and the holder."""


@dataclass(frozen=True)
class Holder:
    """The run that holds a lock, as written into the lock file."""

    host: str
    pid: int
    started: int | None  # process start time, clock ticks after boot
    boot_id: str | None
    workdir: str
    since: str

    @classmethod
    def me(cls, workdir: Path) -> Holder:
        """Return this process as a holder."""
        pid = os.getpid()
        return cls(
            socket.gethostname(),
            pid,
            _start_ticks(pid),
            _boot_id(),
            str(workdir),
            time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        )

    def describe(self) -> str:
        """Return the holder in words, for messages."""
        return (
            f"process {self.pid} on host {self.host}, working directory "
            f"{self.workdir}, since {self.since}"
        )


def _boot_id() -> str | None:
    """Return this host's boot id (changes at every boot), None if unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """Return a process's start time (clock ticks after boot), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_alive(holder: Holder) -> bool:
    """Return whether a holder may still be running.

    On this host: its boot id is this boot's, its pid exists and the process has
    the recorded start time (a reused pid is another process).  A holder on another
    host counts as alive: it cannot be checked from here.
    """
    if holder.host != socket.gethostname():
        return True
    if holder.boot_id is not None and holder.boot_id != _boot_id():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    started = _start_ticks(holder.pid)
    return holder.started is None or started is None or started == holder.started


def read_holder(path: Path) -> Holder | None:
    """Return the holder written in a lock file; None if empty, unreadable or gone."""
    try:
        return Holder(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError):
        return None


@dataclass
class OutdirLock:
    """A held lock: release it (or let the process end) to free the outdir."""

    path: Path
    fd: int | None

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()  # before the unlock: no one locks a removed file
        os.close(self.fd)
        self.fd = None


def _refusal(outdir: Path, path: Path, holder: Holder | None) -> OutdirLockedError:
    """Return the error for an outdir that another run holds."""
    who = holder.describe() if holder is not None else "a process that is starting"
    hint = (
        f"If that run has ended (check on host {holder.host}), remove {path} and "
        "run again."
        if holder is not None and holder.host != socket.gethostname()
        else "Wait for it to finish, or stop it, and run again."
    )
    return OutdirLockedError(
        f"outdir {outdir} is in use by another BLMM run ({who}); two runs must not "
        f"share an outdir, so nothing was run. {hint}"
    )


def acquire(outdir: Path, workdir: Path) -> OutdirLock:
    """Take the lock of an outdir for this process, or refuse.

    Parameters
    ----------
    outdir : Path
        Created if missing.
    workdir : Path
        This run's working directory, recorded for the message of a refused run.

    Raises
    ------
    OutdirLockedError
        If a live run holds the outdir; the message names the outdir and the run.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / LOCK_NAME
    me = Holder.me(Path(workdir))
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in _NO_LOCKING:
                os.close(fd)
                if err.errno in (errno.EACCES, errno.EAGAIN):
                    raise _refusal(outdir, path, read_holder(path)) from None
                raise
        try:
            same = path.stat().st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # released and removed between our open and lock: again
            os.close(fd)
            continue
        holder = read_holder(path)
        mine = holder is not None and (holder.host, holder.pid) == (me.host, me.pid)
        if holder is not None and not mine and is_alive(holder):
            os.close(fd)
            raise _refusal(outdir, path, holder)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(me)).encode(), 0)
        os.fsync(fd)
        return OutdirLock(path, fd)
