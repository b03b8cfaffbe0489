"""Reranker: cross-encoder relevance scores for (query, document) pairs."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gte_onnx.errors import InvalidInputError
from gte_onnx.loaded_model import LoadedModel
from gte_onnx.inference.pooling import sigmoid
from gte_onnx.inference.tokenize import check_policy, check_texts, warn_truncated

ACTIVATIONS = (None, "sigmoid")


def check_pairs(pairs: object) -> list[tuple[str, str]]:
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__iter__"):
        raise InvalidInputError("pairs must be a list of (query, document) pairs")
    items = list(pairs)  # type: ignore[call-overload]
    if not items:
        raise InvalidInputError("pairs is empty: give at least one (query, document) pair")
    out = []
    for i, pair in enumerate(items):
        if isinstance(pair, str) or not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InvalidInputError(
                f"pairs[{i}] must be a (query, document) pair of two strings; a query alone cannot be scored"
            )
        query, document = pair
        if not isinstance(query, str) or not isinstance(document, str):
            raise InvalidInputError(
                f"pairs[{i}] holds {type(query).__name__} and {type(document).__name__}; both must be str"
            )
        out.append((query, document))
    return out


def ranked(scores: np.ndarray, documents: Sequence[str], top_k: int | None = None,
           with_text: bool = False) -> list[dict[str, Any]]:
    """[{"index", "score"[, "text"]}] best first (ties keep input order), the best top_k when given."""
    order = np.argsort(-np.asarray(scores), kind="stable")[: top_k or len(documents)]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": int(i), "score": float(scores[i])}
        if with_text:
            item["text"] = documents[i]
        results.append(item)
    return results


class Reranker(LoadedModel):
    """Score documents against a query with an exported reranker folder (task "rerank").

    Reranker(model, variant="auto", providers=None, threads=None, max_batch_tokens=16384, truncate="end",
             revision=None, source="auto", cache_dir=None, local_files_only=False)

    `model` is a model folder or a hub id: a gte-onnx folder, a safetensors checkpoint (converted once,
    without torch, into the cache) or a repo's own ONNX files (see gte_onnx.sources.resolve).

    >>> reranker = Reranker("gte-reranker-modernbert-base-onnx")
    >>> reranker.rerank("what is the capital of China?", ["Beijing", "sorting algorithms"], top_k=1)
    """

    task = "rerank"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_truncated: tuple[int, ...] = ()  # pairs cut by the last predict/rerank call

    def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        batch_size: int = 32,
        activation: str | None = None,
        show_progress: bool | None = None,
        truncate: str | None = None,
    ) -> np.ndarray:
        """Raw logits for each pair, (n,) for a one-label model, or sigmoid of them with activation="sigmoid".

        Pairs over the max length lose document tokens first; `.last_truncated` and a warning report them.
        """
        if activation not in ACTIVATIONS:
            raise InvalidInputError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        items = check_pairs(pairs)
        policy = check_policy(truncate or self.truncate)
        encoded = self.tokenizer.encode_pairs(items, policy)
        warn_truncated(encoded.truncated, len(items), self.max_length, policy)
        self.last_truncated = encoded.truncated
        logits = self.run_encoded(
            encoded, batch_size, lambda raw, mask: raw.astype(np.float32, copy=False), show_progress, "rerank"
        )
        if logits.ndim == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]
        return sigmoid(logits) if activation == "sigmoid" else logits

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
        activation: str | None = "sigmoid",
        truncate: str | None = None,
    ) -> list[dict[str, Any]]:
        """Documents sorted best first, as [{"index", "score"[, "text"]}]; top_k keeps the best k."""
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
        if isinstance(documents, str):
            raise InvalidInputError("documents must be a list of strings, not one string")
        docs = check_texts(documents, "documents")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise InvalidInputError(f"top_k must be a positive int or None, got {top_k!r}")
        scores = self.predict([(query, d) for d in docs], batch_size, activation, truncate=truncate)
        if scores.ndim != 1:
            raise InvalidInputError("rerank needs a one-label model; use predict() for multi-label outputs")
        return ranked(scores, docs, top_k, return_documents)
