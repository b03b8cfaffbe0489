"""Embedder.encode: texts in, float32 embeddings out (the sentence-transformers API)."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np

from .loaded import LoadedModel
from .pooling import embedding_postprocess
from .stream import EmbeddedChunk, check_chunk_size, iter_chunks, warn_once_truncated
from .tokenize import check_policy, check_texts, warn_truncated


class Embeddings(np.ndarray):
    """A float32 array of embeddings that also says which inputs were truncated.

    `.truncated` holds the indices of inputs cut to the max length, `.token_counts` the tokens each input
    had before truncation. It is a plain ndarray in every other way.
    """

    truncated: tuple[int, ...] = ()
    token_counts: tuple[int, ...] = ()

    def __array_finalize__(self, obj):
        if obj is not None:
            self.truncated = getattr(obj, "truncated", ())
            self.token_counts = getattr(obj, "token_counts", ())


class Embedder(LoadedModel):
    """Embed texts with an exported model folder (or hub id), on the CPU or CUDA execution providers.

    Embedder(model, variant="auto", providers=None, threads=None, max_batch_tokens=16384, truncate="end",
             revision=None, source="auto", cache_dir=None, local_files_only=False)

    `model` is a model folder or a hub id: a gte-onnx folder, a safetensors checkpoint (converted once,
    without torch, into the cache) or a repo's own ONNX files (see gte_onnx.resolve).

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
    ) -> Embeddings:
        """Embed one string -> (dim,), or a list of n strings -> (n, dim), float32.

        normalize=None takes the manifest's default. Inputs over the max length follow `truncate`
        ("end", "start" or "error"); truncated inputs are reported by a TruncationWarning and in
        the result's `.truncated`.
        """
        single = isinstance(texts, str)
        items = check_texts(texts)
        policy = check_policy(truncate or self.truncate)
        result = self._encode_list(items, batch_size, normalize, show_progress, policy, "encode")
        warn_truncated(result.truncated, len(items), self.max_length, policy)
        if single:
            single_row = result[0]
            single_row.truncated, single_row.token_counts = result.truncated, result.token_counts
            return single_row
        return result

    def _encode_list(
        self, items: list[str], batch_size: int, normalize: bool | None, show_progress: bool | None, policy: str, desc: str
    ) -> Embeddings:
        normalize = self.manifest.normalize if normalize is None else bool(normalize)
        encoded = self.tokenizer.encode(items, policy)
        postprocess = embedding_postprocess(self.manifest.pooling, normalize)
        out = self.run_encoded(encoded, batch_size, postprocess, show_progress, desc)
        result = out.view(Embeddings)
        result.truncated = encoded.truncated
        result.token_counts = encoded.original_lengths
        return result

    def embed(
        self,
        items: Iterable,
        batch_size: int = 32,
        chunk_size: int = 1024,
        normalize: bool | None = None,
        truncate: str | None = None,
    ) -> Iterator[Embeddings | EmbeddedChunk]:
        """Embed a corpus of any size lazily, `chunk_size` items at a time (memory is bounded by the chunk).

        `items` is any iterable (a generator, a file's lines, ...) of texts, or of (id, text) pairs.
        For texts it yields Embeddings arrays, (<= chunk_size, dim) float32, in input order, whose
        `.truncated` holds chunk-relative indices and `.token_counts` the tokens before truncation.
        For (id, text) pairs it yields EmbeddedChunk(ids, vectors, token_counts, truncated) with the ids
        as given and `truncated` as a bool array. A text that is not a str, or is empty, raises
        InvalidInputError naming its position (and id). Truncated inputs warn once per call.
        """
        chunk_size = check_chunk_size(chunk_size)
        policy = check_policy(truncate or self.truncate)
        warned = False
        for pairs, start, ids, texts in iter_chunks(items, chunk_size):
            vectors = self._encode_list(texts, batch_size, normalize, False, policy, "embed")
            if vectors.truncated and not warned:
                warn_once_truncated(len(vectors.truncated), start, self.max_length, policy)
                warned = True
            if not pairs:
                yield vectors
                continue
            truncated = np.zeros(len(ids), dtype=bool)
            truncated[list(vectors.truncated)] = True
            token_counts = np.asarray(vectors.token_counts, dtype=np.int32)
            yield EmbeddedChunk(ids, np.asarray(vectors), token_counts, truncated)

    def count_tokens(self, texts: str | Sequence[str]) -> list[int]:
        return self.tokenizer.count_tokens(check_texts(texts))
