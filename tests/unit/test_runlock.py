"""The outdir lock: a live run blocks, a dead one does not (blmm_scripts.runlock)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import asdict, replace

import pytest

from blmm_scripts.runlock import (
    LOCK_NAME,
    Holder,
    OutdirLockedError,
    acquire,
    read_holder,
)

HOLD = """
import sys, time
from blmm_scripts.runlock import acquire
acquire(sys.argv[1], "/elsewhere")
print("held", flush=True)
time.sleep(600)
"""


def write_holder(outdir, holder: Holder) -> None:
    """Write a lock file as a run that holds no kernel lock would have left it."""
    outdir.mkdir(exist_ok=True)
    (outdir / LOCK_NAME).write_text(json.dumps(asdict(holder)))


def dead_pid() -> int:
    """Return the pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_process_is_refused_until_the_holder_dies(tmp_path):
    """Another process holding the lock blocks; SIGKILLed, it no longer does."""
    out = tmp_path / "out dir"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(OutdirLockedError) as err:
            acquire(out, tmp_path)
        assert f"outdir {out} is in use by another BLMM run" in str(err.value)
        assert f"process {holder.pid} on host {socket.gethostname()}" in str(err.value)
        assert "/elsewhere" in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert read_holder(out / LOCK_NAME).pid == holder.pid  # left behind, stale
    lock = acquire(out, tmp_path)
    assert read_holder(out / LOCK_NAME).pid == os.getpid()
    lock.release()
    assert not (out / LOCK_NAME).exists()
    acquire(out, tmp_path).release()  # free again


@pytest.mark.parametrize(
    "stale",
    [
        pytest.param(lambda me: replace(me, pid=dead_pid()), id="dead pid"),
        pytest.param(
            lambda me: replace(me, pid=os.getppid(), boot_id="an-earlier-boot"),
            id="older boot",
        ),
        pytest.param(
            lambda me: replace(me, pid=os.getppid(), started=1), id="reused pid"
        ),
    ],
)
def test_stale_lock_does_not_block(tmp_path, stale):
    """A lock whose holder ran on this host and is gone is taken over."""
    out = tmp_path / "out"
    write_holder(out, stale(Holder.me(tmp_path)))
    acquire(out, tmp_path).release()


def test_live_holder_without_kernel_lock_blocks(tmp_path):
    """A live holder written in the file blocks even without a kernel lock.

    (As on a filesystem that cannot lock: the written holder decides.)
    """
    out = tmp_path / "out"
    parent = os.getppid()
    write_holder(out, replace(Holder.me(tmp_path), pid=parent, started=None))
    with pytest.raises(OutdirLockedError, match=f"process {parent} "):
        acquire(out, tmp_path)


def test_holder_on_another_host_blocks_and_says_what_to_remove(tmp_path):
    """A holder on another host cannot be checked: refused, with the file to remove."""
    out = tmp_path / "out"
    write_holder(out, replace(Holder.me(tmp_path), host="login2.example"))
    with pytest.raises(OutdirLockedError) as err:
        acquire(out, tmp_path)
    assert f"check on host login2.example), remove {out / LOCK_NAME}" in str(err.value)
