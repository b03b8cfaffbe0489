"""Embedder.encode: texts in, float32 embeddings out (the sentence-transformers API)."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np

from gte_onnx.errors import PrecisionError
from gte_onnx.loaded_model import LoadedModel
from gte_onnx.inference.pooling import embedding_postprocess
from gte_onnx.precision import CalibrationRanges, calibrate, check_precision, needs_ranges, quantize, recorded_ranges
from gte_onnx.inference.stream import EmbeddedChunk, check_chunk_size, iter_chunks, warn_once_truncated
from gte_onnx.inference.tokenize import check_policy, check_texts, warn_truncated
from gte_onnx import defaults


class Embeddings(np.ndarray):
    """An array of embeddings (float32, or the quantized dtype of `precision`) that also says which inputs
    were truncated.

    `.truncated` holds the indices of inputs cut to the max length, `.token_counts` the tokens each input
    had before truncation, `.precision` the precision of the values and `.ranges` the CalibrationRanges
    int8/uint8 vectors were quantized with (None otherwise). It is a plain ndarray in every other way.
    """

    truncated: tuple[int, ...] = ()
    token_counts: tuple[int, ...] = ()
    precision: str = "float32"
    ranges: CalibrationRanges | None = None

    def __array_finalize__(self, obj):
        if obj is not None:
            self.truncated = getattr(obj, "truncated", ())
            self.token_counts = getattr(obj, "token_counts", ())
            self.precision = getattr(obj, "precision", "float32")
            self.ranges = getattr(obj, "ranges", None)


class Embedder(LoadedModel):
    """Embed texts with an exported model folder (or hub id), on the CPU or CUDA execution providers.

    Embedder(model, variant="auto", providers=None, threads=None, max_batch_tokens=16384, truncate="end",
             revision=None, source="auto", cache_dir=None, local_files_only=False)

    `model` is a model folder or a hub id: a gte-onnx folder, a safetensors checkpoint (converted once,
    without torch, into the cache) or a repo's own ONNX files (see gte_onnx.sources.resolve).

    >>> model = Embedder("gte-modernbert-base-onnx")
    >>> vectors = model.encode(["what is the capital of China?", "Beijing"])
    """

    task = "embedding"
    dim = property(lambda self: self.manifest.dim)

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        normalize: bool | None = None,
        show_progress: bool | None = None,
        truncate: str | None = None,
        precision: str = "float32",
        ranges: CalibrationRanges | None = None,
    ) -> Embeddings:
        """Embed one string -> (dim,), or a list of n strings -> (n, dim), float32.

        normalize=None takes the manifest's default. Inputs over the max length follow `truncate`
        ("end", "start" or "error"); truncated inputs are reported by a TruncationWarning and in
        the result's `.truncated`.

        precision="int8" | "uint8" gives (n, dim) int8 | uint8 vectors, "binary" | "ubinary" the signs
        packed into (n, dim/8) int8 | uint8 (sentence-transformers' quantize_embeddings; see
        gte_onnx.precision). Vectors are normalised (or not) first. int8/uint8 use `ranges` (a
        CalibrationRanges, e.g. from `calibrate_ranges`), else the ranges recorded in the model folder
        (`gte-onnx calibrate --record`); they are never calibrated on the batch itself, so a text gets the
        same vector whatever its batch-mates, and without ranges a PrecisionError says how to make them.
        The result's `.ranges` are the ranges used.
        """
        single = isinstance(texts, str)
        items = check_texts(texts)
        policy = check_policy(truncate or self.truncate)
        precision, ranges = self.resolve_precision(precision, ranges)
        result = self._encode_list(items, batch_size, normalize, show_progress, policy, "encode", precision, ranges)
        warn_truncated(result.truncated, len(items), self.max_length, policy)
        if single:
            single_row = result[0]
            single_row.truncated, single_row.token_counts = result.truncated, result.token_counts
            return single_row
        return result

    @property
    def recorded_ranges(self) -> CalibrationRanges | None:
        """The int8/uint8 ranges recorded in the model folder's manifest, or None."""
        return recorded_ranges(self.manifest, self.folder)

    def calibrate_ranges(self, texts: Sequence[str], batch_size: int = 32, normalize: bool | None = None,
                         source: str = "") -> CalibrationRanges:
        """int8/uint8 ranges from a sample of texts like the ones you will embed (a thousand or more; not
        your evaluation set): per-dimension min/max of their vectors, normalised as `normalize` says."""
        items = check_texts(texts)
        normalize = self.manifest.normalize if normalize is None else bool(normalize)
        vectors = self.encode(items, batch_size=batch_size, normalize=normalize, show_progress=False)
        return calibrate(np.asarray(vectors), normalized=normalize, source=source or f"{len(items)} texts")

    def resolve_precision(self, precision: str, ranges: CalibrationRanges | None) -> tuple[str, CalibrationRanges | None]:
        """(precision, the ranges int8/uint8 will use: `ranges`, else the recorded ones, else None)."""
        precision = check_precision(precision)
        if not needs_ranges(precision):
            return precision, None
        if ranges is None:
            ranges = self.recorded_ranges
        elif not isinstance(ranges, CalibrationRanges):
            raise PrecisionError(f"ranges must be CalibrationRanges (gte_onnx.precision), got {type(ranges).__name__}")
        if ranges is not None and ranges.dim != self.dim:
            raise PrecisionError(f"the ranges have {ranges.dim} dimensions but this model's vectors have {self.dim}")
        return precision, ranges

    def _encode_list(
        self, items: list[str], batch_size: int, normalize: bool | None, show_progress: bool | None, policy: str,
        desc: str, precision: str = "float32", ranges: CalibrationRanges | None = None,
    ) -> Embeddings:
        normalize = self.manifest.normalize if normalize is None else bool(normalize)
        encoded = self.tokenizer.encode(items, policy)
        postprocess = embedding_postprocess(self.manifest.pooling, normalize)
        out = self.run_encoded(encoded, batch_size, postprocess, show_progress, desc)
        if precision != "float32":
            out = quantize(out, precision, ranges, normalized=normalize)
        result = out.view(Embeddings)
        result.truncated = encoded.truncated
        result.token_counts = encoded.original_lengths
        result.precision, result.ranges = precision, ranges
        return result

    def embed(
        self,
        items: Iterable,
        batch_size: int = 32,
        chunk_size: int = defaults.CHUNK_SIZE,
        normalize: bool | None = None,
        truncate: str | None = None,
        precision: str = "float32",
        ranges: CalibrationRanges | None = None,
    ) -> Iterator[Embeddings | EmbeddedChunk]:
        """Embed a corpus of any size lazily, `chunk_size` items at a time (memory is bounded by the chunk).

        `items` is any iterable (a generator, a file's lines, ...) of texts, or of (id, text) pairs.
        For texts it yields Embeddings arrays, (<= chunk_size, dim) float32, in input order, whose
        `.truncated` holds chunk-relative indices and `.token_counts` the tokens before truncation.
        For (id, text) pairs it yields EmbeddedChunk(ids, vectors, token_counts, truncated) with the ids
        as given and `truncated` as a bool array. A text that is not a str, or is empty, raises
        InvalidInputError naming its position (and id). Truncated inputs warn once per call.
        `precision` and `ranges` are encode's: every chunk is quantized with the same ranges.
        """
        chunk_size = check_chunk_size(chunk_size)
        policy = check_policy(truncate or self.truncate)
        precision, ranges = self.resolve_precision(precision, ranges)
        warned = False
        for pairs, start, ids, texts in iter_chunks(items, chunk_size):
            vectors = self._encode_list(texts, batch_size, normalize, False, policy, "embed", precision, ranges)
            if vectors.truncated and not warned:
                warn_once_truncated(len(vectors.truncated), start, self.max_length, policy)
                warned = True
            if not pairs:
                yield vectors
                continue
            truncated = np.zeros(len(ids), dtype=bool)
            truncated[list(vectors.truncated)] = True
            token_counts = np.asarray(vectors.token_counts, dtype=np.int32)
            yield EmbeddedChunk(ids, np.asarray(vectors), token_counts, truncated, precision, ranges)

    def count_tokens(self, texts: str | Sequence[str]) -> list[int]:
        return self.tokenizer.count_tokens(check_texts(texts))
