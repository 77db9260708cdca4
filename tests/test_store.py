"""A store you can audit: damaged entries rebuilt on hit, `python -m runner.store` ls / du / gc / verify."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from runner.backends.gguf import GGUFBackend
from runner.backends.mlx import MLXBackend
from runner.cell import load_option as group
from runner.model_source import check_hf_folder, content_hash
from runner.records import ArtifactInfo, ModelSourceInfo
from runner.store import Store
from runner.store_cli import human


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.store", "--store", str(root), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def prepare(fmt: str, precision: str, store: Store, model: Path) -> ArtifactInfo:
    """A real build: GGUF from the tiny model's F16 GGUF (registered, not converted), MLX from its HF folder."""
    if fmt == "gguf":
        source = ModelSourceInfo("tiny", "gguf", str(model), f"gguf:{store.file_digest(model)}", gguf_path=str(model),
                                 gguf_type="F16")
        return GGUFBackend().prepare(model.parent, source, group("precision", precision), group("format", "gguf"), store)
    source = ModelSourceInfo("tiny", "local", str(model), content_hash(model, store), n_params=check_hf_folder(model))
    return MLXBackend().prepare(model, source, group("precision", precision), group("format", "mlx"), store)


def artifact(store: Store, i: int, size: int = 4096, kind: str = "gguf") -> Path:
    """A small artifact entry with one real file."""
    return store.get_or_build(kind, {"i": i}, lambda tmp: (tmp / "model.gguf").write_bytes(os.urandom(size)) and {}).path


def test_a_truncated_gguf_in_the_store_is_rebuilt_with_one_warning(tmp_path, tiny_gguf, caplog):
    art = prepare("gguf", "q4_0", Store(tmp_path / "store"), tiny_gguf)
    path = Path(art.path)
    size = path.stat().st_size
    with open(path, "r+b") as f:  # a partial rsync, a full disk
        f.truncate(size // 2)
    with caplog.at_level(logging.WARNING):
        again = prepare("gguf", "q4_0", Store(tmp_path / "store"), tiny_gguf)
    assert again.key == art.key and not again.cache_hit and path.stat().st_size == size
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.name == "runner.store"
    for part in ("gguf", art.key[:12], "model.gguf", f"{size // 2} bytes", f"recorded as {size} bytes"):
        assert part in warning.getMessage()


@pytest.mark.parametrize("fmt,precision,name", [("gguf", "q4_0", "model.gguf"),
                                                ("mlx", "fp16", "model/model.safetensors")])
def test_verify_names_a_flipped_byte_and_delete_makes_the_next_prepare_rebuild(tmp_path, tiny_gguf, tiny_model_dir,
                                                                            fmt, precision, name):
    model = tiny_gguf if fmt == "gguf" else tiny_model_dir
    root = tmp_path / "store"
    art = prepare(fmt, precision, Store(root), model)
    entry = root / fmt / art.key
    assert cli(root, "verify").returncode == 0
    with open(entry / name, "r+b") as f:  # same size: only the hash can tell
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    found = cli(root, "verify")
    assert found.returncode == 1
    assert f"corrupt: {fmt} {art.key[:12]} {name}: sha256 " in found.stdout
    assert "1 corrupt" in found.stdout.splitlines()[-1]
    deleted = cli(root, "verify", "--delete", "--kind", fmt)
    assert deleted.returncode == 1 and f"deleted {fmt} {art.key[:12]}" in deleted.stdout
    assert not entry.exists()
    again = prepare(fmt, precision, Store(root), model)
    assert again.key == art.key and not again.cache_hit
    assert cli(root, "verify").returncode == 0


HOLDER = """
import json, sys, time
from pathlib import Path
from runner.store import Store
from runner.store_cli import human
root, lock, payload, ready = sys.argv[1:]
store = Store(root, lock=lock, lease_s=2.0)
assert store.lookup("gguf", json.loads(payload)) is not None
Path(ready).write_text("held")
time.sleep(120)
"""


@pytest.mark.parametrize("lock", ["file", "soft"])
def test_gc_never_removes_an_entry_a_running_job_holds(tmp_path, lock):
    root = tmp_path / "store"
    store = Store(root, lock=lock, lease_s=2.0)
    paths = [artifact(store, i) for i in range(3)]
    store.put_json("generations", {"g": 1}, {"text": "hi"})
    store.close()  # this process holds nothing now
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), lock, json.dumps({"i": 1}), str(ready)],
                              cwd=REPO)
    try:
        deadline = time.time() + 30
        while not ready.exists() and holder.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists()
        time.sleep(2.5 if lock == "soft" else 0)  # past the lease: a refreshed marker still counts
        gc = cli(root, "--lock", lock, "--lease-s", "2", "gc", "--max-gb", "0")
        assert gc.returncode == 0, gc.stderr
        assert f"kept gguf {paths[1].name[:12]}" in gc.stdout and "in use by a running job" in gc.stdout
        assert [p.exists() for p in paths] == [False, True, False]
        assert not any(d.is_dir() for d in (root / "generations").iterdir())
        assert "freed " in gc.stdout.splitlines()[-1]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    again = cli(root, "--lock", lock, "--lease-s", "2", "gc", "--max-gb", "0")  # its holder is gone
    assert f"removed gguf {paths[1].name[:12]}" in again.stdout and not paths[1].exists()
    removed = [json.loads(line) for line in (root / "removed.jsonl").read_text().splitlines()]
    assert len(removed) == 4 and {r["by"] for r in removed} == {"gc"}


def test_gc_older_than_and_leftover_temp_dirs(tmp_path):
    root = tmp_path / "store"
    store = Store(root)
    old, new = artifact(store, 0), artifact(store, 1)
    store.close()
    month_ago = time.time() - 30 * 86400
    os.utime(old / "manifest.json", (month_ago, month_ago))
    uses = [json.loads(line) for line in (root / "uses.jsonl").read_text().splitlines()]
    (root / "uses.jsonl").write_text("".join(json.dumps({**u, "at": month_ago if u["key"] == old.name else u["at"]})
                                             + "\n" for u in uses))
    leftover = root / "gguf" / ".tmp-0123456789abcdef-deadbeef"  # a build killed two days ago
    leftover.mkdir()
    (leftover / "model.gguf").write_bytes(b"x" * 1000)
    os.utime(leftover, (month_ago, month_ago))
    dry = cli(root, "gc", "--older-than", "7", "--dry-run")
    assert f"would remove gguf {old.name[:12]}" in dry.stdout and old.exists() and leftover.exists()
    done = cli(root, "gc", "--older-than", "7")
    assert done.returncode == 0 and f"removed gguf {old.name[:12]}" in done.stdout
    assert not old.exists() and new.exists() and not leftover.exists()
    assert old.name not in (root / "uses.jsonl").read_text() and new.name in (root / "uses.jsonl").read_text()


def test_ls_and_du_name_kinds_counts_sizes_and_sweeps(tmp_path):
    root = tmp_path / "store"
    job = tmp_path / "multirun" / "2025-01-02" / "3"
    store = Store(root, user=job)
    gguf = [artifact(store, i, size=100_000) for i in range(3)]
    mlx = artifact(store, 9, size=2_000_000, kind="mlx")
    for i in range(5):
        store.put_json("generations", {"g": i}, {"text": "hi"})
    store.close()

    def size(*entries: Path) -> str:
        return human(sum(f.stat().st_size for e in entries for f in e.rglob("*")))

    assert (human(512), human(1536), human(3 * 2**30)) == ("512B", "1.5K", "3.0G")
    listing = cli(root, "ls")
    assert listing.returncode == 0 and listing.stdout.split()[:4] == ["kind", "entries", "size", "last"]
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert rows["gguf"][1:3] == ["3", size(*gguf)] and rows["mlx"][1:3] == ["1", size(mlx)]
    assert rows["generations"][1] == "5" and rows["total"][1] == "9"
    per_entry = cli(root, "ls", "--kind", "gguf").stdout.splitlines()
    assert per_entry[0].split() == ["key", "size", "built", "at", "last", "used", "used", "by"]
    assert sorted(line.split()[:2] for line in per_entry[1:]) == sorted([e.name[:12], size(e)] for e in gguf)
    assert all(line.endswith(str(job.parent)) for line in per_entry[1:])  # the sweep that used it
    du = dict(line.split("\t")[::-1] for line in cli(root, "du").stdout.splitlines())
    assert set(du) == {"generations", "gguf", "mlx", "total"} and du["mlx"] == size(root / "mlx")
    assert du["total"] == size(root)


def test_bad_store_dir_is_one_error_line_and_exit_2(tmp_path):
    for root, says in [(tmp_path / "nope", "no store at"), (tmp_path, "is not a runner store")]:
        proc = cli(root, "ls")
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: ") and says in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    Store(tmp_path / "store").put_json("generations", {"g": 1}, {})
    proc = cli(tmp_path / "store", "verify", "--kind", "ggfu")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: no kind 'ggfu' in {tmp_path / 'store'} (kinds: generations)")


def test_a_changed_registered_file_is_an_error_naming_it(tmp_path, tiny_gguf):
    """A store entry registers the user's own GGUF by path; the same content given from another path hits it."""
    first, second = tmp_path / "first.gguf", tmp_path / "second.gguf"
    for path in (first, second):
        path.write_bytes(tiny_gguf.read_bytes())
    prepare("gguf", "q4_0", Store(tmp_path / "store"), first)
    with open(first, "ab") as f:  # the user replaced their file under the same path
        f.write(b"\0" * 64)
    with pytest.raises(ValueError, match=f"{first} changed after it was registered in the store"):
        prepare("gguf", "q4_0", Store(tmp_path / "store"), second)


def test_entries_built_before_file_lists_stay_valid_and_are_unverifiable(tmp_path):
    root = tmp_path / "store"
    store = Store(root)
    path = artifact(store, 0)
    manifest = json.loads((path / "manifest.json").read_text())
    for field in ("files", "external"):
        manifest.pop(field)
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "model.gguf").write_bytes(b"short")  # nothing recorded: nothing to check on a hit
    assert Store(root).lookup("gguf", {"i": 0}) is not None
    proc = cli(root, "verify")
    assert proc.returncode == 0
    assert proc.stdout.strip() == "verified 0 entries (0B): 0 corrupt; unverifiable: built before file digests: 1 gguf"
