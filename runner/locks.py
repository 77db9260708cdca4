"""Locks for a store shared by many jobs, possibly on many hosts.

`file`: an OS lock (flock); the kernel releases it when its holder dies, wherever that happens. It needs a
filesystem with working `flock` (local disks; NFS only where locking is set up).
`soft`: filelock's `SoftFileLease`, a lock file holding its owner (host, pid) that the holder refreshes
while it holds it: a peer on the same host takes it over as soon as the owner's process is gone, a peer
elsewhere once it has not been refreshed for `lease_s` seconds. For NFS mounts without working `flock`.
Either way, taking over a lock left by a dead job is logged.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, SoftFileLease, Timeout

log = logging.getLogger(__name__)

LOCK_KINDS = ("file", "soft")
POLL_S = 0.5


def _holder(path: Path) -> tuple[int, str, float] | None:
    """(pid, host, last refresh) of a soft lock file, or None (no file, or not readable yet)."""
    try:
        refreshed = path.stat().st_mtime  # the holder's heartbeat touches the file
        fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        return int(fields["pid"]), fields["host"], refreshed
    except (OSError, KeyError, ValueError):
        return None


def _gone(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return False  # cannot tell from here: the lease expiry decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextmanager
def store_lock(path: str | Path, kind: str = "file", lease_s: float = 60.0) -> Iterator[None]:
    """Hold the lock at `path` (`kind`: file | soft) for the `with` block."""
    if kind not in LOCK_KINDS:
        raise ValueError(f"store_lock={kind!r}: expected one of {', '.join(LOCK_KINDS)}")
    path = Path(path)
    lock = FileLock(str(path)) if kind == "file" else SoftFileLease(str(path), lease_duration=lease_s)
    waited_on = _holder(path) if kind == "soft" else None
    while True:
        try:
            lock.acquire(timeout=POLL_S)
            break
        except Timeout:
            waited_on = _holder(path) if kind == "soft" else None
    if waited_on is not None:
        pid, host, refreshed = waited_on
        if _gone(pid, host):
            log.warning("took over the store lock %s left by pid %d on %s, which is no longer running", path, pid, host)
        elif time.time() - refreshed >= lease_s:  # not the time waited: a live holder refreshes, then releases
            log.warning("took over the store lock %s held by pid %d on %s, which stopped refreshing it for %.0f s",
                        path, pid, host, lease_s)
    try:
        yield
    finally:
        lock.release()
