"""Secrets never reach disk, by any path: every file under the outputs is scanned for a planted key.

The judged sweep with the key in the environment is covered by test_judge_sweep.py (it scans the same way).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FAST, run_runner, sweep_dirs
from runner.replay import main as replay
from runner.secrets import SecretOverrideError, check_overrides
from runner.testing.fault_server import FaultServerProcess

KEY = "sk-test-PLANTED-secret-4242"


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def listing(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("secret-sweep")
    proc = run_runner(["-m", "format=gguf", "precision=fp16", *FAST, "fidelity.enabled=false"], root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = sweep_dirs(root)
    return path


@pytest.mark.parametrize("override", [
    "judge.api_key=sk-abcdefghij123",
    "hydra.job.env_set.OPENAI_API_KEY=sk-abcdefghij123",
    "hydra.job.env_set.HF_TOKEN=hf_abcdefghijklmnop",
    "judge.base_url=https://user:hunter2@judge.example.com/v1",
    "judge.server.extra_args=[--api_key,abc123]",
    "+judge.headers.Authorization=Bearer abc.def.ghi",
    "judge.model=sk-proj-abcdefghij",  # a key pasted into the wrong field: caught by its shape
])
def test_secret_overrides_are_refused_by_key_name_and_value_shape(override):
    with pytest.raises(SecretOverrideError, match="environment"):
        check_overrides([override])


@pytest.mark.parametrize("override", ["judge.api_key=${oc.env:MY_KEY}", "generation.max_tokens=64",
                                      "fidelity.tokens=256", "judge.base_url=http://127.0.0.1:8080/v1", "~judge.api_key"])
def test_ordinary_overrides_pass(override):
    check_overrides([override])


def test_env_set_override_is_refused_before_anything_is_written(tmp_path):
    proc = run_runner(["-m", "format=gguf", f"+hydra.job.env_set.OPENAI_API_KEY={KEY}", *FAST], tmp_path)
    assert proc.returncode == 2
    assert "hydra.job.env_set.OPENAI_API_KEY" in proc.stderr and "environment" in proc.stderr
    assert files_holding(tmp_path, KEY) == [] and not (tmp_path / "multirun").exists()


def test_rejudge_refuses_a_key_on_its_command_line_and_writes_nothing(sweep, capsys):
    before = listing(sweep)
    code = replay(["rejudge", str(sweep), "judge=openai", "judge.base_url=http://127.0.0.1:9/v1",
                   f"judge.api_key={KEY}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "judge.api_key" in err
    assert listing(sweep) == before and files_holding(sweep, KEY) == []


def test_rejudge_with_the_key_in_the_environment_writes_it_nowhere(sweep, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FaultServerProcess(fault_rate=0.0) as server:
        assert replay(["rejudge", str(sweep), "judge=openai", f"judge.base_url={server.base_url}"]) == 0
        assert server.stats()["requests"] > 0  # the key was used
    out = sweep / "rejudge-openai"
    assert (out / "0" / "result.json").exists()
    assert files_holding(sweep.parent.parent, KEY) == []  # the sweep, its rejudge and the store
    assert "${oc.env:OPENAI_API_KEY" in (out / "0" / ".hydra" / "config.yaml").read_text()
