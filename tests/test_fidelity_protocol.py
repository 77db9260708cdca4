"""fidelity.protocol=llamacpp against the tools it reproduces, plus the protocol's own rules.

Differential checks: the runner's cells are scored again by llama-perplexity --kl-divergence (its GGUF files, built by
runner/backends/llama_tools.py) and by `mlx-kld score` (its MLX folders), on the same text, and the numbers must agree.
Each check first proves that both tools saw the same token ids (llama-perplexity's base file holds them; mlx-kld's
record a hash of them), and runs the other tool as the runner computed: llama-perplexity with flash attention off and
without weight repacking (`-fa off -nr`: the runner's `format.extra_bufts=false`) and the cell's thread counts; mlx-kld
on float32 copies of the checkpoints where the runner computed in float32 (`format.compute_dtype=auto` on a CPU).

Run that way, the tiny model's numbers are llama-perplexity's to every printed digit. What is left elsewhere is the
other tool's own rounding: llama-perplexity leaves out of each KLD sum the tokens with base log p ≤ −16 (and stores
the base log-probs as uint16 over [max − 16, max]), which raised Gemma 3 270M's KLD by 0.15-0.55 % (with its 262k
vocabulary, many tokens sit below e^−16); mlx-kld adds its reconstruction floor (the teacher's top-K log-probs
rounded to bfloat16, the tail spread uniformly: `kld.floor_mean` in its record), ~0.5 % of the tiny model's 4-bit
KLD at K = 896 of 1024 (the floor's minimum on this model; 0.0016 nats, 2.5 %, at K = 1023). Hence the tolerances:
2 % and 5 % relative.

Tools: REQUIRE_LLAMA_TOOLS=1 turns a missing tool build into a failure (as tests/test_llama_tools.py), REQUIRE_MLX_KLD=1
a missing `mlx-kld` package, REQUIRE_REAL_MODEL=1 a missing Gemma 3 270M (tests/test_real_model.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_runner, sweep_dirs
from runner.analysis import findings
from runner.analysis.matrix import build_matrix
from runner.analysis.report import write_report
from runner.backends import llama_tools
from runner.contract import token_ids_sha
from runner.metrics import fidelity as fm
from runner.records import CellRecord, read_cell_record
from runner.stages.fidelity import corpus, eval_chunks
from runner.store import sha256_file
from test_real_model import PACKAGE as GEMMA_PACKAGE, require
from test_summary import answer, cell_record  # the synthetic record builder (tests/ is on sys.path)

TEXT = REPO / "runner" / "data" / "fidelity_eval.txt"
REL_GGUF, REL_MLX = 0.02, 0.05  # relative agreement with llama-perplexity / mlx-kld (see the module doc)
MLX_KLD_TOP_K = 896  # of the tiny model's 1024 ids: the minimum of mlx-kld's reconstruction floor on it
pytestmark = pytest.mark.timeout(1800)


def paragraphs(n: int) -> str:
    """The first n paragraphs of the bundled eval text (a short corpus of a few chunks)."""
    return "\n\n".join(TEXT.read_text(encoding="utf-8").split("\n\n")[:n]) + "\n"


def one_prompt(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "prompt.jsonl"
    path.write_text(json.dumps({"id": "p", "category": "factual", "prompt": "The capital of France is"}) + "\n")
    return path


def llamacpp_sweep(root: Path, builds: list[str], text: Path, chunk_len: int, *extra: str,
                   timeout: float = 900) -> tuple[Path, dict[str, CellRecord]]:
    """A sweep of `builds` (format=F precision=P,...) under fidelity.protocol=llamacpp on the whole of `text`."""
    fid = ["fidelity.protocol=llamacpp", f"fidelity.chunk_len={chunk_len}", "fidelity.tokens=0",
           f"fidelity.text={text}"]
    proc = run_runner(["-m", *builds, "prompts=file", f"prompts.file={one_prompt(root)}", "generation.max_tokens=4",
                       "quiet=true", *fid, *extra], root, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sweep,) = sweep_dirs(root)
    records = {r.cell.precision: r for r in map(read_cell_record, sweep.glob("*/result.json"))}
    assert all(r.status == "ok" for r in records.values()), {p: r.reason for p, r in records.items()}
    return sweep, records


def rel(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / abs(theirs)


# ---------------------------------------------------------------------------------------------------------------------
# llama-perplexity --kl-divergence

@pytest.fixture(scope="module")
def tools() -> llama_tools.LlamaTools:
    try:
        return llama_tools.tools()
    except llama_tools.MissingBuildTool as e:
        if os.environ.get("REQUIRE_LLAMA_TOOLS") == "1":
            pytest.fail(str(e))
        pytest.skip(str(e))


def perplexity(tools: llama_tools.LlamaTools, *args: object) -> str:
    proc = subprocess.run([str(tools.perplexity), *map(str, args)], capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def number(pattern: str, out: str) -> float:
    found = re.search(pattern, out)
    assert found, f"{pattern!r} not in llama-perplexity's output:\n{out[-3000:]}"
    return float(found.group(1))


def read_base_tokens(path: Path) -> tuple[int, int, np.ndarray]:
    """(n_ctx, n_vocab, tokens [n_chunk, n_ctx]) of a --kl-divergence-base file (perplexity.cpp: "_logits_", n_ctx
    u32, n_vocab i32, n_chunk i32, the tokens as tokenized, before any BOS is put in front of a chunk)."""
    with open(path, "rb") as f:
        assert f.read(8) == b"_logits_"
        n_ctx, n_vocab, n_chunk = np.frombuffer(f.read(12), dtype=np.int32)
        tokens = np.frombuffer(f.read(4 * int(n_ctx) * int(n_chunk)), dtype=np.int32)
    return int(n_ctx), int(n_vocab), tokens.reshape(int(n_chunk), int(n_ctx))


def llama_perplexity_kld(tools: llama_tools.LlamaTools, records: dict[str, CellRecord], text: Path,
                         tmp: Path) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """llama-perplexity on the cells' own GGUF files: the F16 baseline's run (its log-probs into a base file), then
    one --kl-divergence run per quantized cell. Returns (the base run, {precision: the KLD run's summary})."""
    base_rec = records["fp16"]
    settings = base_rec.runtime.settings  # the cell's threads and offload: the same computation, the same order
    n_ctx = base_rec.fidelity.chunk_len
    common = ["-c", n_ctx, "-b", n_ctx, "-ub", n_ctx, "-t", settings["n_threads_batch"],
              "-tb", settings["n_threads_batch"], "-ngl", settings["n_gpu_layers"], "-fa", "off", "-nr", "--no-warmup"]
    base_file = tmp / "base.kld"
    out = perplexity(tools, "-m", base_rec.artifact.path, "-f", text, *common, "--kl-divergence-base", base_file)
    base = {"ppl": number(r"Final estimate: PPL = ([0-9.]+)", out)}
    file_ctx, _, tokens = read_base_tokens(base_file)
    assert file_ctx == n_ctx and len(tokens) == base_rec.fidelity.n_chunks
    # The same token ids: the runner's (BOS replacing each chunk's first token where the model has one, as
    # perplexity.cpp's kl_divergence does when it evaluates) are the tool's, token for token.
    if base_rec.fidelity.bos_first:
        tokens = tokens.copy()
        tokens[:, 0] = tokens[0, 0]  # the text was tokenized with its BOS first
    assert token_ids_sha(tokens.ravel().tolist()) == base_rec.fidelity.text_sha
    runs = {}
    for precision, rec in records.items():
        if precision == "fp16":
            continue
        out = perplexity(tools, "-m", rec.artifact.path, *common, "--kl-divergence-base", base_file, "--kl-divergence")
        runs[precision] = {
            "kld_mean": number(r"Mean\s+KLD:\s+([0-9.]+)", out),
            "top1_pct": number(r"Same top p:\s+([0-9.]+)", out),
            "ppl": number(r"Mean PPL\(Q\)\s+:\s+([0-9.]+)", out),
            "kld_median": number(r"Median\s+KLD:\s+([0-9.]+)", out),
            "kld_p95": number(r"95\.0%\s+KLD:\s+([0-9.]+)", out),
            "kld_max": number(r"Maximum KLD:\s+([0-9.]+)", out),
            "rms_dp": number(r"RMS Δp\s+:\s+([0-9.]+)", out),
        }
    return base, runs


def assert_agrees_with_llama_perplexity(records: dict[str, CellRecord], base: dict[str, float],
                                        runs: dict[str, dict[str, float]]) -> None:
    for precision, theirs in runs.items():
        ours = records[precision].fidelity
        assert ours.protocol == "llamacpp"
        assert ours.n_tokens == ours.n_chunks * (ours.chunk_len - 1 - ours.chunk_len // 2)  # the second halves
        print(f"{precision}: ours KLD {ours.kld_mean:.6f} top-1 {ours.top1_pct:.3f} % PPL {ours.ppl:.4f} | "
              f"llama-perplexity {theirs['kld_mean']:.6f} {theirs['top1_pct']:.3f} % {theirs['ppl']:.4f}")
        assert ours.kld_mean > 0 and rel(ours.kld_mean, theirs["kld_mean"]) < REL_GGUF, (precision, ours, theirs)
        assert rel(ours.top1_pct, theirs["top1_pct"]) < REL_GGUF, (precision, ours, theirs)
        assert rel(ours.ppl, theirs["ppl"]) < REL_GGUF, (precision, ours, theirs)
        for key in ("kld_median", "kld_p95", "kld_max", "rms_dp"):
            assert rel(getattr(ours, key), theirs[key]) < 0.05, (precision, key, ours, theirs)
        # llama-perplexity's "Mean PPL(base)" comes from its clipped uint16 base log-probs; its base run's Final
        # estimate is the baseline's own PPL, which the runner records
        assert rel(ours.baseline_ppl, base["ppl"]) < 1e-4, (ours.baseline_ppl, base)


@pytest.fixture(scope="module")
def tiny_gguf_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamacpp-gguf")
    sweep, records = llamacpp_sweep(root, ["format=gguf", "precision=fp16,q4_k_m,q4_0"], TEXT, 512)
    return root, sweep, records


def test_tiny_gguf_agrees_with_llama_perplexity(tools, tiny_gguf_sweep, tmp_path):
    _, _, records = tiny_gguf_sweep
    assert records["q4_0"].fidelity.bos_first is False  # the tiny model's tokenizer adds no BOS
    base, runs = llama_perplexity_kld(tools, records, TEXT, tmp_path)
    assert set(runs) == {"q4_k_m", "q4_0"}
    assert_agrees_with_llama_perplexity(records, base, runs)


def test_gemma_gguf_agrees_with_llama_perplexity(tools, tmp_path):
    """The real model: a 262k vocabulary, a BOS in front of every chunk. Its GGUF is Google's Q4_K_M: the F16
    baseline is that file dequantized, q4_k_m the file itself, q8_0 requantized from the F16."""
    require(GEMMA_PACKAGE)
    text = tmp_path / "gemma.txt"
    text.write_text(paragraphs(3))  # ~370 Gemma tokens: two 128-token chunks, 126 scored positions (a full-vocabulary
    # baseline row is 1 MB here; llama-perplexity prints its statistics from 100 positions)
    _, records = llamacpp_sweep(tmp_path / "run", ["model=gemma3_270m", "format=gguf", "precision=fp16,q4_k_m,q8_0"],
                                text, 128, timeout=1500)
    assert records["q8_0"].fidelity.bos_first is True and records["q4_k_m"].source.requantized_from == "Q4_K_M"
    base, runs = llama_perplexity_kld(tools, records, text, tmp_path)
    assert_agrees_with_llama_perplexity(records, base, runs)


# ---------------------------------------------------------------------------------------------------------------------
# mlx-kld score

@pytest.fixture(scope="module")
def mlx_kld_installed():
    try:
        import mlx_kld  # noqa: F401
        import datasets  # noqa: F401
    except ImportError as e:
        message = f"mlx-kld is not installed ({e}): pip install mlx-kld==0.1.1"
        if os.environ.get("REQUIRE_MLX_KLD") == "1":
            pytest.fail(message)
        pytest.skip(message)


def float32_copy(src: Path, dst: Path) -> Path:
    """The MLX folder with every float16/bfloat16 tensor (weights, quantization scales and biases) in float32: what
    the runner's `model.set_dtype(float32)` computes with on a CPU, exactly (an upcast rounds nothing)."""
    import mlx.core as mx

    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.suffix == ".safetensors":
            weights = mx.load(str(path))
            mx.save_safetensors(str(dst / path.name), {k: v.astype(mx.float32) if v.dtype in (mx.float16, mx.bfloat16)
                                                       else v for k, v in weights.items()}, metadata={"format": "mlx"})
        elif path.is_file():
            shutil.copy2(path, dst / path.name)
    return dst


def test_tiny_mlx_agrees_with_mlx_kld(mlx_kld_installed, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(paragraphs(6))  # ~1100 tiny-model tokens: four 256-token chunks
    sweep, records = llamacpp_sweep(tmp_path / "run", ["format=mlx", "precision=fp16,4bit", "baseline=mlx_fp16"],
                                    text, 256)
    base, ours = records["fp16"], records["4bit"].fidelity
    chunk_len, n_chunks = ours.chunk_len, ours.n_chunks
    assert base.fidelity.kld_mean == 0 and ours.baseline == "mlx_fp16"

    # mlx-kld reads a dataset: the same text as one row (it encodes each row without special tokens, as the runner
    # does for a model without BOS, concatenates, cuts max_seq_len chunks and drops the partial one)
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "train.jsonl").write_text(json.dumps({"text": text.read_text()}) + "\n")
    teacher, student = Path(base.artifact.path), Path(records["4bit"].artifact.path)
    if base.runtime.compute_dtype == "float32":  # mlx-kld computes in the checkpoint's dtype
        teacher, student = float32_copy(teacher, tmp_path / "teacher"), float32_copy(student, tmp_path / "student")
    record = tmp_path / "mlx-kld.json"
    # Every chunk scored (--num-samples = all of them: its seeded permutation only reorders), in the runner's window:
    # rows n/2 .. n-2 (mlx-kld's default, n/2 .. n-1, adds the last position of each chunk)
    cmd = [sys.executable, "-m", "mlx_kld", "score", teacher, student, "--dataset", dataset, "--num-samples", n_chunks,
           "--max-seq-len", chunk_len, "--score-window", f"{chunk_len // 2}:{chunk_len - 1}", "--top-k", MLX_KLD_TOP_K,
           "--cache-dir", tmp_path / "mlx-kld-cache", "--out-dir", tmp_path / "mlx-kld-results", "--json", record,
           "--md", tmp_path / "mlx-kld.md"]
    proc = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    theirs = json.loads(record.read_text())

    # the same token ids: the runner's chunks, in mlx-kld's seeded order, hash to its corpus_tokens_hash
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(base.artifact.path).encode(text.read_text(), add_special_tokens=False)
    chunks = np.asarray(ids[:n_chunks * chunk_len], dtype=np.int32).reshape(n_chunks, chunk_len)
    assert token_ids_sha(chunks.ravel().tolist()) == ours.text_sha
    order = np.random.default_rng(theirs["calibration"]["seed"]).permutation(n_chunks)
    assert hashlib.sha256(chunks[order].tobytes()).hexdigest()[:16] == theirs["calibration"]["corpus_tokens_hash"]
    assert theirs["tokens_scored"] == ours.n_tokens

    kld, floor, top1 = theirs["kld"]["mean"], theirs["kld"]["floor_mean"], 100 * theirs["agreement"]["top1"]
    print(f"4bit: ours KLD {ours.kld_mean:.6f} top-1 {ours.top1_pct:.3f} % | mlx-kld {kld:.6f} (floor {floor:.6f}) "
          f"{top1:.3f} %")
    assert ours.kld_mean > 0 and rel(ours.kld_mean, kld) < REL_MLX, (ours, theirs["kld"])
    assert rel(ours.top1_pct, top1) < REL_MLX, (ours, theirs["agreement"])


# ---------------------------------------------------------------------------------------------------------------------
# The protocol's rules

def test_the_llamacpp_protocol_scores_the_second_half_of_each_chunk():
    assert fm.scored_rows("llamacpp", 512) == slice(256, 511)  # perplexity.cpp: first = n_ctx/2, n_ctx - 1 - first
    assert fm.scored_rows("llamacpp", 7) == slice(3, 6)
    assert fm.scored_rows("runner", 512) == slice(0, 511)
    with pytest.raises(ValueError, match="fidelity.protocol must be one of runner, llamacpp, got 'foo'"):
        fm.scored_rows("foo", 512)
    # a build that differs from the baseline only in the first half of the chunk has KLD 0 under llamacpp
    rng = np.random.default_rng(0)
    n, vocab = 16, 32
    base = rng.normal(size=(n, vocab)).astype(np.float32)
    test = base.copy()
    test[: n // 2] = rng.normal(size=(n // 2, vocab))

    def logp(x: np.ndarray) -> np.ndarray:
        return (x - np.log(np.exp(x.astype(np.float64)).sum(axis=1, keepdims=True))).astype(np.float32)

    ids = rng.integers(0, vocab, n)
    for protocol, expect_zero in (("llamacpp", True), ("runner", False)):
        rows = fm.scored_rows(protocol, n)
        nxt = ids[rows.start + 1:]
        if protocol == "llamacpp":
            stats = fm.full_chunk_stats(fm.full_baseline(logp(base)[rows], nxt), logp(test)[rows], nxt)
        else:
            stats = fm.chunk_stats(fm.baseline_from_logprobs(logp(base)[rows], vocab, nxt), logp(test)[rows], nxt)
        assert len(stats.kld) == rows.stop - rows.start
        assert (stats.kld.max() < 1e-6) == expect_zero, protocol


def test_each_chunk_starts_with_bos_where_the_model_has_one(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("x" * 10)

    def renderer(bos: int | None):  # a tokenizer that maps each character to 5, BOS 1 where it has one
        return SimpleNamespace(tokenizer=SimpleNamespace(), bos_id=lambda: bos,
                               encode=lambda s, add_special_tokens=False: [5] * len(s))

    cfg = {"tokens": 0, "chunk_len": 4}
    with_bos = eval_chunks(cfg, renderer(1), text)  # [1, 5 × 10] → 11 ids, two whole chunks, BOS first in each
    assert with_bos.chunks == [[1, 5, 5, 5], [1, 5, 5, 5]] and with_bos.bos_first
    plain = eval_chunks(cfg, renderer(None), text)
    assert plain.chunks == [[5] * 4, [5] * 4] and not plain.bos_first
    assert plain.sha != with_bos.sha


def test_the_corpus_sha_is_the_texts_and_changes_with_it(tmp_path):
    a, b, a2 = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "copy-of-a.txt"
    a.write_text("one text\n")
    b.write_text("another text\n")
    a2.write_text("one text\n")
    sha = {p.name: corpus({"text": str(p)}).sha256 for p in (a, b, a2)}
    assert sha["a.txt"] == sha256_file(a) and sha["a.txt"] != sha["b.txt"]
    assert sha["a.txt"] == sha["copy-of-a.txt"]  # the content, not the name
    assert corpus({"corpus": {"source": "file", "file": str(a)}}).sha256 == sha["a.txt"]  # the same text either way


def test_a_llamacpp_sweep_names_its_protocol_and_corpus_in_the_matrix(tiny_gguf_sweep):
    _, sweep, records = tiny_gguf_sweep
    df = pd.read_csv(sweep / "matrix.csv")
    assert (df["fidelity_protocol"] == "llamacpp").all()
    assert (df["fidelity_corpus_sha"] == sha256_file(TEXT)).all()
    for col in ("kld_median", "kld_p95", "kld_max", "rms_dp", "baseline_ppl"):
        assert df[col].notna().all(), col
    rec = records["q4_0"].fidelity
    assert (rec.corpus, rec.chunk_len, rec.top_k) == ("file:fidelity_eval.txt", 512, None)  # full vocabulary
    assert 0 < rec.kld_median < rec.kld_p95 < rec.kld_max
    report = (sweep / "report.md").read_text()
    assert "Protocol `llamacpp`" in report and "CROSS-PROTOCOL" not in report


@pytest.mark.parametrize("overrides, message", [
    (["fidelity.protocol=foo"], "fidelity.protocol must be one of runner, llamacpp, got 'foo'"),
    (["fidelity.protocol=llamacpp", "fidelity.chunk_len=2"],
     "fidelity.chunk_len must be >= 3 with fidelity.protocol=llamacpp"),
    ([f"fidelity.text={TEXT}", "fidelity.corpus.source=file", f"fidelity.corpus.file={REPO / 'README.md'}"],
     f"fidelity.text={TEXT} and fidelity.corpus (source=file, file={REPO / 'README.md'}) both name the eval text"),
])
def test_a_bad_fidelity_config_is_one_clear_error_before_any_work(tmp_path, overrides, message):
    proc = run_runner(["format=gguf", "precision=q4_0", "quiet=true", *overrides], tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if message in line]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert not list(tmp_path.glob("runs/*/result.json")) and not (tmp_path / "store").exists()


def mixed_protocol_records(q4_protocol: str) -> list[CellRecord]:
    """gguf fp16 / q8_0 and mlx fp16 under protocol runner; a gguf fp16 baseline and a small q4_0 under `q4_protocol`
    (the q4_0 passes every threshold: it is the recommendation when it is ranked at all)."""
    def results(gen_tps: float):
        return [answer(f"p{i}", 0, 7 + (i % 3 - 1), gen_tps=gen_tps + i) for i in range(12)]

    records = [cell_record("gguf", "fp16", results(100), job=0, kld=0.0, size_gb=16.0),
               cell_record("gguf", "q8_0", results(150), job=1, kld=0.004, top1=97.0, size_gb=8.5),
               cell_record("mlx", "fp16", results(90), job=2, kld=2e-6, size_gb=16.0),
               cell_record("gguf", "fp16", results(100), job=3, kld=0.0, size_gb=16.0),
               cell_record("gguf", "q4_0", results(220), job=4, kld=0.002, top1=98.0, size_gb=4.5)]
    for rec in records[3:]:
        rec.fidelity.protocol = q4_protocol
    return records


def test_a_cross_protocol_report_warns_and_ranks_one_protocol(tmp_path):
    def report(name: str, records: list[CellRecord]) -> str:
        (tmp_path / name).mkdir()
        write_report(build_matrix(records, baseline="gguf_fp16"), findings.find(records), tmp_path / name,
                     baseline="gguf_fp16")
        return (tmp_path / name / "report.md").read_text()

    same = report("same", mixed_protocol_records("runner"))
    assert "Recommendation: **gguf q4_0**" in same and "CROSS-PROTOCOL" not in same  # ranked: the smallest that passes

    mixed = report("mixed", mixed_protocol_records("llamacpp"))
    fid = mixed.split("## Fidelity\n")[1].split("\n## ")[0]
    (warning,) = [line for line in fid.splitlines() if "CROSS-PROTOCOL SWEEP" in line]
    assert "llamacpp and runner" in warning and "**runner** cells" in warning
    assert "| gguf q4_0 llamacpp " in fid and "| gguf q8_0 runner " in fid  # every cell shown, named by protocol
    # ranked: the runner cells only (3 of 5), so the llamacpp q4_0 is never recommended, whatever its numbers
    assert "Recommendation: **gguf q8_0 runner**" in mixed
    assert "Cross-protocol sweep (fidelity.protocol llamacpp, runner): only the runner cells are ranked" in mixed
