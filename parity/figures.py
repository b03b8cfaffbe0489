"""Figures of one variant's outputs against a reference's: pure numpy (plus the data-set scores).

The quantize step calls these with the fp32 ONNX outputs standing in for PyTorch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from . import metrics

TOP_K = 10
RERANK_TOP_K = 3
DATA_SETS = ("sts-b", "cisi")


def _rank_agreement(ref: np.ndarray, got: np.ndarray, k: int, centre: bool) -> tuple[float, float]:
    """Mean top-k overlap and mean per-row Spearman of probe-vs-probe cosine scores (self excluded).

    With centre=True both sides are centred on the reference's mean vector first: on random weights every
    raw cosine is ~1 and rankings would be decided by noise in the shared direction.
    """
    r = np.asarray(ref, dtype=np.float64)
    g = np.asarray(got, dtype=np.float64)
    if centre:
        mu = r.mean(axis=0)
        r, g = r - mu, g - mu
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    s_ref, s_got = r @ r.T, g @ g.T
    n = len(r)
    off = ~np.eye(n, dtype=bool)
    s_ref_off = s_ref[off].reshape(n, n - 1)
    s_got_off = s_got[off].reshape(n, n - 1)
    overlap = float(metrics.topk_overlap(s_ref_off, s_got_off, k).mean())
    rhos = [metrics.spearman(a, b) for a, b in zip(s_ref_off, s_got_off)]
    rho = float(np.nanmean(rhos)) if not all(math.isnan(x) for x in rhos) else float("nan")
    return overlap, rho


def embedding_figures(ref: np.ndarray, got: np.ndarray, k: int = TOP_K) -> dict[str, float]:
    """Fidelity figures of raw (unnormalised) embeddings `got` against `ref`, both (n, dim)."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"embeddings have shape {got.shape}, the reference {ref.shape}")
    cos = metrics.cosine_rows(ref, got)
    centred = metrics.centred_cosine_rows(ref, got)
    figures = {
        "cosine_min": float(cos.min()),
        "cosine_p1": metrics.percentile(cos, 1),
        "cosine_mean": float(cos.mean()),
        "centred_cosine_min": float(centred.min()),
        "centred_cosine_mean": float(centred.mean()),
        "max_abs_diff": metrics.max_abs_diff(ref, got),
        "relative_error": metrics.relative_error(ref, got),
    }
    if len(ref) >= 3:
        figures["topk_overlap"], figures["score_spearman"] = _rank_agreement(ref, got, k, centre=True)
        figures["topk_overlap_raw"], figures["score_spearman_raw"] = _rank_agreement(ref, got, k, centre=False)
    if not np.all(np.isfinite(got)):
        figures["cosine_min"] = figures["centred_cosine_min"] = float("nan")
    return figures


def rerank_figures(
    ref: np.ndarray, got: np.ndarray, query_index: Sequence[int], k: int = RERANK_TOP_K
) -> dict[str, float]:
    """Logit error and per-query ranking agreement of a reranker's logits against the reference's."""
    ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    got = np.asarray(got, dtype=np.float64).reshape(len(got), -1)
    if ref.shape != got.shape:
        raise ValueError(f"logits have shape {got.shape}, the reference {ref.shape}")
    figures = {
        "logit_max_abs_diff": metrics.max_abs_diff(ref, got),
        "logit_relative_error": metrics.relative_error(ref, got),
        "logit_spearman": metrics.spearman(ref[:, 0], got[:, 0]),
    }
    groups = np.asarray(query_index)
    overlaps, top1 = [], []
    for q in np.unique(groups):
        rows = np.flatnonzero(groups == q)
        if len(rows) < 2:
            continue
        kk = min(k, len(rows) - 1)
        overlaps.append(metrics.topk_overlap(ref[rows, 0], got[rows, 0], kk)[0])
        top1.append(float(np.argmax(ref[rows, 0]) == np.argmax(got[rows, 0])))
    if overlaps:
        figures["rerank_topk_overlap"] = float(np.mean(overlaps))
        figures["rerank_top1_agreement"] = float(np.mean(top1))
    return figures


def token_mismatches(ref_ids: Sequence[np.ndarray], got_ids: Sequence[np.ndarray]) -> list[int]:
    """Indices whose runtime token ids differ from the reference's (tokenizer drift, truncation policy)."""
    return [i for i, (a, b) in enumerate(zip(ref_ids, got_ids)) if len(a) != len(b) or not np.array_equal(a, b)]


def data_figures(
    embed: Callable[[list[str]], np.ndarray], data: Sequence[str], max_queries: int | None = None
) -> dict[str, float]:
    """STS-B Spearman and/or CISI nDCG@10, MRR@10 (x100). `data` names: sts-b, cisi, or a path."""
    from .evaluate import retrieval_scores, sts_spearman

    out: dict[str, float] = {}
    for name in data:
        kind, path = resolve_data(name)
        if kind == "sts-b":
            out["sts_spearman"] = sts_spearman(embed, data=path)
        else:
            scores = retrieval_scores(embed, data=path, max_queries=max_queries)
            out["cisi_ndcg@10"], out["cisi_mrr@10"] = scores["ndcg@10"], scores["mrr@10"]
    return out


def resolve_data(name: str) -> tuple[str, Path | None]:
    """'sts-b' / 'cisi' (shipped copies) or a path: a CISI folder or an STS-B csv/folder."""
    low = name.lower()
    if low in ("sts-b", "stsb", "sts"):
        return "sts-b", None
    if low == "cisi":
        return "cisi", None
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(f"--data {name!r} is neither sts-b, cisi nor an existing path")
    if path.is_dir() and ((path / "CISI.ALL").is_file() or (path / "cisi" / "CISI.ALL").is_file()):
        return "cisi", path
    return "sts-b", path


def data_drops(variant: Mapping[str, float], fp32: Mapping[str, float]) -> dict[str, float]:
    """fp32 minus variant, in points: what the gates' *_drop figures hold."""
    pairs = {"sts_drop": "sts_spearman", "cisi_ndcg_drop": "cisi_ndcg@10", "cisi_mrr_drop": "cisi_mrr@10"}
    return {drop: fp32[key] - variant[key] for drop, key in pairs.items() if key in variant and key in fp32}


