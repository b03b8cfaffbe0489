"""Task scores on real text: STS-B Spearman and CISI nDCG@10 / MRR@10, for any `embed` callable.

`embed(texts: list[str]) -> np.ndarray (n, dim)` can be a runtime Embedder's encode, a PyTorch model, or
anything else, so the same numbers compare fp32, quantized variants and the reference. Scores are x100
(points), as MTEB reports them. Cosine similarity throughout (embeddings are L2-normalised here, whatever
the embedder's default), and retrieval is exact search in numpy.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from . import metrics
from .datasets import RetrievalSet, load_cisi, load_sts_b

Embed = Callable[[list[str]], np.ndarray]


def _normalised(x: np.ndarray, expected_rows: int, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != expected_rows:
        raise ValueError(f"embed() returned shape {arr.shape} for {expected_rows} {what}; expected (n, dim)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"embed() returned NaN or inf for some {what}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def _embed_unique(embed: Embed, texts: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """Embed each distinct text once (STS-B repeats sentences) and return text -> unit vector."""
    unique = list(dict.fromkeys(texts))
    vectors = _normalised(embed(unique), len(unique), what)
    return dict(zip(unique, vectors))


def sts_spearman(
    embed: Embed,
    split: str = "test",
    data: str | os.PathLike | None = None,
    limit: int | None = None,
) -> float:
    """Spearman x100 between cos(emb(s1), emb(s2)) and the STS-B gold scores."""
    s1, s2, gold = load_sts_b(split, data)
    if limit is not None:
        s1, s2, gold = s1[:limit], s2[:limit], gold[:limit]
    table = _embed_unique(embed, s1 + s2, "STS-B sentences")
    cos = np.array([float(np.dot(table[a], table[b])) for a, b in zip(s1, s2)])
    return 100.0 * metrics.spearman(cos, gold)


def retrieval_scores(
    embed: Embed,
    data: str | os.PathLike | RetrievalSet | None = None,
    k: int = 10,
    max_queries: int | None = None,
    embed_queries: Embed | None = None,
) -> dict[str, float]:
    """CISI nDCG@k and MRR@k x100 over the judged queries (exact cosine search over all documents).

    `embed_queries` lets a model that wants a query prefix embed queries differently (GTE needs none).
    """
    rs = data if isinstance(data, RetrievalSet) else load_cisi(data)
    doc_ids = list(rs.documents)
    query_ids = list(rs.queries)[:max_queries] if max_queries else list(rs.queries)
    docs = _normalised(embed([rs.documents[d] for d in doc_ids]), len(doc_ids), "documents")
    q_texts = [rs.queries[q] for q in query_ids]
    queries = _normalised((embed_queries or embed)(q_texts), len(q_texts), "queries")
    scores = queries @ docs.T
    top = metrics.top_k_indices(scores, k)
    ndcg, mrr = [], []
    for qi, qid in enumerate(query_ids):
        ranked = [doc_ids[j] for j in top[qi]]
        ndcg.append(metrics.ndcg_at_k(ranked, rs.qrels[qid], k))
        mrr.append(metrics.mrr_at_k(ranked, rs.qrels[qid], k))
    return {f"ndcg@{k}": 100.0 * float(np.mean(ndcg)), f"mrr@{k}": 100.0 * float(np.mean(mrr))}
