"""The fidelity stage: this cell's next-token distributions vs the baseline build's on identical token ids.

The eval text (`fidelity.corpus`, resolved like the calibration text by runner/calibration.py) is tokenized once
and cut into `chunk_len` chunks, BOS first where the model has one. The baseline's log-probs are computed once per
(baseline artifact, eval tokens, chunking, protocol) and kept in the artifact store; every cell then streams its
own log-probs chunk by chunk (bounded memory).

`fidelity.protocol=runner`: every position, the baseline's top-k log-probs + tail (`fidelity.top_k: all` keeps the
whole vocabulary: exact KLD, storage N × vocab × 8 bytes). `llamacpp`: llama-perplexity's --kl-divergence protocol,
the second half of each chunk against the baseline's full float32 log-probs (N/2 × vocab × 4 bytes per chunk);
see runner/metrics/fidelity.py.
This module builds both of its cache keys (`baseline_key`, `score_key`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import calibration
from runner.backends.base import Session
from runner.cell import DEFAULT_FIDELITY_TEXT, fidelity_corpus, fidelity_protocol, parse_top_k
from runner.contract import ChatRenderer, token_ids_sha
from runner.memory import peak_rss_mb, reset_peak_rss
from runner.metrics import fidelity
from runner.records import FidelityResult, from_dict
from runner.stages.generate import GenerationStage, runtime_key
from runner.store import Entry, Store

# Bump whenever log-prob extraction, the stored baseline format, scoring code or the result record changes.
FIDELITY_CODE_VERSION = 4
BASELINE_KIND, SCORE_KIND = "fidelity-baseline", "fidelity"  # store kinds


def corpus(fid_cfg: dict[str, Any], store: Store | None = None) -> calibration.Calibration:
    """The eval text (`fidelity.corpus` / `fidelity.text`) with its sha256, through the calibration group's mechanism.

    `store` is needed only for a dataset (its text is written into the store once).
    """
    cfg = fidelity_corpus(fid_cfg)
    name = "dataset" if cfg["source"] == "dataset" else ("file" if cfg.get("file") else "default")
    return calibration.text_source(cfg, store, name=name, default=DEFAULT_FIDELITY_TEXT, setting="fidelity.corpus")


def corpus_label(text: calibration.Calibration) -> str:
    """What the record says the corpus was: default, file:NAME or dataset:ID[/CONFIG]:SPLIT."""
    if text.name == "dataset":
        spec = text.spec
        return f"dataset:{spec['dataset']}{'/' + str(spec['config']) if spec.get('config') else ''}:{spec['split']}"
    return "default" if text.name == "default" else f"file:{text.path.name}"


@dataclass(frozen=True)
class EvalChunks:
    """The eval text as the token-id chunks both engines score, identical for every cell."""

    chunks: list[list[int]]
    sha: str  # of every chunk's ids, BOS included
    bos_first: bool  # each chunk starts with the model's BOS (its tokenizer adds one)


def eval_chunks(fid_cfg: dict[str, Any], renderer: ChatRenderer, path: Path | None = None) -> EvalChunks:
    """Tokenize the eval text (`path`, else the configured file) once and cut it into `chunk_len` chunks.

    Where the model's tokenizer adds a BOS, every chunk starts with it, as llama-perplexity does: the text
    is tokenized with its BOS and the first token of each later chunk is replaced by BOS. A model trained
    with a BOS is out of distribution without one (Gemma's KLD was overstated 2-5x). Chunks are consecutive,
    the last partial one dropped (llama-perplexity: n_chunk = tokens / n_ctx).
    """
    path = Path(path) if path is not None else corpus(fid_cfg).path
    if not path.is_file():
        raise FileNotFoundError(f"fidelity.text: file not found: {path}")
    renderer.tokenizer.model_max_length = 1 << 62  # the text is chunked below; silence the over-length warning
    bos = renderer.bos_id()
    ids = ([bos] if bos is not None else []) + renderer.encode(path.read_text(encoding="utf-8"))
    n, chunk_len = int(fid_cfg["tokens"]), int(fid_cfg["chunk_len"])
    ids = ids[:n] if n > 0 else ids
    if len(ids) < chunk_len:
        raise ValueError(f"fidelity.text {path} has {len(ids)} tokens (of fidelity.tokens={n}), "
                         f"shorter than one chunk (fidelity.chunk_len={chunk_len})")
    chunks = [ids[i:i + chunk_len] for i in range(0, len(ids) - chunk_len + 1, chunk_len)]
    if bos is not None:
        chunks = [[bos, *c[1:]] for c in chunks]
    return EvalChunks(chunks, token_ids_sha([t for c in chunks for t in c]), bos is not None)


def baseline_key(base: GenerationStage, chunks: list[list[int]], tokens_sha: str, top_k: int | None,
                 protocol: str = "runner", corpus_sha: str = "") -> dict[str, Any]:
    return {"code_version": FIDELITY_CODE_VERSION, "baseline": base.artifact.key, "runtime": runtime_key(base.runtime),
            "tokens": tokens_sha, "chunk_len": len(chunks[0]), "n_chunks": len(chunks), "top_k": top_k,
            "protocol": protocol, "corpus": corpus_sha}


def score_key(baseline: Entry, own: GenerationStage, name: str) -> dict[str, Any]:
    return {"code_version": FIDELITY_CODE_VERSION, "baseline": baseline.key, "artifact": own.artifact.key,
            "runtime": runtime_key(own.runtime), "name": name}


def baseline_entry(store: Store, base: GenerationStage, chunks: list[list[int]], tokens_sha: str,
                   top_k: int | None, protocol: str = "runner", corpus_sha: str = "") -> Entry:
    """Build (once, under the store's lock) or reuse the baseline's log-probs: top-k + tail of every position
    (runner) or the full rows of each chunk's second half (llamacpp)."""
    def build(tmp: Path) -> dict[str, Any]:
        session = base.session()
        vocab = 0
        for i, chunk in enumerate(chunks):
            logp = session.logprobs(chunk)
            vocab = logp.shape[1]
            rows, nxt = fidelity.scored(protocol, chunk)
            if protocol == "llamacpp":
                data = fidelity.full_baseline(logp[rows], nxt)
            else:
                data = fidelity.baseline_from_logprobs(logp[rows], vocab if top_k is None else top_k, nxt)
            del logp
            fidelity.save_baseline_chunk(tmp / f"chunk_{i:04d}.npz", data)
        return {"vocab": int(vocab), "protocol": protocol}

    return store.get_or_build(BASELINE_KIND, baseline_key(base, chunks, tokens_sha, top_k, protocol, corpus_sha), build)


def score(session: Session, base_dir: Path, base_vocab: int, chunks: list[list[int]], name: str,
          tokens_sha: str, top_k: int | None, protocol: str = "runner") -> FidelityResult:
    reset_peak_rss()
    stats, warnings = [], []
    for i, chunk in enumerate(chunks):
        logp = session.logprobs(chunk)
        logp, warning = fidelity.align_vocab(base_vocab, logp)
        if warning and warning not in warnings:
            warnings.append(warning)
        rows, nxt = fidelity.scored(protocol, chunk)
        if protocol == "llamacpp":
            base = fidelity.load_baseline_chunk(base_dir / f"chunk_{i:04d}.npz", full=True)
            stats.append(fidelity.full_chunk_stats(base, logp[rows], nxt))
        else:
            base = fidelity.load_baseline_chunk(base_dir / f"chunk_{i:04d}.npz")
            stats.append(fidelity.chunk_stats(base, logp[rows], nxt))
        del logp, base
    result = fidelity.summarize(stats, name, text_sha=tokens_sha, warnings=warnings)
    result.peak_rss_mb = peak_rss_mb()
    result.top_k = None if top_k is None or top_k >= base_vocab else top_k
    result.protocol = protocol
    result.chunk_len = len(chunks[0])
    return result


def run_fidelity(store: Store, fid_cfg: dict[str, Any], renderer: ChatRenderer, own: GenerationStage,
                 base: GenerationStage, name: str) -> FidelityResult:
    """Fidelity of `own` vs `base` (the same stage when this cell is the baseline: KLD 0 by construction).

    One model is in memory at a time: `own` is closed while the baseline's log-probs are computed.
    """
    protocol = fidelity_protocol(fid_cfg)
    text_source = corpus(fid_cfg, store)
    text = eval_chunks(fid_cfg, renderer, text_source.path)
    chunks, sha = text.chunks, text.sha
    top_k = parse_top_k(fid_cfg.get("top_k", 256)) if protocol == "runner" else None  # llamacpp: full vocabulary
    if base is not own:
        own.close()
    entry = baseline_entry(store, base, chunks, sha, top_k, protocol, text_source.sha256)
    if base is not own:
        base.close()
    payload = score_key(entry, own, name)
    result = store.lookup(SCORE_KIND, payload)
    if result is None:
        scored = score(own.session(), entry.path, int(entry.manifest["vocab"]), chunks, name, sha, top_k, protocol)
        scored.bos_first = text.bos_first
        scored.corpus_sha, scored.corpus = text_source.sha256, corpus_label(text_source)
        result = store.put_json(SCORE_KIND, payload, dataclasses.asdict(scored))
    return dataclasses.replace(from_dict(FidelityResult, result.manifest["record"]), key=result.key)
