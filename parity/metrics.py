"""Fidelity and retrieval metrics: small pure numpy functions, no scipy.

Conventions: `a` / `scores_ref` / the first argument is the reference (PyTorch or fp32), the second the
variant under test. Row-wise functions take (n, d) arrays and return (n,) arrays.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# Below this norm a row is treated as the zero vector; its cosine is defined as 0 (or 1 if both are zero),
# never NaN, so a collapsed variant shows up as a low figure instead of poisoning a mean.
_TINY = 1e-12


def _as_2d(name: str, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 1-D or 2-D array, got shape {arr.shape}")
    return arr


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a2, b2 = _as_2d("a", a), _as_2d("b", b)
    if a2.shape != b2.shape:
        raise ValueError(f"shapes differ: reference {a2.shape} vs candidate {b2.shape}")
    return a2, b2


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`, shape (n,)."""
    a2, b2 = _pair(a, b)
    na = np.linalg.norm(a2, axis=1)
    nb = np.linalg.norm(b2, axis=1)
    dot = np.einsum("ij,ij->i", a2, b2)
    out = np.zeros(len(a2), dtype=np.float64)
    both = (na > _TINY) & (nb > _TINY)
    out[both] = dot[both] / (na[both] * nb[both])
    out[(na <= _TINY) & (nb <= _TINY)] = 1.0
    return np.clip(out, -1.0, 1.0)


def centred_cosine_rows(a: np.ndarray, b: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Row cosine after subtracting one mean vector from both sides.

    On random weights every CLS vector points nearly the same way, so plain cosine is ~1 whatever the
    error; removing the reference's mean vector keeps only the part that differs between texts. The same
    `center` (default: the mean row of `a`, the reference) is subtracted from both, so a variant that
    merely adds a constant offset is still penalised.
    """
    a2, b2 = _pair(a, b)
    mu = a2.mean(axis=0) if center is None else np.asarray(center, dtype=np.float64).reshape(-1)
    if mu.shape != (a2.shape[1],):
        raise ValueError(f"center has shape {mu.shape}, expected ({a2.shape[1]},)")
    return cosine_rows(a2 - mu, b2 - mu)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest elementwise |a - b|."""
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"shapes differ: reference {a_arr.shape} vs candidate {b_arr.shape}")
    if a_arr.size == 0:
        return 0.0
    return float(np.max(np.abs(a_arr - b_arr)))


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| divided by the reference's spread (std over all its values); scale-free."""
    spread = float(np.std(np.asarray(a, dtype=np.float64)))
    return max_abs_diff(a, b) / max(spread, _TINY)


def rankdata(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata's "average")."""
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    order = np.argsort(arr, kind="mergesort")
    sorted_vals = arr[order]
    # Start index of each run of equal values in the sorted array.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(arr)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1..end
    ranks_sorted = np.repeat(avg, ends - starts)
    ranks = np.empty(len(arr), dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    xa = np.asarray(x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if xa.shape != ya.shape:
        raise ValueError(f"lengths differ: {xa.size} vs {ya.size}")
    if xa.size < 2:
        raise ValueError("a correlation needs at least 2 values")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        return float("nan")
    xc, yc = xa - xa.mean(), ya - ya.mean()
    denom = np.sqrt(np.dot(xc, xc) * np.dot(yc, yc))
    if denom == 0.0:
        # A constant side carries no ranking information: correlation is undefined.
        return float("nan")
    return float(np.clip(np.dot(xc, yc) / denom, -1.0, 1.0))


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks). NaN when either side is constant."""
    xa = np.asarray(x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if xa.shape != ya.shape:
        raise ValueError(f"lengths differ: {xa.size} vs {ya.size}")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        return float("nan")
    return pearson(rankdata(xa), rankdata(ya))


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first; ties broken by the lower index."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    k = min(int(k), s.shape[1])
    # Stable sort on -score keeps the lower index first among equals, so results are deterministic.
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def topk_overlap(scores_ref: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Per query row, |top-k(ref) ∩ top-k(candidate)| / k, shape (n_queries,)."""
    ref = np.asarray(scores_ref, dtype=np.float64)
    cand = np.asarray(scores, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"score shapes differ: reference {ref.shape} vs candidate {cand.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top_ref, top_cand = top_k_indices(ref, k), top_k_indices(cand, k)
    kk = top_ref.shape[1]
    return np.array(
        [len(set(r.tolist()) & set(c.tolist())) / kk for r, c in zip(top_ref, top_cand)], dtype=np.float64
    )


def _gains(relevant: set | Mapping) -> Mapping:
    if isinstance(relevant, Mapping):
        return relevant
    return {doc: 1.0 for doc in relevant}


def ndcg_at_k(ranked_ids: Sequence, relevant: set | Mapping, k: int) -> float:
    """nDCG@k with linear gains (graded if `relevant` maps id -> gain, else binary), log2 discount.

    The ideal DCG uses the best possible ordering of all relevant ids (not only those retrieved), which
    is the trec_eval / BEIR definition. No relevant ids -> 0.0.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gains = _gains(relevant)
    ideal_gains = sorted((float(g) for g in gains.values() if g > 0), reverse=True)[:k]
    if not ideal_gains:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = sum(float(gains.get(doc, 0.0)) * discounts[i] for i, doc in enumerate(list(ranked_ids)[:k]))
    idcg = float(np.dot(ideal_gains, discounts[: len(ideal_gains)]))
    return dcg / idcg


def mrr_at_k(ranked_ids: Sequence, relevant: set | Mapping, k: int) -> float:
    """Reciprocal rank of the first relevant id within the first k, else 0.0."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gains = _gains(relevant)
    for i, doc in enumerate(list(ranked_ids)[:k]):
        if gains.get(doc, 0.0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def percentile(x: np.ndarray, q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default."""
    return float(np.percentile(np.asarray(x, dtype=np.float64), q))
