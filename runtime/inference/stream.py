"""Embedder.embed: any iterable of texts (or of (id, text) pairs) in, float32 chunks out, lazily.

The corpus is read `chunk_size` items at a time: each chunk is checked, tokenized and run through the same
batched loop as `encode`, then handed back before the next chunk is read. Memory is bounded by the chunk,
whatever the corpus size, and a generator corpus is consumed only as fast as the caller asks.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from gte_onnx.errors import InvalidInputError
from gte_onnx.inference.tokenize import TruncationWarning


@dataclass(frozen=True)
class EmbeddedChunk:
    """One chunk of an (id, text) corpus: `ids` as given, `vectors` (n, dim) float32 (or the quantized
    vectors of `precision`, with the int8/uint8 `ranges`), `token_counts` (n,) int32 tokens before
    truncation, `truncated` (n,) bool."""

    ids: list
    vectors: np.ndarray
    token_counts: np.ndarray
    truncated: np.ndarray
    precision: str = "float32"
    ranges: Any = None

    def __len__(self) -> int:
        return len(self.ids)


def check_chunk_size(chunk_size: object) -> int:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def _label(position: int, item_id: object, pairs: bool) -> str:
    return f"item {position} (id {item_id!r})" if pairs else f"item {position}"


def _check_text(text: object, position: int, item_id: object, pairs: bool) -> str:
    where = _label(position, item_id, pairs)
    if not isinstance(text, str):
        raise InvalidInputError(f"{where} is {type(text).__name__}, not str; every text must be a string")
    if not text.strip():
        raise InvalidInputError(f"{where} is an empty text; remove it or give it some text")
    return text


def _split_item(item: object, position: int, pairs: bool) -> tuple[object, str]:
    """(id, text) of one item; the first item decides whether the corpus is texts or (id, text) pairs."""
    if not pairs:
        if isinstance(item, (tuple, list)):
            raise InvalidInputError(f"item {position} is a pair but the corpus began with plain texts")
        return position, _check_text(item, position, position, False)
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise InvalidInputError(
            f"item {position} is {type(item).__name__}, not an (id, text) pair like the corpus's first item"
        )
    item_id, text = item
    return item_id, _check_text(text, position, item_id, True)


def iter_chunks(items: Iterable[Any], chunk_size: int) -> Iterator[tuple[bool, int, list, list[str]]]:
    """(pairs?, position of the chunk's first item, ids, texts), chunk_size items at a time, checked."""
    if isinstance(items, (str, bytes, bytearray)) or not hasattr(items, "__iter__"):
        raise InvalidInputError(f"embed takes an iterable of texts or (id, text) pairs, got {type(items).__name__}")
    iterator = iter(items)
    pairs: bool | None = None
    start = 0
    while True:
        block = list(itertools.islice(iterator, chunk_size))
        if not block:
            return
        if pairs is None:
            pairs = isinstance(block[0], (tuple, list))
        split = [_split_item(item, start + k, pairs) for k, item in enumerate(block)]
        yield pairs, start, [s[0] for s in split], [s[1] for s in split]
        start += len(block)


def warn_once_truncated(count: int, first_position: int, max_length: int, policy: str) -> None:
    warnings.warn(
        f"{count} input(s) in the chunk starting at item {first_position} were longer than {max_length} tokens "
        f"and were truncated at the {policy}; each chunk's `truncated` says which (later chunks do not warn "
        "again); pass truncate='error' to refuse them instead",
        TruncationWarning,
        stacklevel=3,
    )
