"""Benchmark shapes (BxL) and the synthetic token ids fed straight to the session.

A shape's input is exactly L tokens per row: the tokenizer's own leading special tokens (CLS), random
ordinary vocabulary ids, and its trailing special tokens (SEP). Every row is full length, so the attention
mask is all ones and the work is exactly B x L tokens for every variant and for PyTorch alike. The ids are
drawn from a seeded generator, so every process of a run (and every run) sees the same inputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError, ModelFolderError, missing_dependency

DEFAULT_SHAPES = ("1x16", "1x128", "32x128", "8x512", "1x2048", "1x8192")
# --short skips the 8192-token input unless the user names it: on two CPU cores it alone takes minutes.
SHORT_SKIPS = ("1x8192",)

_SHAPE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class Shape:
    batch: int
    length: int

    @property
    def tokens(self) -> int:
        return self.batch * self.length

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.length}"

    def __str__(self) -> str:
        return self.label


def parse_shape(text: str) -> Shape:
    match = _SHAPE_RE.match(text)
    if not match:
        raise InvalidInputError(f"shape {text!r} is not of the form BxL (for example 32x128)")
    batch, length = int(match.group(1)), int(match.group(2))
    if batch < 1:
        raise InvalidInputError(f"shape {text!r}: batch size must be at least 1")
    if length < 2:
        raise InvalidInputError(f"shape {text!r}: length must be at least 2 (CLS and SEP)")
    return Shape(batch, length)


def parse_shapes(spec: str | Iterable[str], max_length: int | None = None) -> list[Shape]:
    """Parse "1x16,32x128" (or a list of such strings); duplicates dropped, the given order kept."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s for s in (i.strip() for i in items) if s]
    if not items:
        raise InvalidInputError("no shapes given; expected a list like 1x16,32x128")
    shapes: list[Shape] = []
    for item in items:
        shape = parse_shape(item)
        if max_length is not None and shape.length > max_length:
            raise InvalidInputError(
                f"shape {shape} is longer than the model's max_length {max_length}"
            )
        if shape not in shapes:
            shapes.append(shape)
    return shapes


@dataclass(frozen=True)
class TokenSource:
    """What is needed to build valid token sequences for one model folder."""

    prefix: tuple[int, ...]  # leading special tokens ([CLS])
    suffix: tuple[int, ...]  # trailing special tokens ([SEP])
    ordinary_ids: np.ndarray  # vocabulary ids that are not special/added tokens

    @classmethod
    def from_tokenizer_file(cls, path: str | Path) -> TokenSource:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise missing_dependency("tokenizers", "cpu", "gte-onnx bench") from None
        path = Path(path)
        if not path.is_file():
            raise ModelFolderError(f"tokenizer file {path} is missing")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception on a bad file
            raise ModelFolderError(f"cannot read tokenizer {path}: {exc}") from None
        # Reset any padding/truncation baked into tokenizer.json (the reranker's pads to 8000).
        tokenizer.no_padding()
        tokenizer.no_truncation()
        encoding = tokenizer.encode("hello", add_special_tokens=True)
        ids, special = list(encoding.ids), list(encoding.special_tokens_mask)
        first_plain = next((i for i, s in enumerate(special) if not s), len(ids))
        last_plain = max((i for i, s in enumerate(special) if not s), default=len(ids) - 1)
        prefix = tuple(ids[:first_plain])
        suffix = tuple(ids[last_plain + 1:])
        added = set(tokenizer.get_added_tokens_decoder())
        vocab_size = tokenizer.get_vocab_size(with_added_tokens=False)
        ordinary = np.array([i for i in range(vocab_size) if i not in added], dtype=np.int64)
        if ordinary.size == 0:
            raise ModelFolderError(f"tokenizer {path} has no ordinary vocabulary ids")
        return cls(prefix=prefix, suffix=suffix, ordinary_ids=ordinary)

    def synthetic_ids(self, shape: Shape, seed: int = 0) -> np.ndarray:
        """(B, L) int64 ids: prefix + random ordinary ids + suffix, exactly L per row."""
        body = shape.length - len(self.prefix) - len(self.suffix)
        if body < 0:
            raise InvalidInputError(
                f"shape {shape} is shorter than the tokenizer's special tokens "
                f"({len(self.prefix) + len(self.suffix)})"
            )
        # Seed from the shape too, so adding a shape to the list does not change the others' inputs.
        rng = np.random.default_rng([seed, shape.batch, shape.length])
        ids = np.empty((shape.batch, shape.length), dtype=np.int64)
        ids[:, : len(self.prefix)] = self.prefix
        ids[:, len(self.prefix): len(self.prefix) + body] = rng.choice(
            self.ordinary_ids, size=(shape.batch, body)
        )
        if self.suffix:
            ids[:, shape.length - len(self.suffix):] = self.suffix
        return ids


def tokenizer_path(folder: str | Path, tokenizer_meta: Mapping) -> Path:
    """The folder's tokenizer.json, wherever the manifest says it is."""
    files = tokenizer_meta.get("files") if isinstance(tokenizer_meta, Mapping) else None
    name = "tokenizer.json"
    if isinstance(files, (list, tuple)):
        name = next((f for f in files if str(f).endswith("tokenizer.json")), name)
    elif isinstance(files, Mapping):
        name = files.get("tokenizer", name)
    elif isinstance(tokenizer_meta, Mapping) and isinstance(tokenizer_meta.get("file"), str):
        name = tokenizer_meta["file"]
    return Path(folder) / name


__all__ = [
    "DEFAULT_SHAPES",
    "SHORT_SKIPS",
    "Shape",
    "TokenSource",
    "parse_shape",
    "parse_shapes",
    "tokenizer_path",
]
