"""Tokenization with an explicit truncation and padding policy.

The runtime sets truncation and padding itself and never takes them from tokenizer.json: the reranker's
tokenizer.json pads every input to 8000 tokens, and the embedder's config says model_max_length 1e30.
Padding is done later, per batch, to that batch's longest input (see batching.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from gte_onnx.errors import InputTooLongError, InvalidInputError, ModelFolderError

TRUNCATE_POLICIES = ("end", "start", "error")


@dataclass(frozen=True)
class Encoded:
    """Token ids of each input (unpadded), plus which inputs were cut and how long they were."""

    ids: list[np.ndarray]  # int64 arrays, one per input, in input order
    type_ids: list[np.ndarray]
    truncated: tuple[int, ...]  # indices of inputs that were cut to max_length
    original_lengths: tuple[int, ...]  # token counts before truncation (== len(ids[i]) when not cut)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def check_texts(texts: object, what: str = "texts") -> list[str]:
    """Normalise str | sequence of str into a list, with a clear error for anything else."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise InvalidInputError(f"{what} must be str, not bytes; decode it first")
    if texts is None or not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
        raise InvalidInputError(f"{what} must be a string or a list of strings, got {type(texts).__name__}")
    items = list(texts)  # type: ignore[arg-type]
    if not items:
        raise InvalidInputError(f"{what} is empty: give at least one string")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidInputError(
                f"{what}[{i}] is {type(item).__name__}, not str; every input must be a string"
            )
    return items


def _clean(text: str) -> str:
    """Replace lone surrogates (which cannot be UTF-8 encoded) with U+FFFD, as a browser would."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def check_policy(truncate: str) -> str:
    if truncate not in TRUNCATE_POLICIES:
        raise InvalidInputError(f"truncate must be one of {TRUNCATE_POLICIES}, got {truncate!r}")
    return truncate


def read_tokenizer_json(path: Path) -> str:
    """The text of tokenizer.json; unreadable or non-UTF-8 bytes are a ModelFolderError naming the file."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ModelFolderError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ModelFolderError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def parse_tokenizer(text: str, path: Path | str):
    """A `tokenizers` Tokenizer from tokenizer.json's text. The library raises a bare Exception for JSON it
    cannot read (truncated, garbled, an unknown model type); this says which file it was."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers has no exception type of its own
        detail = " ".join(str(exc).split())[:300]
        raise ModelFolderError(f"{path} is not a tokenizer file the tokenizers library can read: {detail}") from None


class TextTokenizer:
    """A `tokenizers` tokenizer with padding off and truncation set per call by policy."""

    def __init__(self, tokenizer_json: str, max_length: int, pad_token_id: int, parsed=None):
        from tokenizers import Tokenizer

        self._json = tokenizer_json
        self.max_length = int(max_length)
        self.pad_token_id = int(pad_token_id)
        # One tokenizer per (direction, strategy): truncation is mutable state on a Tokenizer, and the
        # server encodes from several threads, so each configuration gets its own object.
        self._by_config: dict[tuple[str, str], Tokenizer] = {}
        self._plain = self._make(None, parsed)  # `parsed`: tokenizer_json already parsed (from_folder)

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int, pad_token_id: int | None = None) -> "TextTokenizer":
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise ModelFolderError(f"{folder} has no tokenizer.json")
        text = read_tokenizer_json(path)
        tok = parse_tokenizer(text, path)
        if pad_token_id is None:
            pad = (tok.padding or {}).get("pad_id")
            if pad is None:
                pad = tok.token_to_id("[PAD]") or tok.token_to_id("<pad>") or 0
            pad_token_id = int(pad)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        if not 0 <= int(pad_token_id) < vocab:
            raise ModelFolderError(
                f"{path}: the pad token id {pad_token_id} (the manifest's tokenizer.pad_token_id) is outside the "
                f"tokenizer's vocabulary of {vocab}"
            )
        return cls(text, max_length, pad_token_id, parsed=tok)

    def _make(self, config: tuple[str, str] | None, parsed=None):
        tok = parsed if parsed is not None else parse_tokenizer(self._json, "tokenizer.json")
        tok.no_padding()
        tok.no_truncation()
        if config is not None:
            direction, strategy = config
            tok.enable_truncation(self.max_length, stride=0, strategy=strategy, direction=direction)
        return tok

    def _for(self, direction: str, strategy: str):
        key = (direction, strategy)
        tok = self._by_config.get(key)
        if tok is None:
            tok = self._by_config[key] = self._make(key)
        return tok

    # ---- single texts --------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], truncate: str = "end") -> Encoded:
        """Encode whole, then cut over-long inputs between their leading and trailing special tokens.

        One pass: tokenizers' own truncation would also build the overflow pieces, which costs more than
        the encoding itself on very long texts, and we need the uncut length for the report anyway.
        """
        check_policy(truncate)
        encodings = self._plain.encode_batch([_clean(t) for t in texts], add_special_tokens=True)
        ids, type_ids, truncated, lengths = [], [], [], []
        for i, e in enumerate(encodings):
            row = np.asarray(e.ids, dtype=np.int64)
            types = np.asarray(e.type_ids, dtype=np.int64)
            lengths.append(len(row))
            if len(row) > self.max_length:
                truncated.append(i)
                keep = self._cut(np.asarray(e.special_tokens_mask, dtype=bool), truncate)
                row, types = row[keep], types[keep]
            ids.append(row)
            type_ids.append(types)
        if truncated and truncate == "error":
            first = truncated[0]
            raise InputTooLongError(
                f"{len(truncated)} text(s) exceed the max length of {self.max_length} tokens "
                f"(the first is input {first}, with {lengths[first]} tokens); pass truncate='end' or 'start' to cut them"
            )
        return Encoded(ids=ids, type_ids=type_ids, truncated=tuple(truncated), original_lengths=tuple(lengths))

    def _cut(self, special: np.ndarray, truncate: str) -> np.ndarray:
        """Indices to keep: the leading and trailing special tokens, and as much of the body as fits."""
        n = len(special)
        head = int(np.argmin(special)) if not special.all() else n
        tail = int(np.argmin(special[::-1])) if not special.all() else 0
        room = max(self.max_length - head - tail, 0)
        body = np.arange(head, n - tail)
        body = body[:room] if truncate != "start" else body[len(body) - room :]
        return np.concatenate([np.arange(head), body, np.arange(n - tail, n)])[: self.max_length]

    @property
    def vocab_size(self) -> int:
        return self._plain.get_vocab_size(with_added_tokens=True)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts without truncation (special tokens included)."""
        encodings = self._plain.encode_batch([_clean(t) for t in texts], add_special_tokens=True)
        return [len(e.ids) for e in encodings]

    # ---- pairs (reranking) ---------------------------------------------------------------------------
    def encode_pairs(self, pairs: Sequence[tuple[str, str]], truncate: str = "end") -> Encoded:
        """[CLS] query [SEP] document [SEP]; over-long pairs lose document tokens first, never the query
        unless the query alone does not fit."""
        check_policy(truncate)
        direction = "left" if truncate == "start" else "right"
        cleaned = [(_clean(q), _clean(d)) for q, d in pairs]
        tok = self._for(direction, "only_second")
        try:
            encodings = tok.encode_batch(cleaned, add_special_tokens=True)
        except Exception:
            # only_second fails when the query alone is too long: fall back per pair.
            fallback = self._for(direction, "longest_first")
            encodings = []
            for pair in cleaned:
                try:
                    encodings.append(tok.encode(*pair, add_special_tokens=True))
                except Exception:
                    encodings.append(fallback.encode(*pair, add_special_tokens=True))
        plain = self._plain
        return self._finish(
            encodings,
            truncate,
            "pair",
            lambda idx: [len(plain.encode(*cleaned[i], add_special_tokens=True).ids) for i in idx],
        )

    def _finish(self, encodings, truncate: str, what: str, originals_of=None) -> Encoded:
        truncated = tuple(i for i, e in enumerate(encodings) if e.overflowing)
        lengths = [len(e.ids) for e in encodings]
        if truncated and originals_of is not None:
            # Rare path: measure the uncut length of the inputs that were cut, for the report.
            full = originals_of([i for i in truncated])
            for i, n in zip(truncated, full):
                lengths[i] = n
        if truncated and truncate == "error":
            i = truncated[0]
            raise InputTooLongError(
                f"{len(truncated)} {what}(s) exceed the max length of {self.max_length} tokens "
                f"(the first is input {i}, with {lengths[i]} tokens); pass truncate='end' or 'start' to cut them"
            )
        longest = max((len(e.ids) for e in encodings), default=0)
        if longest > self.max_length:  # tokenizers leaves a pair whole when max_length cannot fit its specials
            raise ModelFolderError(
                f"the model's max_length of {self.max_length} tokens is too small to hold a {what} with its "
                f"special tokens ({longest} tokens after truncation); the manifest's max_length is wrong"
            )
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        type_ids = [np.asarray(e.type_ids, dtype=np.int64) for e in encodings]
        return Encoded(ids=ids, type_ids=type_ids, truncated=truncated, original_lengths=tuple(lengths))


def warn_truncated(truncated: Sequence[int], total: int, max_length: int, policy: str) -> None:
    if truncated:
        warnings.warn(
            f"{len(truncated)} of {total} inputs were longer than {max_length} tokens and were truncated "
            f"at the {policy} (indices {list(truncated[:10])}{'...' if len(truncated) > 10 else ''}); "
            "pass truncate='error' to refuse them instead",
            TruncationWarning,
            stacklevel=3,
        )


class TruncationWarning(UserWarning):
    """Some inputs were cut to the model's max length."""
