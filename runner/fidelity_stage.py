"""The fidelity stage: this cell's next-token distributions vs the FP16 reference on identical token ids.

The reference's top-k log-probs are computed once per (reference artifact, eval tokens, chunking) and
kept in the artifact store; every cell then streams its own log-probs chunk by chunk (bounded memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from runner.backends.base import Session
from runner.contract import ChatRenderer, token_ids_sha
from runner.memory import peak_rss_mb, reset_peak_rss
from runner.metrics import fidelity
from runner.records import ArtifactInfo, FidelityResult
from runner.store import Store

DEFAULT_TEXT = Path(__file__).parent / "data" / "fidelity_eval.txt"


def eval_chunks(fid_cfg: dict[str, Any], renderer: ChatRenderer) -> tuple[list[list[int]], str]:
    """Tokenize the eval text once and split it into chunks; (chunks, sha of the token ids)."""
    path = Path(fid_cfg.get("text") or DEFAULT_TEXT)
    if not path.is_file():
        raise FileNotFoundError(f"fidelity.text: file not found: {path}")
    tokenizer = renderer.tokenizer
    tokenizer.model_max_length = 1 << 62  # the text is chunked below; silence the over-length warning
    ids = tokenizer.encode(path.read_text(), add_special_tokens=False)
    n, chunk_len = int(fid_cfg["tokens"]), int(fid_cfg["chunk_len"])
    if chunk_len < 2:
        raise ValueError(f"fidelity.chunk_len must be >= 2, got {chunk_len}")
    ids = ids[:n] if n > 0 else ids
    if len(ids) < chunk_len:
        raise ValueError(f"fidelity.text {path} has {len(ids)} tokens (of fidelity.tokens={n}), "
                         f"shorter than one chunk (fidelity.chunk_len={chunk_len})")
    chunks = [ids[i:i + chunk_len] for i in range(0, len(ids) - chunk_len + 1, chunk_len)]
    sha = token_ids_sha([t for c in chunks for t in c])
    return chunks, sha


def reference_entry(store: Store, ref_artifact: ArtifactInfo, ref_runtime: dict[str, Any], chunks: list[list[int]],
                    tokens_sha: str, top_k: int, open_session: Callable[[], Session]):
    """Build (once, under the store's lock) or reuse the reference's top-k log-probs."""
    payload = {"reference": ref_artifact.key, "runtime": ref_runtime, "tokens": tokens_sha,
               "chunk_len": len(chunks[0]), "n_chunks": len(chunks), "top_k": top_k}

    def build(tmp: Path) -> dict[str, Any]:
        session = open_session()
        vocab = 0
        for i, chunk in enumerate(chunks):
            logp = session.logprobs(chunk)
            vocab = logp.shape[1]
            fidelity.save_reference_chunk(tmp / f"chunk_{i:04d}.npz", fidelity.reference_from_logprobs(logp[:-1], top_k, np.asarray(chunk[1:])))
        return {"vocab": int(vocab)}

    return store.get_or_build("fidelity-ref", payload, build)


def score(session: Session, ref_dir: Path, ref_vocab: int, chunks: list[list[int]], reference: str,
          tokens_sha: str) -> FidelityResult:
    reset_peak_rss()
    stats, warnings = [], []
    for i, chunk in enumerate(chunks):
        logp = session.logprobs(chunk)
        logp, warning = fidelity.align_vocab(ref_vocab, logp)
        if warning and warning not in warnings:
            warnings.append(warning)
        ref = fidelity.load_reference_chunk(ref_dir / f"chunk_{i:04d}.npz")
        stats.append(fidelity.chunk_stats(ref, logp[:-1], np.asarray(chunk[1:])))
    result = fidelity.summarize(stats, reference, text_sha=tokens_sha, warnings=warnings)
    result.peak_rss_mb = peak_rss_mb()
    return result
