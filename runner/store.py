"""Content-addressed artifact store: key → directory, one builder per key, atomic publish.

`Store.get_or_build(kind, payload, build)` hashes `payload` (everything the content depends on, never
paths or timestamps) into a key. If `<root>/<kind>/<key>/manifest.json` exists the entry is reused.
Otherwise, under a file lock, `build(tmp_dir)` fills a temp dir that is then renamed into place, so a
killed build leaves no half entry. Every build appends a line to `<root>/builds.jsonl` (audit trail
and build counter).

The manifest lists every file of the entry (`files`: path, bytes, sha256) and every file outside the store
it registers (`external`: a user's GGUF or prebuilt folder). A hit checks that each exists with its size: a
damaged entry is rebuilt (one warning), a changed external file is an error. Uses and holds (who may still
read an entry, so `gc` leaves it): runner/store_use.py; the `python -m runner.store` commands:
runner/store_cli.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from runner.locks import store_lock
from runner.records import write_text_atomic
from runner.store_use import HELD_KINDS, Holds, UseLog

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def hash_payload(payload: Any) -> str:
    """Stable sha256 of a JSON-serialisable payload."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def ensure_writable(path: Path) -> None:
    """Create `path` if needed and prove it writable; raises OSError otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".probe-{uuid.uuid4().hex}"
    probe.touch()
    probe.unlink()


@dataclass
class Entry:
    key: str
    path: Path
    manifest: dict[str, Any]
    cache_hit: bool


@dataclass(frozen=True)
class FileRecord:
    """One file of an entry as built: `path` relative to the entry (absolute for an external file)."""

    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Damage:
    """A recorded file that is missing or no longer has its recorded size."""

    file: Path
    expected: int
    found: int | None  # None: missing
    external: bool

    @property
    def sizes(self) -> str:
        return f"{'missing' if self.found is None else f'{self.found} bytes'}, recorded as {self.expected} bytes"

    def __str__(self) -> str:
        return f"{self.file}: {self.sizes}"


def entry_files(entry_dir: Path) -> list[FileRecord]:
    """Every file under `entry_dir` but its manifest, hashed."""
    files = sorted(p for p in entry_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
    return [FileRecord(str(p.relative_to(entry_dir)), p.stat().st_size, sha256_file(p)) for p in files]


def recorded(manifest: dict[str, Any], entry_dir: Path) -> list[tuple[Path, FileRecord, bool]]:
    """(path, record, external) of every file a manifest lists; empty for entries built before file lists."""
    own = [(entry_dir / r["path"], FileRecord(**r), False) for r in manifest.get("files", [])]
    return own + [(Path(r["path"]), FileRecord(**r), True) for r in manifest.get("external", [])]


def find_damage(manifest: dict[str, Any], entry_dir: Path) -> Damage | None:
    """The first recorded file that is missing or changed size (a stat per file: cheap)."""
    for path, rec, external in recorded(manifest, entry_dir):
        try:
            size: int | None = path.stat().st_size
        except FileNotFoundError:
            size = None
        if size != rec.bytes:
            return Damage(path, rec.bytes, size, external)
    return None


@dataclass
class Refresh:
    """One run that recomputes instead of reusing (`replay reproduce`), shared by the Stores of its cells:
    `kinds` are recomputed once per run; entries built in the run (`built`) are never reported as cache hits,
    so the baseline's answers regenerated for one cell count as regenerated in the baseline's own cell too."""

    kinds: frozenset[str] = frozenset()
    built: set[tuple[str, str, str]] = field(default_factory=set)  # (root, kind, key)


class Store:
    """`refresh`: the run this store serves when it recomputes (`replay reproduce`, see `Refresh`); None: reuse.
    `lock`, `lease_s`: how jobs sharing the store exclude each other (runner/locks.py).
    `user`: who uses the store (the job dir), recorded in `uses.jsonl`. Artifact entries looked up stay held
    (kept from `gc`) until `close()`, or until the Store is collected or the process ends."""

    def __init__(self, root: str | Path, refresh: Refresh | None = None, lock: str = "file",
                 lease_s: float = 60.0, user: str | Path | None = None):
        self.root = Path(root)
        self.refresh = refresh
        self.lock_kind, self.lease_s = lock, lease_s
        try:
            ensure_writable(self.root)
        except OSError as e:
            raise PermissionError(f"artifact store '{self.root}' is not writable ({e}); set store_dir") from e
        self._uses = UseLog(self.root, None if user is None else str(user), lock, lease_s)
        self._holds = Holds(lock, lease_s)
        weakref.finalize(self, _close, self._uses, self._holds)  # when collected, or at exit

    def close(self) -> None:
        """Write the buffered uses and release the held entries (the Store stays usable)."""
        _close(self._uses, self._holds)

    def _locked(self, path: str):  # type: ignore[no-untyped-def]
        return store_lock(path, self.lock_kind, self.lease_s)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def _built_in_run(self, kind: str, key: str) -> bool:
        return self.refresh is not None and (str(self.root), kind, key) in self.refresh.built

    def _must_refresh(self, kind: str, key: str) -> bool:
        return self.refresh is not None and kind in self.refresh.kinds and not self._built_in_run(kind, key)

    def lookup(self, kind: str, payload: Any) -> Entry | None:
        """The whole entry for `payload`, or None (missing, or damaged: `get_or_build` rebuilds it). A file
        outside the store that the entry registers and that changed since is a ValueError."""
        return self._hit(kind, hash_payload(payload), locked=False)[0]

    def _hit(self, kind: str, key: str, locked: bool) -> tuple[Entry | None, Damage | None]:
        if self._must_refresh(kind, key):
            return None, None
        final = self.path(kind, key)
        if kind in HELD_KINDS:
            self._holds.hold(final, locked)
        try:
            manifest = json.loads((final / MANIFEST).read_text())
        except FileNotFoundError:
            return None, None
        damage = find_damage(manifest, final)
        if damage is None:
            self._uses.add(kind, key, "hit")
            return Entry(key, final, manifest, not self._built_in_run(kind, key)), None
        if damage.external:
            raise ValueError(f"{damage.file} changed after it was registered in the store ({damage.sizes}): "
                             f"restore it, or delete {final} to register the file as it is now")
        return None, damage

    def get_or_build(
        self, kind: str, payload: Any, build: Callable[[Path], dict[str, Any] | None]
    ) -> Entry:
        """Return the entry for `payload`, building it once (across processes) if missing.

        `build(tmp_dir)` writes the content into `tmp_dir` and returns extra manifest fields.
        """
        key = hash_payload(payload)
        final = self.path(kind, key)
        if (hit := self.lookup(kind, payload)) is not None:
            return hit
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(str(final) + ".lock"):
            hit, damage = self._hit(kind, key, locked=True)
            if hit is not None:
                return hit
            if damage is not None:
                log.warning("store %s %s is damaged (%s): rebuilding it", kind, key[:12], damage)
            for stale in final.parent.glob(f".tmp-{key[:16]}-*"):  # left by a killed build; we hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.parent / f".tmp-{key[:16]}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            t0 = time.perf_counter()
            try:
                extra = build(tmp) or {}
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            manifest = {"kind": kind, "key": key, "payload": payload, "build_s": time.perf_counter() - t0, **extra,
                        "files": [asdict(r) for r in entry_files(tmp)],
                        "external": [asdict(r) for r in self._external(extra, tmp)]}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            if final.exists():  # a refreshed or damaged entry, or a leftover without manifest
                shutil.rmtree(final)
            os.replace(tmp, final)
            if self.refresh is not None:
                self.refresh.built.add((str(self.root), kind, key))
            self._log_build(kind, key, manifest["build_s"])
            if kind in HELD_KINDS:
                self._holds.hold(final, locked=True)
            self._uses.add(kind, key, "build")
            return Entry(key, final, manifest, False)

    def _external(self, extra: dict[str, Any], tmp: Path) -> list[FileRecord]:
        """The files outside the store an entry registers (manifest `file` when not in the entry, `dir`)."""
        paths: list[Path] = []
        if (file := extra.get("file")) and (Path(file).is_absolute() or not (tmp / file).exists()):
            paths.append(Path(file).resolve())
        if extra.get("dir"):
            paths += sorted(p for p in Path(extra["dir"]).rglob("*") if p.is_file() and not p.name.startswith("."))
        return [FileRecord(str(p), p.stat().st_size, self.file_digest(p)) for p in paths]

    def put_json(self, kind: str, payload: Any, record: dict[str, Any]) -> Entry:
        """Cache a small JSON result (generation, judgment) under its payload key."""
        return self.get_or_build(kind, payload, lambda tmp: {"record": record})

    def file_digest(self, path: Path) -> str:
        """sha256 of a file, memoized by (resolved path, size, mtime_ns) in `<root>/digests.json`."""
        st = path.stat()
        ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        memo_path = self.root / "digests.json"
        with self._locked(str(memo_path) + ".lock"):
            memo = json.loads(memo_path.read_text()) if memo_path.exists() else {}
        if ident in memo:
            return memo[ident]
        digest = sha256_file(path)
        with self._locked(str(memo_path) + ".lock"):
            memo = json.loads(memo_path.read_text()) if memo_path.exists() else {}
            memo[ident] = digest
            write_text_atomic(memo_path, json.dumps(memo, indent=0, sort_keys=True))
        return digest

    def builds(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Build log entries (for tests and benchmarks: how many conversions happened)."""
        log = self.root / "builds.jsonl"
        if not log.exists():
            return []
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r["kind"] == kind]

    def _log_build(self, kind: str, key: str, build_s: float) -> None:
        with self._locked(str(self.root / "builds.jsonl.lock")):
            with open(self.root / "builds.jsonl", "a") as f:
                f.write(json.dumps({"kind": kind, "key": key, "build_s": round(build_s, 4), "pid": os.getpid(),
                                    "host": socket.gethostname(), "slurm_job": os.environ.get("SLURM_JOB_ID")}) + "\n")


def _close(uses: UseLog, holds: Holds) -> None:
    try:
        uses.flush()
    finally:
        holds.release()


if __name__ == "__main__":
    from runner.store_cli import main

    raise SystemExit(main())
