"""Length sorting and token-budget batches (the TEI shape).

Texts are sorted by length, longest first, and cut into batches whose padded size
(rows x longest row) stays under `max_batch_tokens`, so long and short texts never share one padded
batch and memory stays bounded for any mix of inputs. Callers restore the input order afterwards.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_MAX_BATCH_TOKENS = 16384


def plan_batches(
    lengths: Sequence[int], batch_size: int, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
) -> list[np.ndarray]:
    """Indices of each batch, longest inputs first.

    A batch grows while it has fewer than `batch_size` rows and rows x its longest length stays within
    `max_batch_tokens`; an input longer than the budget runs alone.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)  # sorted descending: the first row is the longest
        rows = max(1, min(batch_size, max_batch_tokens // longest))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def pad_batch(ids: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the batch's own longest row. Returns (input_ids, attention_mask), int64."""
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return input_ids, mask


def pad_rows(rows: Sequence[np.ndarray], value: int = 0) -> np.ndarray:
    width = max(len(x) for x in rows)
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, x in enumerate(rows):
        out[i, : len(x)] = x
    return out

