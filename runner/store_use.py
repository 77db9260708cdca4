"""Who uses a store entry: the use log, and the holds that keep `gc` off entries a running job has loaded.

Uses: each Store appends one line per (kind, key) it hits or builds to `<root>/uses.jsonl`, naming its user
(the job dir). Lines are buffered: an artifact's use is written at once, small JSON entries in batches, the
rest when the Store is closed or collected.

Holds: a Store holds every artifact entry (`HELD_KINDS`) it looks up, for its own life. With `store_lock:
file` it is a shared flock on `<entry>.use`, dropped by the kernel when the job dies; `gc` tries to take it
exclusively under the entry's build lock, without waiting, and skips the entry if it cannot. With
`store_lock: soft` (no flock) it is a marker file `<entry>.users/<host>.<pid>.<id>` naming its owner,
refreshed while held, like the soft lock's lease: `gc` skips an entry with a marker whose owner still runs
(same host) or refreshed it within the lease (another host), and deletes stale markers. A soft holder
writes its marker, then waits for the entry's build lock, so it never reads an entry `gc` is removing.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, SoftFileLease, Timeout

from runner.locks import _gone, _holder, store_lock

HELD_KINDS = frozenset({"models", "gguf-base", "gguf", "mlx", "prebuilt", "fidelity-baseline"})
USES = "uses.jsonl"
FLUSH_EVERY = 256  # buffered use lines of small JSON entries (generations, judgments, checks)


@dataclass(frozen=True)
class Use:
    kind: str
    key: str
    user: str | None  # the job dir that used the entry
    at: float  # unix time
    event: str  # build | hit


class UseLog:
    """Buffered appends to `<root>/uses.jsonl`: one line per (kind, key) per log, i.e. per Store."""

    def __init__(self, root: Path, user: str | None, lock: str, lease_s: float):
        self.path, self.user, self.lock, self.lease_s = root / USES, user, lock, lease_s
        self._seen: set[tuple[str, str]] = set()
        self._buffer: list[Use] = []

    def add(self, kind: str, key: str, event: str) -> None:
        if (kind, key) in self._seen:
            return
        self._seen.add((kind, key))
        self._buffer.append(Use(kind, key, self.user, round(time.time(), 3), event))
        if kind in HELD_KINDS or len(self._buffer) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        lines = "".join(json.dumps(asdict(u)) + "\n" for u in self._buffer)
        with store_lock(str(self.path) + ".lock", self.lock, self.lease_s):
            with open(self.path, "a") as f:
                f.write(lines)
        self._buffer.clear()


def read_uses(root: Path) -> list[Use]:
    path = root / USES
    if not path.exists():
        return []
    return [Use(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


class Holds:
    """The entries one Store holds (see the module doc) until `release`."""

    def __init__(self, lock: str, lease_s: float):
        self.lock, self.lease_s = lock, lease_s
        self._held: dict[Path, int | Path] = {}  # entry → flock fd (file) or marker (soft)
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def hold(self, final: Path, locked: bool) -> None:
        """Hold `final` (idempotent). Waits while `gc` removes it; `locked`: the caller holds its build lock,
        so no `gc` can."""
        if final in self._held:
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        if self.lock == "file":
            self._held[final] = _shared_flock(Path(str(final) + ".use"))
            return
        users = Path(str(final) + ".users")
        users.mkdir(exist_ok=True)
        marker = users / f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        marker.write_text(f"pid={os.getpid()}\nhost={socket.gethostname()}\n")
        self._held[final] = marker
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._refresh, args=(self._stop,), daemon=True,
                                               name="store-holds")
            self._heartbeat.start()
        if not locked:  # gc removes under the build lock: wait for it, then the caller reads the manifest
            with store_lock(str(final) + ".lock", self.lock, self.lease_s):
                pass

    def _refresh(self, stop: threading.Event) -> None:
        while not stop.wait(max(self.lease_s / 3, 0.2)):
            for marker in self._held.copy().values():
                try:
                    os.utime(marker)  # type: ignore[arg-type]
                except OSError:
                    pass

    def release(self) -> None:
        self._stop.set()
        self._stop, self._heartbeat = threading.Event(), None
        for held in self._held.values():
            if isinstance(held, int):
                os.close(held)
            else:
                held.unlink(missing_ok=True)
        self._held.clear()


def _shared_flock(path: Path) -> int:
    """A shared flock on `path`, waiting while `gc` holds it; `gc` unlinks it with the entry, so retry until
    the lock is on the file the path names."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def try_lock(path: str | Path, lock: str, lease_s: float) -> Iterator[bool]:
    """The build lock at `path` if it is free now (True), without waiting."""
    held = FileLock(str(path)) if lock == "file" else SoftFileLease(str(path), lease_duration=lease_s)
    try:
        held.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        held.release()


@contextmanager
def unused(final: Path, lock: str, lease_s: float) -> Iterator[bool]:
    """True while no job holds `final` (see the module doc), keeping jobs from taking it until the block ends;
    drops stale soft markers. Call under the entry's build lock."""
    if any(_live(marker, lease_s) for marker in sorted(Path(str(final) + ".users").glob("*"))):
        yield False
        return
    use = Path(str(final) + ".use")
    try:  # soft: flock holds only from jobs run with store_lock=file
        fd = os.open(use, os.O_RDWR | (os.O_CREAT if lock == "file" else 0), 0o666)
    except FileNotFoundError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:
            if lock == "file":
                raise
        yield True
        if not final.exists():  # removed: its use-lock goes too (holders check they lock the named file)
            use.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _live(marker: Path, lease_s: float) -> bool:
    holder = _holder(marker)
    try:
        refreshed = marker.stat().st_mtime
    except FileNotFoundError:
        return False
    if (holder is not None and _gone(*holder[:2])) or time.time() - refreshed >= lease_s:
        marker.unlink(missing_ok=True)
        return False
    return True
