"""Fidelity math on synthetic log-probs: KLD exactness, lower bound, monotonicity, storage, agreement."""

from __future__ import annotations

import numpy as np
import pytest

from runner.metrics.fidelity import (
    align_vocab,
    answer_agreement,
    chunk_stats,
    load_baseline_chunk,
    baseline_from_logprobs,
    save_baseline_chunk,
    summarize,
)

N, V = 256, 512


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))).astype(np.float32)


def full_kld(base: np.ndarray, test: np.ndarray) -> np.ndarray:
    r, t = base.astype(np.float64), test.astype(np.float64)
    return (np.exp(r) * (r - t)).sum(axis=1)


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    # peaked like an LM: a few plausible tokens, a long tail
    return np.random.default_rng(0).standard_normal((N, V)) * 2.5


@pytest.fixture(scope="module")
def next_ids() -> np.ndarray:
    return np.random.default_rng(1).integers(0, V, N - 1)


def perturbed(logits: np.ndarray, scale: float, seed: int = 2) -> np.ndarray:
    return log_softmax(logits + np.random.default_rng(seed).standard_normal(logits.shape) * scale)


def test_self_kld_is_zero_with_truncated_reference(logits, next_ids):
    lp = log_softmax(logits)
    base = baseline_from_logprobs(lp, 16, next_ids)
    st = chunk_stats(base, lp, next_ids)
    assert np.abs(st.kld).max() < 1e-6
    assert st.top1_match.all()
    res = summarize([st], "fp16")
    assert res.rms_dp == 0.0 and res.dppl == 0.0 and res.top1_pct == 100.0
    assert res.n_tokens == N - 1


def test_full_vocab_reference_is_exact(logits, next_ids):
    lp, lt = log_softmax(logits), perturbed(logits, 0.2)
    st = chunk_stats(baseline_from_logprobs(lp, V, next_ids), lt, next_ids)
    np.testing.assert_allclose(st.kld, full_kld(lp, lt)[: N - 1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("scale", [0.01, 0.05, 0.2, 1.0])
def test_top_k_kld_is_a_lower_bound(logits, next_ids, scale):
    lp, lt = log_softmax(logits), perturbed(logits, scale)
    full = full_kld(lp, lt)[: N - 1]
    for k in (8, 64):
        kld = chunk_stats(baseline_from_logprobs(lp, k, next_ids), lt, next_ids).kld
        assert (kld <= full + 1e-6).all()
    # a peaked distribution with k=64 leaves a small tail, so the bound is tight
    kld64 = chunk_stats(baseline_from_logprobs(lp, 64, next_ids), lt, next_ids).kld
    assert kld64.mean() > 0.8 * full.mean()


def test_kld_grows_and_top1_falls_with_noise(logits, next_ids):
    base = baseline_from_logprobs(log_softmax(logits), 32, next_ids)
    res = [summarize([chunk_stats(base, perturbed(logits, s), next_ids)], "fp16") for s in (0.01, 0.05, 0.2)]
    klds = [r.kld_mean for r in res]
    top1 = [r.top1_pct for r in res]
    assert 0 < klds[0] < klds[1] < klds[2]
    assert top1[0] >= top1[1] >= top1[2] and top1[2] < top1[0]
    assert all(r.rms_dp > 0 for r in res)
    for r in res:
        assert r.kld_median <= r.kld_p99 <= r.kld_max
        assert np.isnan(r.kld_se) and r.n_chunks == 1  # one chunk: its positions are correlated, no SE


def test_kld_se_comes_from_chunk_means(logits, next_ids):
    """Positions within a chunk are correlated: the SE is that of the per-chunk means, not of positions."""
    base = baseline_from_logprobs(log_softmax(logits), 32, next_ids)
    chunks = [chunk_stats(base, perturbed(logits, s, seed=i), next_ids) for i, s in enumerate((0.01, 0.05, 0.2, 0.1))]
    r = summarize(chunks, "fp16")
    means = np.array([c.kld.mean() for c in chunks])
    assert r.n_chunks == 4
    assert r.kld_se == pytest.approx(means.std(ddof=1) / 2)
    naive = np.concatenate([c.kld for c in chunks]).std(ddof=1) / np.sqrt(4 * len(next_ids))
    assert r.kld_se > naive  # chunks that differ systematically widen the interval, as they should


def test_uniform_ppl_is_vocab(next_ids):
    lp = np.full((N, V), -np.log(V), np.float32)
    res = summarize([chunk_stats(baseline_from_logprobs(lp, 4, next_ids), lp, next_ids)], "fp16")
    assert res.ppl == pytest.approx(V, rel=1e-5) and res.baseline_ppl == pytest.approx(V, rel=1e-5)
    assert res.kld_max < 1e-6


def test_masked_tokens_stay_finite(logits, next_ids):
    lp = logits.copy()
    lp[:, -10:] = -np.inf  # e.g. padded ids with masked logits
    lp = log_softmax(lp)
    lt = perturbed(logits, 0.05)
    st = chunk_stats(baseline_from_logprobs(lp, V, next_ids), lt, next_ids)
    assert np.isfinite(st.kld).all() and np.isfinite(st.nll_base).all()


def test_nan_log_probs_raise(logits, next_ids):
    base = baseline_from_logprobs(log_softmax(logits), 8, next_ids)
    bad = log_softmax(logits)
    bad[3, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        chunk_stats(base, bad, next_ids)


def test_mismatched_token_ids_raise(logits, next_ids):
    lp = log_softmax(logits)
    base = baseline_from_logprobs(lp, 8, next_ids)
    with pytest.raises(ValueError, match="different token ids"):
        chunk_stats(base, lp, (next_ids + 1) % V)


def test_align_vocab_padded_and_too_small(logits, next_ids):
    lp = log_softmax(logits)
    base = baseline_from_logprobs(lp, 8, next_ids)
    padded = log_softmax(np.concatenate([logits, np.full((N, 64), -30.0)], axis=1))
    with pytest.raises(ValueError, match="use align_vocab"):
        chunk_stats(base, padded, next_ids)
    aligned, warning = align_vocab(V, padded)
    assert aligned.shape == (N, V) and warning and str(V) in warning and str(V + 64) in warning
    assert np.abs(chunk_stats(base, aligned, next_ids).kld).max() < 1e-5
    same, none = align_vocab(V, lp)
    assert same is lp and none is None
    with pytest.raises(ValueError, match=rf"{V - 1}.*{V}"):
        align_vocab(V, lp[:, : V - 1])


def test_save_load_roundtrip(tmp_path, logits, next_ids):
    base = baseline_from_logprobs(log_softmax(logits), 8, next_ids)
    path = tmp_path / "chunk_000.npz"
    save_baseline_chunk(path, base)
    back = load_baseline_chunk(path)
    assert back.keys() == base.keys()
    for key in base:
        np.testing.assert_array_equal(back[key], base[key])
        assert back[key].dtype == base[key].dtype
    assert base["top_ids"].dtype == np.int32 and base["top_logp"].dtype == np.float32
    assert base["top_ids"].nbytes + base["top_logp"].nbytes == (N - 1) * 8 * 8
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        load_baseline_chunk(tmp_path / "other.npz")


def test_tail_mass_is_accurate_when_tiny():
    # top-2 hold all but ~1e-12 of the mass: 1 - sum(top-k) would cancel to noise
    lp = log_softmax(np.array([[30.0, 29.0] + [0.0] * 6]))
    base = baseline_from_logprobs(lp, 2, np.array([0]))
    expected = np.log(6.0) + float(lp[0, 2])
    assert base["tail_logp"][0] == pytest.approx(expected, rel=1e-5)


def test_answer_agreement():
    assert answer_agreement([1, 2, 3], [1, 2, 3]) == {"exact": 1.0, "token_similarity": 1.0, "prefix_match": 1.0}
    flipped = answer_agreement([1, 2, 3, 4], [1, 2, 9, 4])
    assert flipped["exact"] == 0.0
    assert flipped["token_similarity"] == pytest.approx(0.75)
    assert flipped["prefix_match"] == pytest.approx(0.5)
    longer = answer_agreement([1, 2], [1, 2, 3, 4])
    assert longer["prefix_match"] == pytest.approx(0.5) and longer["exact"] == 0.0
    assert answer_agreement([], []) == {"exact": 1.0, "token_similarity": 1.0, "prefix_match": 1.0}
    disjoint = answer_agreement([1, 2], [3, 4])
    assert disjoint["token_similarity"] == 0.0 and disjoint["prefix_match"] == 0.0
