"""Bad input: one clear error naming the file, key or value at fault; nothing computed is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FAST, run_runner
from runner.records import read_cell_record

NO_FID = [*FAST, "fidelity.enabled=false"]


def output(proc) -> str:
    return proc.stdout + proc.stderr


def single_record(root: Path):
    (path,) = (root / "runs").glob("*/result.json")
    return read_cell_record(path)


def failed(root: Path, args: list[str], env=None) -> str:
    proc = run_runner([*args, *NO_FID], root, env=env)
    assert proc.returncode == 1, output(proc)[-2000:]
    rec = single_record(root)
    assert rec.status == "failed" and rec.reason
    assert rec.reason in output(proc)
    return rec.reason


def test_unknown_group_option(tmp_path):
    proc = run_runner(["format=foo", *NO_FID], tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'format/foo'" in output(proc) and "gguf" in output(proc)


def test_invalid_pair_is_skipped_not_an_error(tmp_path):
    proc = run_runner(["format=mlx", "precision=q4_k_m", *NO_FID], tmp_path)
    assert proc.returncode == 0, output(proc)
    rec = single_record(tmp_path)
    assert rec.status == "skipped" and "q4_k_m" in rec.reason and "mlx" in rec.reason


def test_model_path_missing(tmp_path):
    reason = failed(tmp_path, ["model=local", f"model.path={tmp_path}/nope"])
    assert "does not exist" in reason and "nope" in reason


def test_model_path_not_a_hf_folder(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"x")
    reason = failed(tmp_path, ["model=local", f"model.path={tmp_path}/m"])
    assert "not a Hugging Face model folder" in reason


def test_hub_model_offline(tmp_path):
    reason = failed(tmp_path, ["model=qwen3_0_6b"], env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert "Qwen/Qwen3-0.6B" in reason and "offline" in reason


def test_truncated_safetensors(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    reason = failed(tmp_path, ["model=local", f"model.path={model}"])
    assert "truncated or corrupt safetensors" in reason and "model.safetensors" in reason


def test_truncated_gguf_artifact_in_store_is_rebuilt(tmp_path):
    proc = run_runner(["precision=q4_0", *NO_FID], tmp_path)
    assert proc.returncode == 0, output(proc)
    artifact = Path(single_record(tmp_path).artifact.path)
    size = artifact.stat().st_size
    artifact.write_bytes(artifact.read_bytes()[: size // 2])  # a partial copy of a shared store, a full disk
    shutil.rmtree(tmp_path / "runs")
    proc = run_runner(["precision=q4_0", *NO_FID], tmp_path)
    assert proc.returncode == 0, output(proc)
    rec = single_record(tmp_path)
    assert rec.status == "ok" and not rec.artifact.cache_hit and artifact.stat().st_size == size
    log = next((tmp_path / "runs").glob("*/runner.log")).read_text()
    assert log.count("is damaged") == 1 and f"{size // 2} bytes, recorded as {size} bytes" in log
    builds = [json.loads(line)["kind"] for line in (tmp_path / "store" / "builds.jsonl").read_text().splitlines()]
    assert builds.count("gguf-base") == 1 and builds.count("gguf") == 2  # only the damaged entry was rebuilt


@pytest.mark.parametrize("content,expected", [
    (None, "prompts file not found"),
    ('{"id": "a", "category": "c", "prompt": "p"}\n{"id": "b", "category": "c", "prompt": \n', "malformed JSON line"),
    ('{"id": "a", "category": "c", "prompt": "p"}\n{"id": "a", "category": "c", "prompt": "q"}\n', "duplicate prompt id 'a'"),
])
def test_bad_prompts_file(tmp_path, content, expected):
    path = tmp_path / "prompts.jsonl"
    if content is not None:
        path.write_text(content)
    reason = failed(tmp_path, ["prompts=file", f"prompts.file={path}"])
    assert expected in reason and "prompts.jsonl" in reason


def test_prompts_file_works(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"p{i}", "category": "c", "prompt": f"say {i}"}) for i in range(2)))
    proc = run_runner(["prompts=file", f"prompts.file={path}", *NO_FID], tmp_path)
    assert proc.returncode == 0, output(proc)
    assert [r.prompt_id for r in single_record(tmp_path).results] == ["p0", "p1"]


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_tokens_not_positive(tmp_path, value):
    """Invalid on its face: refused for every job before any cell runs (exit 2), not a failed cell."""
    proc = run_runner(["-m", "format=gguf,mlx", "precision=fp16,q4_0", *NO_FID, f"generation.max_tokens=4,{value}"],
                      tmp_path)
    assert proc.returncode == 2
    assert f"error: generation.max_tokens must be > 0, got {value}" in proc.stderr and "nothing was run" in proc.stderr
    assert f"(job 1: format=gguf precision=fp16 generation.max_tokens={value}" in proc.stderr
    assert "and 2 more jobs" in proc.stderr  # gguf q4_0 and mlx fp16 too; mlx × q4_0 is skipped, not an error
    assert not list(tmp_path.glob("multirun/*/*/result.json")) and not (tmp_path / "store").exists()


def test_unwritable_outputs_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_runner(NO_FID, blocker / "out")
    assert proc.returncode == 2
    assert "is not writable" in proc.stderr and str(blocker) in proc.stderr


def test_secret_on_the_command_line_is_refused_before_anything_is_written(tmp_path):
    proc = run_runner(["judge=openai", "judge.api_key=sk-live-abc123", *NO_FID], tmp_path)
    assert proc.returncode == 2
    assert "judge.api_key: a secret key (judge.api_key) given on the command line" in proc.stderr
    assert not any("sk-live-abc123" in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())


def test_a_failing_matrix_at_the_end_of_a_sweep_exits_1_with_one_clear_line(tmp_path):
    """Hydra swallows exceptions raised in its callbacks: the runner must not exit 0 without a matrix."""
    sweep = tmp_path / "sweep"
    (sweep / "matrix.csv").mkdir(parents=True)  # the matrix cannot be written there
    proc = run_runner(["-m", "format=gguf", f"hydra.sweep.dir={sweep}", *NO_FID], tmp_path)
    assert proc.returncode == 1, output(proc)[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "building the matrix and report" in errors[0] and "matrix.csv" in errors[0]
    assert read_cell_record(sweep / "0" / "result.json").status == "ok"  # the cell's work is kept


@pytest.mark.parametrize("setting,message", [
    ("verdict.margins.overall=-1", "verdict.margins.overall must be a number > 0, got -1"),
    ("+verdict.margins.speed=5", "verdict.margins.speed: not a quality signal"),
])
def test_bad_verdict_margin_is_refused_before_any_cell_runs(tmp_path, setting, message):
    proc = run_runner([*NO_FID, setting], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "nothing was run" in proc.stderr, proc.stderr
