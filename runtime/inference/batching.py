"""Length sorting and token-budget batches (the TEI shape).

Texts are sorted by length, longest first, and cut into batches whose padded size
(rows x longest row) stays under `max_batch_tokens`, so long and short texts never share one padded
batch and memory stays bounded for any mix of inputs. Where the cuts fall is chosen to waste the least
compute on padding, given what each extra batch costs. Callers restore the input order afterwards.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from gte_onnx import defaults


# What one more batch costs, in padded tokens' worth of compute. On the CPU a session run of the full-size
# int8 model costs ~10 ms beyond its tokens (the weights streamed once more) at ~0.5 ms a token: 20 tokens.
# Filling each batch to the limits pads the long tail of a sorted chunk heavily (9.5% extra tokens on CISI's
# documents, dev/cisi_padding.py); a few more, smaller batches with 0.8% padding ran CISI 1.14x faster
# (dev/corpus_ab.py ... +fill).
CPU_BATCH_COST_TOKENS = 20
# On a GPU a launch costs far more than a padded token, and big batches are what keep it busy: the fewest
# batches the limits allow, with the least padding among those.
GPU_BATCH_COST_TOKENS = 1 << 30


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    max_batch_tokens: int = defaults.MAX_BATCH_TOKENS,
    batch_cost_tokens: int = CPU_BATCH_COST_TOKENS,
) -> list[np.ndarray]:
    """Indices of each batch, longest inputs first.

    A batch holds at most `batch_size` rows and at most `max_batch_tokens` padded tokens (rows x its longest
    row); an input longer than the budget runs alone. Within those limits the cut points minimise the total
    cost, padded tokens plus `batch_cost_tokens` per batch (an exact dynamic programme over the sorted lengths).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    if batch_cost_tokens < 0:
        raise ValueError(f"batch_cost_tokens must be >= 0, got {batch_cost_tokens}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    n = len(order)
    if n == 0:
        return []
    # sorted descending, so a batch order[i:j] is as wide as its first row
    width = np.maximum(lengths[order], 1).astype(np.float64)
    best = np.zeros(n + 1)  # best[j]: least cost of the first j sorted inputs
    start_of = np.zeros(n + 1, dtype=np.int64)  # where the last batch of that best plan starts
    for j in range(1, n + 1):
        rows = np.arange(1, min(batch_size, j) + 1)
        first = j - rows
        padded = rows * width[first]  # grows with rows, so the allowed sizes are a prefix
        allowed = int(np.searchsorted(padded, max_batch_tokens, side="right")) or 1
        cost = best[first[:allowed]] + batch_cost_tokens + padded[:allowed]
        pick = int(np.argmin(cost))
        best[j], start_of[j] = cost[pick], first[pick]
    cuts = []
    j = n
    while j > 0:
        cuts.append((int(start_of[j]), j))
        j = cuts[-1][0]
    return [order[a:b] for a, b in reversed(cuts)]


def pad_batch(ids: Sequence[np.ndarray], pad_id: int, multiple: int = 1,
              limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the batch's own longest row, rounded up to `multiple` while that stays within `limit`
    (a variant's recipe asks for it: q4's 4-bit kernel computes an odd last row of a GEMM another way, so an
    even width keeps a text's vector the same alone and in any batch). Returns (input_ids, attention_mask)."""
    width = max(len(x) for x in ids)
    rounded = -(-width // multiple) * multiple
    if limit is None or rounded <= limit:
        width = rounded
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return input_ids, mask


def pad_rows(rows: Sequence[np.ndarray], value: int = 0, width: int | None = None) -> np.ndarray:
    width = max(len(x) for x in rows) if width is None else width
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, x in enumerate(rows):
        out[i, : len(x)] = x
    return out

