"""Objective fidelity of a build vs the baseline build (e.g. FP16) on identical token ids.

Like `llama-perplexity --kl-divergence`: the eval text is tokenized once, split into chunks, and each
backend returns per chunk `logp` [chunk_len, vocab], the next-token log-softmax (row i predicts token
i + 1). The baseline run is stored, the test runs are compared against it position by position.

Storage. Keeping full baseline rows costs N×vocab×4 bytes (~300 MB per 512-token chunk at a 150k
vocab), so the baseline keeps per position only its top-k token ids (int32) and their log-probs
(float32), N×k×8 bytes, plus the log tail mass outside the top-k, the log-prob of the actual next
token and the argmax id. One chunk is one `.npz` with the arrays of `BASELINE_KEYS`.

Error. KLD(base||test) is computed on the coarsened distributions {top-k ids of the base, one lumped tail
bucket}; both sides are projected with the same partition. Merging outcomes can only lose
information, so this is a lower bound of the full KLD (data processing inequality). The part lost is
the KLD *inside* the tail, p_tail_base × KLD(base_tail || test_tail) where both are the renormalised
tail distributions, so the error is small whenever the base's tail mass is small; with k = vocab the
tail is empty and the value is exact. A model against itself gives exactly 0: both sides go through
the same code and the same float32 rounding.

Numerics. Masses are computed in float64 per row from `exp(x - max)`; the tail mass is the sum over
the non-top-k entries directly, not 1 - sum(top-k), which would cancel catastrophically when the tail
is tiny. Rows are renormalised (the inputs need not sum to exactly 1). Every log-prob is floored at
`LOG_FLOOR` = log(1e-30): an empty tail (k = vocab), masked tokens (-inf logits) and tails that
underflow then give finite terms. The floor changes a term by at most 1e-30 × |log ratio|, except
where the test puts < 1e-30 on a token the base finds likely: the true KLD is then unbounded and the
reported one is a finite lower bound.

Protocols (`fidelity.protocol`). `runner` scores every position of each chunk against the top-k baseline above.
`llamacpp` is llama-perplexity's `--kl-divergence` protocol (tools/perplexity/perplexity.cpp, `kl_divergence`):
only the second half of each n_ctx chunk is scored (rows n_ctx/2 .. n_ctx-2, predicting tokens n_ctx/2+1 ..
n_ctx-1: n_ctx - 1 - n_ctx/2 positions per chunk) and the baseline keeps its **full** float32 log-probs for those
rows (`FULL_KEYS`, N/2 × vocab × 4 bytes per chunk), so the KLD is exact over the whole vocabulary:
KLD = Σ_i p_base,i (log p_base,i − log p_test,i) per position, log-softmax in float32 (as both engines return it),
products and sums in float64 (llama.cpp: terms in float, sums in double). Where llama.cpp differs, on purpose: it
stores the base log-probs as uint16 over [max − 16, max] (steps of 16/65535 nats) and drops the tokens with
log p_base ≤ −16 from the sum; here nothing is rounded or dropped (`full_chunk_stats(min_logp=-16)` reproduces its
cut, for measuring it). Top-1 ("Same top p"): the argmax of both rows (first index on ties); Δp: p_test − p_base of
the actual next token; PPL: exp of the mean negative log-likelihood of the scored tokens.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runner.records import FidelityResult

LOG_FLOOR = float(np.log(1e-30))
BASELINE_KEYS = ("top_ids", "top_logp", "tail_logp", "next_ids", "next_logp", "argmax", "vocab")
FULL_KEYS = ("logp", "next_ids", "vocab")  # protocol llamacpp: the baseline's full log-probs of the scored rows
PROTOCOLS = ("runner", "llamacpp")


def scored_rows(protocol: str, chunk_len: int) -> slice:
    """The rows of a chunk's log-probs that are scored (row i predicts token i + 1).

    runner: every position but the last; llamacpp: llama-perplexity's second half, rows n_ctx/2 .. n_ctx-2.
    """
    if protocol == "llamacpp":
        return slice(chunk_len // 2, chunk_len - 1)
    if protocol == "runner":
        return slice(0, chunk_len - 1)
    raise ValueError(f"fidelity.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def scored(protocol: str, chunk: list[int]) -> tuple[slice, np.ndarray]:
    """The scored rows of a chunk's log-probs and the token ids they predict."""
    rows = scored_rows(protocol, len(chunk))
    return rows, np.asarray(chunk[rows.start + 1:])


_BLOCK_ELEMS = 1 << 22  # float64 work block: 32 MB, a few temporaries of it at a time


@dataclass
class ChunkStats:
    """Per-position comparison of one chunk (all arrays have one entry per evaluated position)."""

    kld: np.ndarray  # KLD(base || test), nats
    top1_match: np.ndarray  # bool: test argmax == base argmax
    nll_test: np.ndarray  # -log p_test(actual next token)
    nll_base: np.ndarray
    p_test: np.ndarray  # p_test(actual next token)
    p_base: np.ndarray


def _top_ids(x: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest entries per row, in descending order of value."""
    part = np.argpartition(-x, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(x, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _check_rows(logp: np.ndarray, next_ids: np.ndarray) -> int:
    """The vocabulary size, once the log-probs are known to cover every position and every next id."""
    n = len(next_ids)
    if logp.ndim != 2 or logp.shape[0] < n:
        raise ValueError(f"log-probs of shape {logp.shape} do not cover {n} positions")
    vocab = logp.shape[1]
    if next_ids.size and (next_ids.min() < 0 or next_ids.max() >= vocab):
        raise ValueError(f"next token ids outside the vocab of {vocab}")
    return vocab


def _project(logp: np.ndarray, next_ids: np.ndarray, top_k: int = 0,
             top_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Project the first len(next_ids) rows onto {top ids, tail}: the baseline format.

    `top_ids` given: use them (the test side, projected on the base's partition); otherwise each row's
    own top `top_k`.
    """
    n, vocab = len(next_ids), _check_rows(logp, next_ids)
    k = top_ids.shape[1] if top_ids is not None else min(top_k, vocab)
    ids = np.empty((n, k), np.int64)
    top = np.empty((n, k))
    tail = np.empty(n)
    nxt = np.empty(n)
    amax = np.empty(n, np.int64)
    rows = max(1, _BLOCK_ELEMS // vocab)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        x = logp[s:e].astype(np.float64)
        m = x.max(axis=1, keepdims=True)
        if not ((x < np.inf).all() and np.isfinite(m).all()):
            raise ValueError(f"log-probs contain NaN, +inf or an all -inf row (positions {s}..{e - 1})")
        amax[s:e] = x.argmax(axis=1)
        ids[s:e] = top_ids[s:e] if top_ids is not None else _top_ids(x, k)
        at = np.take_along_axis(x, ids[s:e], axis=1)
        nx = x[np.arange(e - s), next_ids[s:e]]
        w = np.exp(x - m)
        np.put_along_axis(w, ids[s:e], 0.0, axis=1)
        tail_sum = w.sum(axis=1)
        lse = m[:, 0] + np.log(tail_sum + np.exp(at - m).sum(axis=1))
        top[s:e] = at - lse[:, None]
        nxt[s:e] = nx - lse
        with np.errstate(divide="ignore"):
            tail[s:e] = np.log(tail_sum) + m[:, 0] - lse
    return {
        "top_ids": ids.astype(np.int32),
        "top_logp": np.maximum(top, LOG_FLOOR).astype(np.float32),
        "tail_logp": np.maximum(tail, LOG_FLOOR).astype(np.float32),
        "next_ids": np.asarray(next_ids, np.int32),
        "next_logp": np.maximum(nxt, LOG_FLOOR).astype(np.float32),
        "argmax": amax.astype(np.int32),
        "vocab": np.array(vocab, np.int64),
    }


def baseline_from_logprobs(logp: np.ndarray, top_k: int, next_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Bounded baseline for the positions predicting `next_ids` (row i predicts next_ids[i]).

    `next_ids` is needed here because the actual next token is often outside the top-k. `top_k` above
    the vocab keeps the whole vocab (exact KLD).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return _project(logp, np.asarray(next_ids), top_k=top_k)


def full_baseline(logp: np.ndarray, next_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The full-vocabulary baseline (protocol llamacpp) of the rows predicting `next_ids`: their float32 log-probs."""
    next_ids = np.asarray(next_ids)
    n, vocab = len(next_ids), _check_rows(logp, next_ids)
    rows = np.ascontiguousarray(logp[:n], dtype=np.float32)
    if np.isnan(rows).any() or (rows == np.inf).any() or (rows.max(axis=1) == -np.inf).any():
        raise ValueError("log-probs contain NaN, +inf or an all -inf row")
    return {"logp": rows, "next_ids": next_ids.astype(np.int32), "vocab": np.array(vocab, np.int64)}


def save_baseline_chunk(path: str | Path, base: dict[str, np.ndarray]) -> None:
    """Write one chunk's baseline (top-k, or full: `FULL_KEYS`) to exactly `path` (uncompressed npz)."""
    keys = FULL_KEYS if "logp" in base else BASELINE_KEYS
    with open(path, "wb") as f:
        np.savez(f, **{k: base[k] for k in keys})


def load_baseline_chunk(path: str | Path, full: bool = False) -> dict[str, np.ndarray]:
    keys = FULL_KEYS if full else BASELINE_KEYS
    with np.load(path) as z:
        missing = set(keys) - set(z.files)
        if missing:
            raise ValueError(f"{path}: not a {'full ' if full else ''}fidelity baseline (missing {sorted(missing)})")
        return {k: z[k] for k in keys}


def full_chunk_stats(base: dict[str, np.ndarray], test_logp: np.ndarray, next_ids: np.ndarray,
                     min_logp: float | None = None) -> ChunkStats:
    """Exact full-vocabulary comparison of a test chunk with its `full_baseline` (rows past len(next_ids) ignored).

    `min_logp` (e.g. -16, llama-perplexity's cut): leave out of each KLD sum the tokens whose base log-prob is at
    or below it. None (the protocol): every token counts.
    """
    next_ids = np.asarray(next_ids)
    if not np.array_equal(base["next_ids"], next_ids):
        raise ValueError("the baseline was built on different token ids than this chunk")
    base_vocab, n = int(base["vocab"]), len(next_ids)
    if test_logp.ndim != 2 or test_logp.shape[1] != base_vocab:
        raise ValueError(f"test vocab {test_logp.shape[-1]} != baseline vocab {base_vocab}; use align_vocab")
    if test_logp.shape[0] < n:
        raise ValueError(f"log-probs of shape {test_logp.shape} do not cover {n} positions")
    kld, match = np.empty(n), np.empty(n, bool)
    rows = max(1, _BLOCK_ELEMS // base_vocab)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        b32, t32 = base["logp"][s:e], test_logp[s:e]
        if np.isnan(t32).any() or (t32 == np.inf).any():
            raise ValueError(f"log-probs contain NaN or +inf (positions {s}..{e - 1})")
        lb = np.maximum(b32.astype(np.float64), LOG_FLOOR)  # -inf (masked ids) → finite terms, as in _project
        lt = np.maximum(t32.astype(np.float64), LOG_FLOOR)
        terms = np.exp(lb) * (lb - lt)
        if min_logp is not None:
            terms[lb <= min_logp] = 0.0
        kld[s:e] = terms.sum(axis=1)
        match[s:e] = b32.argmax(axis=1) == t32.argmax(axis=1)
    at = np.arange(n)
    nb = np.maximum(base["logp"][at, next_ids].astype(np.float64), LOG_FLOOR)
    nt = np.maximum(test_logp[at, next_ids].astype(np.float64), LOG_FLOOR)
    return ChunkStats(kld=np.maximum(kld, 0.0), top1_match=match, nll_test=-nt, nll_base=-nb,
                      p_test=np.exp(nt), p_base=np.exp(nb))


def chunk_stats(base: dict[str, np.ndarray], test_logp: np.ndarray, next_ids: np.ndarray) -> ChunkStats:
    """Compare a test chunk against its baseline; rows past len(next_ids) are ignored."""
    next_ids = np.asarray(next_ids)
    if not np.array_equal(base["next_ids"], next_ids):
        raise ValueError("the baseline was built on different token ids than this chunk")
    base_vocab = int(base["vocab"])
    if test_logp.ndim != 2 or test_logp.shape[1] != base_vocab:
        raise ValueError(f"test vocab {test_logp.shape[-1]} != baseline vocab {base_vocab}; use align_vocab")
    test = _project(test_logp, next_ids, top_ids=base["top_ids"])
    lr, lt = base["top_logp"].astype(np.float64), test["top_logp"].astype(np.float64)
    tr, tt = base["tail_logp"].astype(np.float64), test["tail_logp"].astype(np.float64)
    kld = (np.exp(lr) * (lr - lt)).sum(axis=1) + np.exp(tr) * (tr - tt)
    nr, nt = base["next_logp"].astype(np.float64), test["next_logp"].astype(np.float64)
    return ChunkStats(
        kld=np.maximum(kld, 0.0),  # float32 storage can leave ~-1e-8 where the true value is >= 0
        top1_match=test["argmax"] == base["argmax"],
        nll_test=-nt,
        nll_base=-nr,
        p_test=np.exp(nt),
        p_base=np.exp(nr),
    )


def summarize(stats: list[ChunkStats], baseline: str, text_sha: str = "",
              warnings: Iterable[str] = ()) -> FidelityResult:
    """Aggregate all positions of all chunks (llama.cpp's summary statistics)."""
    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(s, name) for s in stats]) if stats else np.empty(0)

    kld = cat("kld")
    n = len(kld)
    if n == 0:
        raise ValueError("no positions to summarize")
    ppl, baseline_ppl = float(np.exp(cat("nll_test").mean())), float(np.exp(cat("nll_base").mean()))
    # Positions within a chunk share their context and are correlated: the SE comes from per-chunk means
    # (batch means), weighted by chunk length, not from the per-position spread.
    # (With equal chunks, as protocol llamacpp has, this is mlx-kld's SE clustered by sequence, CR1, exactly.)
    sizes = np.array([len(s.kld) for s in stats], np.float64)
    chunk_means = np.array([s.kld.mean() for s in stats if len(s.kld)])
    kld_se = float(np.sqrt(np.sum((sizes / n) ** 2) * chunk_means.var(ddof=1))) if len(chunk_means) > 1 else float("nan")
    # llama-perplexity's "Mean KLD ± x": sqrt((E[k²] − E[k]²) / (n − 1)), as if tokens were independent (0 there
    # at n ≤ 10; NaN here)
    kld_se_token = float(np.sqrt(max(np.mean(kld ** 2) - np.mean(kld) ** 2, 0.0) / (n - 1))) if n > 10 else float("nan")
    return FidelityResult(
        baseline=baseline,
        n_tokens=n,
        kld_mean=float(kld.mean()),
        kld_se=kld_se,
        kld_se_token=kld_se_token,
        kld_median=float(np.median(kld)),
        kld_p95=float(np.percentile(kld, 95)),  # linear interpolation at q·(n−1): llama-perplexity's percentile
        kld_p99=float(np.percentile(kld, 99)),
        kld_max=float(kld.max()),
        top1_pct=float(100.0 * cat("top1_match").mean()),
        ppl=ppl,
        baseline_ppl=baseline_ppl,
        dppl=ppl - baseline_ppl,
        rms_dp=float(100.0 * np.sqrt(np.mean((cat("p_test") - cat("p_base")) ** 2))),
        text_sha=text_sha,
        warnings=list(warnings),
        n_chunks=len(stats),
    )


def _logsumexp_rows(x: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape[0])
    rows = max(1, _BLOCK_ELEMS // max(1, x.shape[1]))
    for s in range(0, x.shape[0], rows):
        b = x[s:s + rows].astype(np.float64)
        m = b.max(axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)  # an all -inf row (masked padding) has lse -inf, not NaN
        with np.errstate(divide="ignore"):
            out[s:s + rows] = m[:, 0] + np.log(np.exp(b - m).sum(axis=1))
    return out


def align_vocab(base_vocab: int, test_logp: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Bring a test chunk to the baseline vocab: (log-probs, warning or None).

    A larger test vocab (padded embedding rows) is cut to the shared prefix and renormalised; the
    warning gives the mean probability mass that sat on the dropped ids. A smaller one cannot hold
    the baseline's ids and raises.
    """
    test_vocab = test_logp.shape[1]
    if test_vocab < base_vocab:
        raise ValueError(f"test vocab {test_vocab} is smaller than baseline vocab {base_vocab}")
    if test_vocab == base_vocab:
        return test_logp, None
    lse_prefix = _logsumexp_rows(test_logp[:, :base_vocab])
    lse_extra = _logsumexp_rows(test_logp[:, base_vocab:])
    with np.errstate(over="ignore"):
        dropped = float(np.mean(1.0 / (1.0 + np.exp(lse_prefix - lse_extra))))
    aligned = (test_logp[:, :base_vocab] - lse_prefix[:, None].astype(np.float32)).astype(np.float32)
    warning = (f"test vocab {test_vocab} > baseline vocab {base_vocab}: compared on the first {base_vocab} "
               f"ids, renormalised (mean mass dropped {dropped:.2e})")
    return aligned, warning


def answer_agreement(base_ids: list[int], test_ids: list[int]) -> dict[str, float]:
    """How far a test answer's tokens drift from the baseline answer's (1.0 = identical)."""
    base_ids, test_ids = list(base_ids), list(test_ids)
    longest = max(len(base_ids), len(test_ids))
    prefix = 0
    for a, b in zip(base_ids, test_ids):
        if a != b:
            break
        prefix += 1
    return {
        "exact": float(base_ids == test_ids),
        "token_similarity": difflib.SequenceMatcher(None, base_ids, test_ids, autojunk=False).ratio(),
        "prefix_match": prefix / longest if longest else 1.0,
    }
