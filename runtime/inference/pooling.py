"""Pooling and normalisation: small pure numpy functions (the fastembed shape)."""

from __future__ import annotations

from typing import Callable

import numpy as np


def cls_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """The first token's vector. (B, L, H) -> (B, H)."""
    del attention_mask  # CLS is position 0 under right padding, whatever the mask says
    return hidden[:, 0, :]


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean over the non-pad tokens. (B, L, H) -> (B, H)."""
    mask = attention_mask.astype(hidden.dtype)[:, :, None]
    summed = (hidden * mask).sum(axis=1)
    counts = np.clip(mask.sum(axis=1), 1e-9, None)  # sentence-transformers clamps the same way
    return summed / counts


def graph_pooled(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """pooling "none": the graph already returns one vector per input (the session checks it is (B, H))."""
    del attention_mask
    return hidden


POOLERS = {"cls": cls_pool, "mean": mean_pool, "none": graph_pooled}


def pool(kind: str, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    try:
        pooler = POOLERS[kind]
    except KeyError:
        raise ValueError(f"unknown pooling {kind!r}; expected one of {sorted(POOLERS)}") from None
    return pooler(hidden, attention_mask)


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, eps)


def embedding_postprocess(kind: str, normalize: bool) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(hidden, mask) -> float32 vectors: the pooling, then unit length when asked. Shared by every caller
    (Embedder.encode, the server) so their answers are the same function of the same model output."""
    pooler = POOLERS.get(kind)
    if pooler is None:
        raise ValueError(f"unknown pooling {kind!r}; expected one of {sorted(POOLERS)}")

    def postprocess(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        vectors = pooler(hidden, attention_mask).astype(np.float32, copy=False)
        return l2_normalize(vectors) if normalize else vectors

    return postprocess


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))
