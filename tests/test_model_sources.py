"""Where models come from: GGUF files (F16 and already quantized), chat templates for GGUFs without one, plain
completion, published quants evaluated as prebuilt cells (on the tiny model's own GGUFs), and hub models from
the local cache without network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_runner, sweep_dirs
from runner.records import read_cell_record

SHORT = ["generation.max_tokens=8", "fidelity.chunk_len=64", "fidelity.tokens=256", "quiet=true"]


def records(root: Path) -> dict[tuple[str, str], object]:
    out = {}
    for path in sweep_dirs(root)[0].glob("*/result.json"):
        rec = read_cell_record(path)
        out[(rec.cell.format, rec.cell.precision)] = rec
    return out


@pytest.fixture(scope="module")
def hf_sweep(tmp_path_factory) -> dict:
    """The same cells from the tiny model's Hugging Face folder, to compare against."""
    root = tmp_path_factory.mktemp("hf")
    assert run_runner(["-m", "format=gguf,mlx", "precision=fp16,q4_0", *SHORT], root).returncode == 0
    return records(root)


def test_an_f16_gguf_is_the_source_of_every_build(tiny_gguf, hf_sweep, tmp_path):
    proc = run_runner(["-m", "model=gguf_file", f"model.path={tiny_gguf}", "format=gguf,mlx", "precision=fp16,q4_0",
                       *SHORT], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    recs = records(tmp_path)
    fp16, q4, mlx = recs[("gguf", "fp16")], recs[("gguf", "q4_0")], recs[("mlx", "fp16")]
    assert fp16.source.gguf_path == str(tiny_gguf) and fp16.source.requantized_from is None
    assert fp16.artifact.path == str(tiny_gguf)  # the file itself, registered, not converted or copied
    assert q4.fidelity.kld_mean > mlx.fidelity.kld_mean >= 0
    # its dequantized folder renders and tokenizes every prompt exactly as the original model does
    for key, rec in recs.items():
        if rec.status == "ok":
            assert [r.prompt_token_ids_sha for r in rec.results] == \
                   [r.prompt_token_ids_sha for r in hf_sweep[key].results]
    assert q4.fidelity.kld_mean == pytest.approx(hf_sweep[("gguf", "q4_0")].fidelity.kld_mean, rel=0.05)


def test_a_quantized_gguf_source_is_requantized_and_said_so(q4_gguf, tmp_path):
    proc = run_runner(["-m", "model=gguf_file", f"model.path={q4_gguf}", "format=gguf", "precision=fp16,q8_0,q4_0",
                       *SHORT], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    recs = records(tmp_path)
    assert all(r.source.requantized_from == "Q4_0" for r in recs.values())
    assert recs[("gguf", "q4_0")].artifact.path == str(q4_gguf)  # the source's own type: the file itself
    assert recs[("gguf", "q8_0")].artifact.path != str(q4_gguf)  # requantized from it
    sweep = sweep_dirs(tmp_path)[0]
    assert "⚠️ **REQUANTIZED SOURCE (gguf_file)**: the model was given as a Q4_0 GGUF" in (sweep / "report.md").read_text()
    assert (pd.read_csv(sweep / "matrix.csv").requantized_from == "Q4_0").all()
    assert "REQUANTIZED SOURCE" in proc.stdout  # in the answer at the end too


def test_a_gguf_without_a_chat_template(templateless_gguf, tmp_path):
    args = ["model=gguf_file", f"model.path={templateless_gguf}", "format=gguf", "precision=q8_0", *SHORT,
            "fidelity.enabled=false", f"store_dir={tmp_path / 'store'}"]
    no_template = run_runner(args, tmp_path / "a")
    assert no_template.returncode == 1
    (rec,) = [read_cell_record(p) for p in (tmp_path / "a" / "runs").glob("*/result.json")]
    assert "has no chat template; set model.chat_template" in rec.reason and "generation.chat=false" in rec.reason
    named = run_runner([*args, "model.chat_template=chatml"], tmp_path / "b")
    assert named.returncode == 0, named.stdout[-2000:]
    plain = run_runner([*args, "generation.chat=false"], tmp_path / "c")
    assert plain.returncode == 0, plain.stdout[-2000:]
    (rec,) = [read_cell_record(p) for p in (tmp_path / "c" / "runs").glob("*/result.json")]
    assert rec.contract.chat is False and rec.contract.chat_template_sha == "none (plain completion)"
    assert rec.results[0].rendered_prompt == rec.results[0].prompt_text  # completed as it is


def test_not_a_gguf_file(tmp_path):
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"NOPE" * 100)
    proc = run_runner(["model=gguf_file", f"model.path={bogus}", *SHORT, "fidelity.enabled=false"], tmp_path)
    assert proc.returncode == 1 and f"model.path: {bogus} is not a GGUF file" in proc.stdout


def test_published_quants_as_prebuilt_cells(hf_sweep, tmp_path):
    """A GGUF file and an MLX folder made elsewhere are evaluated as they are, against the sweep's baseline."""
    gguf = shutil.copy(hf_sweep[("gguf", "q4_0")].artifact.path, tmp_path / "uploader-Q4_0.gguf")
    mlx = shutil.copytree(Path(hf_sweep[("mlx", "fp16")].artifact.path), tmp_path / "uploader-mlx-fp16")
    paths = f"artifact.path={gguf},{mlx}"
    proc = run_runner(["-m", "format=gguf,mlx", "precision=fp16,prebuilt", paths, *SHORT], tmp_path / "out")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    df = pd.read_csv(sweep_dirs(tmp_path / "out")[0] / "matrix.csv")
    ok = df[df.status == "ok"]
    assert sorted(zip(ok.format, ok.precision)) == [("gguf", "fp16"), ("gguf", "prebuilt"), ("mlx", "fp16"),
                                                   ("mlx", "prebuilt")]
    prebuilt = ok[ok.precision == "prebuilt"].set_index("format")
    assert prebuilt.loc["gguf", "kld_mean"] == pytest.approx(hf_sweep[("gguf", "q4_0")].fidelity.kld_mean)
    assert prebuilt.loc["gguf", "bits_per_weight"] == pytest.approx(hf_sweep[("gguf", "q4_0")].artifact.bits_per_weight)
    assert prebuilt.loc["gguf", "artifact"] == str(gguf) and prebuilt.loc["mlx", "artifact"] == str(mlx)
    skipped = df[df.status == "skipped"]
    assert any("is a GGUF file: it runs as format=gguf" in r for r in skipped.reason)
    assert any("the same cell as with artifact.path" in r for r in skipped.reason)  # fp16 once, not per path
    assert "gguf × prebuilt:uploader-Q4_0" in proc.stdout

    missing = run_runner(["format=gguf", "precision=prebuilt", *SHORT], tmp_path / "missing")
    assert missing.returncode == 2 and "precision=prebuilt needs artifact.path=" in missing.stderr  # before any work


def test_a_prebuilt_artifact_must_tokenize_like_the_model():
    """The check behind prebuilt cells (a real foreign GGUF is tried in test_real_model.py)."""
    from runner.backends.base import compare_prompt_ids
    from runner.contract import RenderedPrompt

    rendered = {"p1": RenderedPrompt("hello world", [1, 10, 11]), "p2": RenderedPrompt("bye", [1, 12])}
    vocab = {"hello world": [10, 11], "bye": [12]}
    compare_prompt_ids(rendered, vocab.__getitem__, bos_id=1, artifact="/a.gguf")  # BOS added as the model does
    with pytest.raises(ValueError, match=r"/b.gguf tokenizes prompt 'p1' differently .*token 2 is 99 in the artifact, "
                                         r"11 in the model"):
        compare_prompt_ids(rendered, {"hello world": [10, 99], "bye": [12]}.__getitem__, bos_id=1, artifact="/b.gguf")


def _hf_cache(home: Path, repo_id: str, model_dir: Path, commit: str) -> None:
    """The Hugging Face hub cache layout (blobs, refs, snapshots) holding `model_dir` at `commit` on main."""
    import hashlib
    import os

    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in model_dir.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)


def test_a_hub_model_from_the_local_cache_without_network(tiny_model_dir, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    _hf_cache(tmp_path / "hf", "test-org/tiny-qwen3", tiny_model_dir, commit)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    args = ["model=qwen3_0_6b", "model.repo_id=test-org/tiny-qwen3", *SHORT, "fidelity.enabled=false",
            f"store_dir={tmp_path / 'store'}"]

    def run(name: str, *extra: str):
        proc = run_runner([*args, *extra], tmp_path / name, env=env)
        (path,) = (tmp_path / name / "runs").glob("*/result.json")
        return proc, read_cell_record(path)

    pinned, rec = run("pinned", f"model.revision={commit}")
    assert pinned.returncode == 0, pinned.stdout[-2000:]
    assert rec.source.kind == "hub" and rec.source.revision == commit and rec.source.content_hash.endswith(commit)
    unpinned, rec = run("unpinned")  # the cached ref (main) resolves, and the record names the commit
    assert unpinned.returncode == 0 and rec.source.revision == commit
    missing, rec = run("missing", "model.revision=fedcba9876543210fedcba9876543210fedcba98")
    assert missing.returncode == 1 and rec.status == "failed"
    assert "test-org/tiny-qwen3@fedcba9876543210fedcba9876543210fedcba98" in rec.reason and "offline" in rec.reason
