"""`python -m runner.store [--store DIR] ls | du | gc | verify`: what the artifact store holds, how big it is,
pruning it (never an entry a job holds) and re-hashing every file against the sha256 recorded at build time.

Exit status: 0; 1 when `verify` finds a corrupt entry; 2 on bad input (one `error:` line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import LeaseSettingsMismatch

from runner.locks import LOCK_KINDS, store_lock
from runner.records import write_text_atomic
from runner.store import MANIFEST, FileRecord, recorded, sha256_file
from runner.store_use import USES, Use, read_uses, try_lock, unused

DEFAULT_STORE = "outputs/store"  # the config's ${outputs_root}/store, from the launch dir
GIB = 1 << 30
TMP_MAX_AGE_S = 86400  # a `.tmp-*` dir untouched this long, with no build holding its key's lock, is a leftover
REMOVED = "removed.jsonl"  # audit: one line per entry gc or verify --delete removed


class UsageError(Exception):
    """Bad input: printed as one `error:` line, exit 2."""


@dataclass(frozen=True)
class Options:
    root: Path
    lock: str
    lease_s: float


@dataclass(frozen=True)
class StoredEntry:
    kind: str
    key: str
    path: Path
    bytes: int
    built_at: float
    last_used: float  # the latest use in uses.jsonl, else when it was built
    users: frozenset[str]  # job dirs that used it


def human(n: float) -> str:
    """Bytes as `du -h` prints them (powers of 1024)."""
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def sweep_of(user: str) -> str:
    """The sweep of a job dir (`multirun/<date>/<N>` → `multirun/<date>`; a single run is its own)."""
    path = Path(user)
    return str(path.parent) if path.name.isdigit() else str(path)


def tree_bytes(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total


def kinds(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def scan(root: Path, kind: str | None = None) -> list[StoredEntry]:
    """Every entry (a directory named by its key: no dot) of `kind`, or of every kind."""
    uses: dict[tuple[str, str], list[Use]] = defaultdict(list)
    for u in read_uses(root):
        uses[(u.kind, u.key)].append(u)
    entries = []
    for k in [kind] if kind else kinds(root):
        for d in sorted((root / k).iterdir()):
            if not d.is_dir() or "." in d.name:
                continue
            try:
                built = (d / MANIFEST if (d / MANIFEST).exists() else d).stat().st_mtime
            except FileNotFoundError:  # removed meanwhile
                continue
            used = uses.get((k, d.name), [])
            entries.append(StoredEntry(k, d.name, d, tree_bytes(d), built, max([built, *(u.at for u in used)]),
                                       frozenset(u.user for u in used if u.user)))
    return entries


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def ls(opts: Options, args: argparse.Namespace) -> int:
    entries = scan(opts.root, args.kind)
    if args.kind:
        table(("key", "size", "built at", "last used", "used by"),
              [(e.key[:12], human(e.bytes), when(e.built_at), when(e.last_used),
                ", ".join(sorted({sweep_of(u) for u in e.users})) or "-")
               for e in sorted(entries, key=lambda e: -e.last_used)])
        return 0
    rows = []
    for k in kinds(opts.root):
        mine = [e for e in entries if e.kind == k]
        rows.append((k, str(len(mine)), human(sum(e.bytes for e in mine)),
                     when(max(e.last_used for e in mine)) if mine else "-"))
    rows.append(("total", str(len(entries)), human(sum(e.bytes for e in entries)), ""))
    table(("kind", "entries", "size", "last used"), rows)
    return 0


def du(opts: Options, args: argparse.Namespace) -> int:
    for k in kinds(opts.root):
        print(f"{human(tree_bytes(opts.root / k))}\t{k}")
    print(f"{human(tree_bytes(opts.root))}\ttotal")
    return 0


def _aside(path: Path) -> Path:
    """Rename an entry out of the way (one atomic step: a reader sees it whole or not at all)."""
    gone = path.parent / f".tmp-{path.name[:16]}-removed-{uuid.uuid4().hex[:8]}"
    os.replace(path, gone)
    return gone


def _remove_unused(path: Path, opts: Options, dry_run: bool) -> str | None:
    """Remove an entry nobody builds or holds; else why it stays."""
    with try_lock(str(path) + ".lock", opts.lock, opts.lease_s) as free:
        if not free:
            return "in use (being built)"
        with unused(path, opts.lock, opts.lease_s) as idle:
            if not idle:
                return "in use by a running job"
            if dry_run:
                return None
            gone = _aside(path)
    shutil.rmtree(gone, ignore_errors=True)
    return None


def _log_removals(opts: Options, removed: list[StoredEntry], by: str) -> None:
    """Audit the removals and drop them from the use log (which keeps the latest use per entry and user)."""
    now = round(time.time(), 3)
    lines = "".join(json.dumps({"kind": e.kind, "key": e.key, "bytes": e.bytes, "by": by, "at": now,
                                "host": socket.gethostname(), "pid": os.getpid()}) + "\n" for e in removed)
    with store_lock(str(opts.root / REMOVED) + ".lock", opts.lock, opts.lease_s):
        with open(opts.root / REMOVED, "a") as f:
            f.write(lines)
    gone = {(e.kind, e.key) for e in removed}
    with store_lock(str(opts.root / USES) + ".lock", opts.lock, opts.lease_s):
        latest = {(u.kind, u.key, u.user): u for u in read_uses(opts.root) if (u.kind, u.key) not in gone}
        write_text_atomic(opts.root / USES, "".join(json.dumps(asdict(u)) + "\n" for u in latest.values()))


def _clean_tmp(opts: Options, kind: str | None, dry_run: bool) -> int:
    """Remove `.tmp-*` dirs older than a day that no build holds; their bytes."""
    freed = 0
    for k in [kind] if kind else kinds(opts.root):
        for tmp in sorted((opts.root / k).glob(".tmp-*")):
            if not tmp.is_dir() or time.time() - tmp.stat().st_mtime < TMP_MAX_AGE_S:
                continue
            prefix = tmp.name.split("-")[1]  # .tmp-<key[:16]>-<id>
            if any(_held(lock, opts) for lock in tmp.parent.glob(f"{prefix}*.lock")):
                continue
            size = tree_bytes(tmp)
            print(f"{'would remove' if dry_run else 'removed'} leftover {k}/{tmp.name} {human(size)}")
            if not dry_run:
                shutil.rmtree(tmp, ignore_errors=True)
            freed += size
    return freed


def _held(lock: Path, opts: Options) -> bool:
    with try_lock(lock, opts.lock, opts.lease_s) as free:
        return not free


def gc(opts: Options, args: argparse.Namespace) -> int:
    if (args.max_gb is not None and args.max_gb < 0) or (args.older_than is not None and args.older_than < 0):
        raise UsageError("--max-gb and --older-than must be >= 0")
    verb = "would remove" if args.dry_run else "removed"
    freed = _clean_tmp(opts, args.kind, args.dry_run)
    total = tree_bytes(opts.root) - (freed if args.dry_run else 0)
    limit = None if args.max_gb is None else args.max_gb * GIB
    cutoff = None if args.older_than is None else time.time() - args.older_than * 86400
    candidates = [] if limit is None and cutoff is None else sorted(
        (e for e in scan(opts.root, args.kind) if cutoff is None or e.last_used < cutoff), key=lambda e: e.last_used)
    removed = []
    for e in candidates:
        if limit is not None and total <= limit:
            break
        label = f"{e.kind} {e.key[:12]} {human(e.bytes)} (last used {when(e.last_used)})"
        if (why := _remove_unused(e.path, opts, args.dry_run)) is not None:
            print(f"kept {label}: {why}")
            continue
        print(f"{verb} {label}")
        removed.append(e)
        total -= e.bytes
    if removed and not args.dry_run:
        _log_removals(opts, removed, "gc")
    freed += sum(e.bytes for e in removed)
    print(f"{'would free' if args.dry_run else 'freed'} {human(freed)} ({len(removed)} entries); "
          f"store {'would be' if args.dry_run else 'now'} {human(total)}")
    return 0


def _problem(path: Path, rec: FileRecord) -> str | None:
    """How a file differs from its record (size first: a truncated file is not hashed)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != rec.bytes:
        return f"{size} bytes, built as {rec.bytes}"
    digest = sha256_file(path)
    return None if digest == rec.sha256 else f"sha256 {digest[:16]}…, built as {rec.sha256[:16]}…"


def verify(opts: Options, args: argparse.Namespace) -> int:
    corrupt: list[StoredEntry] = []
    unverifiable: Counter[str] = Counter()
    checked = hashed = 0
    for e in scan(opts.root, args.kind):
        try:
            manifest = json.loads((e.path / MANIFEST).read_text())
        except (OSError, ValueError) as err:
            print(f"corrupt: {e.kind} {e.key[:12]} {MANIFEST}: unreadable ({type(err).__name__})")
            corrupt.append(e)
            continue
        if "files" not in manifest:
            unverifiable[e.kind] += 1
            continue
        checked += 1
        problems = [(rec, external, p) for path, rec, external in recorded(manifest, e.path)
                    if (p := _problem(path, rec)) is not None]
        hashed += sum(r["bytes"] for r in manifest["files"] + manifest.get("external", []))
        for rec, external, problem in problems:
            print(f"corrupt: {e.kind} {e.key[:12]} {rec.path}{' (registered file)' if external else ''}: {problem}")
        if problems:
            corrupt.append(e)
    summary = f"verified {checked} entries ({human(hashed)}): {len(corrupt)} corrupt"
    if unverifiable:
        summary += (f"; unverifiable: built before file digests: "
                    + ", ".join(f"{n} {k}" for k, n in sorted(unverifiable.items())))
    print(summary)
    if args.delete and corrupt:
        for e in corrupt:
            with store_lock(str(e.path) + ".lock", opts.lock, opts.lease_s):
                gone = _aside(e.path)
            shutil.rmtree(gone, ignore_errors=True)
            print(f"deleted {e.kind} {e.key[:12]}: rebuilt on next use")
        _log_removals(opts, corrupt, "verify")
    return 1 if corrupt else 0


COMMANDS = {"ls": ls, "du": du, "gc": gc, "verify": verify}


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)  # accepted before or after the command
    common.add_argument("--store", default=argparse.SUPPRESS, help=f"the store dir (default {DEFAULT_STORE})")
    common.add_argument("--lock", choices=LOCK_KINDS, default=argparse.SUPPRESS,
                        help="the sweeps' store_lock (default file)")
    common.add_argument("--lease-s", type=float, default=argparse.SUPPRESS,
                        help="the sweeps' store_lease_s (default 60)")
    p = argparse.ArgumentParser(prog="python -m runner.store", parents=[common],
                                description="What the artifact store holds, its size, pruning it (never an entry a "
                                            "job holds), re-hashing its files. Exit 1: verify found corruption; "
                                            "2: bad input.")
    sub = p.add_subparsers(dest="command", required=True)
    kind = argparse.ArgumentParser(add_help=False)
    kind.add_argument("--kind", help="only entries of this kind (models, gguf, mlx, generations, ...)")
    sub.add_parser("ls", parents=[common, kind], help="entries, size and last use per kind (--kind: per entry)")
    sub.add_parser("du", parents=[common], help="bytes per kind and in all")
    g = sub.add_parser("gc", parents=[common, kind], help="remove least-recently-used entries no job holds")
    g.add_argument("--max-gb", type=float, help="remove until the store is under this many GiB")
    g.add_argument("--older-than", type=float, metavar="DAYS", help="only entries last used before DAYS ago")
    g.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    v = sub.add_parser("verify", parents=[common, kind], help="re-hash every file against its build-time sha256")
    v.add_argument("--delete", action="store_true", help="remove the corrupt entries (rebuilt on next use)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    opts = Options(Path(getattr(args, "store", DEFAULT_STORE)), getattr(args, "lock", "file"),
                   getattr(args, "lease_s", 60.0))
    try:
        if not opts.root.is_dir():
            raise UsageError(f"no store at {opts.root} (--store DIR)")
        if not (opts.root / "builds.jsonl").is_file():
            raise UsageError(f"{opts.root} is not a runner store (no builds.jsonl)")
        if getattr(args, "kind", None) and not (opts.root / args.kind).is_dir():
            raise UsageError(f"no kind {args.kind!r} in {opts.root} (kinds: {', '.join(kinds(opts.root)) or 'none'})")
        return COMMANDS[args.command](opts, args)
    except (UsageError, LeaseSettingsMismatch) as e:  # the latter: --lease-s is not the sweeps' store_lease_s
        print(f"error: {e}", file=sys.stderr)
        return 2
