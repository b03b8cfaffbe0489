"""The model behind the routes: a small backend contract in TEI's shape.

The work is split in two, as TEI splits its router from its backend:
  tokenize*()  runs at admission, once per request, in a thread-pool thread. It validates the request's
               inputs (too long under truncate="error", token ids out of range...) so a bad input is
               refused before it can share a batch with anyone else's.
  run()        runs in the batch worker on rows already tokenized, merged from many requests.

OnnxBackend implements it over the runtime's LoadedModel (what gte_onnx.Embedder and gte_onnx.Reranker
are made of), with the same pooling and normalisation functions, so an answer equals Embedder.encode of
the same text up to the float noise of a different batch composition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Protocol, Sequence

import numpy as np

from gte_onnx import defaults
from ..errors import InputTooLongError, InvalidInputError
from gte_onnx.loaded_model import LoadedModel
from gte_onnx.inference.pooling import embedding_postprocess
from gte_onnx.inference.tokenize import Encoded, check_policy

# One tokenized input as the batcher carries it: (input ids, token type ids), int64 each.
Row = tuple[np.ndarray, np.ndarray]

# Rows per model run, as Embedder.encode's default batch_size; the token budget caps them further.
DEFAULT_MAX_BATCH_SIZE = 32

EMBED = "embed"
SCORE = "score"


def embed_key(normalize: bool) -> tuple[str, bool]:
    return (EMBED, bool(normalize))


SCORE_KEY = (SCORE,)


class Backend(Protocol):
    task: str  # "embedding" | "rerank", from the manifest
    model_id: str
    dim: int
    max_length: int
    variant: str
    provider: str
    vocab_size: int
    max_batch_size: int

    def tokenize(self, texts: Sequence[str], truncate: str) -> Encoded: ...

    def tokenize_ids(self, ids: Sequence[Sequence[int]]) -> Encoded: ...

    def tokenize_pairs(self, query: str, documents: Sequence[str], truncate: str) -> Encoded: ...

    def run(self, key: Hashable, rows: list[Row]) -> np.ndarray: ...

    def tokens(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[dict]]: ...

    def decode(self, ids: Sequence[Sequence[int]], skip_special_tokens: bool) -> list[str]: ...


def rows_of(encoded: Encoded) -> list[Row]:
    return list(zip(encoded.ids, encoded.type_ids))


class OnnxBackend:
    """An exported model folder loaded for serving. The manifest's task says which routes are live."""

    def __init__(
        self,
        folder: str | Path,
        variant: str = "auto",
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        max_batch_tokens: int = defaults.MAX_BATCH_TOKENS,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        **resolution,
    ):
        """`resolution`: source, cache_dir, local_files_only, revision, as for Embedder."""
        if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 1:
            raise InvalidInputError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        self.max_batch_size = max_batch_size
        self._model = LoadedModel(folder, variant, providers, threads, max_batch_tokens, **resolution)
        self.task = self._model.task
        manifest = self._model.manifest
        self.manifest = manifest
        source_id = str(manifest.source.get("model_id") or "")
        # A hub id names the model; a local checkpoint path would only leak a directory layout.
        self.model_id = source_id if source_id and not Path(source_id).is_absolute() else Path(folder).resolve().name
        self.dim = manifest.dim
        self.max_length = self._model.max_length
        self.variant = self._model.variant
        self.provider = self._model.provider
        # A tokenizer of its own, never truncating: /tokenize shows the whole input, as TEI's does.
        self._inspector = _plain_tokenizer(self._model.folder)
        self.vocab_size = self._model.tokenizer.vocab_size  # the loaded tokenizer's, added tokens included

    # ---- admission (thread-pool threads) ------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], truncate: str) -> Encoded:
        return self._model.tokenizer.encode(list(texts), check_policy(truncate))

    def tokens(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[dict]]:
        """TEI's /tokenize: per text, its tokens as {id, text, special, start, stop} (character offsets;
        special tokens carry their own text and no offsets)."""
        encodings = self._inspector.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        out = []
        for text, encoding in zip(texts, encodings):
            row = []
            for token_id, token, (start, stop), special in zip(
                encoding.ids, encoding.tokens, encoding.offsets, encoding.special_tokens_mask
            ):
                if special:
                    row.append({"id": token_id, "text": token, "special": True, "start": None, "stop": None})
                else:
                    piece = text[start:stop]
                    row.append({"id": token_id, "text": piece, "special": False, "start": start, "stop": stop})
            out.append(row)
        return out

    def decode(self, ids: Sequence[Sequence[int]], skip_special_tokens: bool) -> list[str]:
        """TEI's /decode: each list of this model's ids -> text."""
        for i, seq in enumerate(ids):
            self._check_ids(seq, f"ids[{i}]")
        return self._inspector.decode_batch([list(seq) for seq in ids], skip_special_tokens=skip_special_tokens)

    def _check_ids(self, seq: Sequence[int], where: str) -> None:
        # Checked as Python ints, before numpy: 2**70 must be refused, not overflow int64.
        for j, token in enumerate(seq):
            if not 0 <= token < self.vocab_size:
                raise InvalidInputError(
                    f"{where}[{j}] = {token} is not a token id of this model (valid ids are 0..{self.vocab_size - 1})"
                )

    def tokenize_ids(self, ids: Sequence[Sequence[int]]) -> Encoded:
        """Token ids given by the client, taken as the whole sequence (special tokens included)."""
        arrays = []
        for i, seq in enumerate(ids):
            if len(seq) == 0:
                raise InvalidInputError(f"input[{i}] holds no token ids")
            if len(seq) > self.max_length:
                raise InputTooLongError(
                    f"input[{i}] has {len(seq)} token ids, more than the model's max length of "
                    f"{self.max_length}; token ids are never truncated, send fewer"
                )
            self._check_ids(seq, f"input[{i}]")
            arrays.append(np.asarray(seq, dtype=np.int64))
        lengths = tuple(len(a) for a in arrays)
        return Encoded(ids=arrays, type_ids=[np.zeros_like(a) for a in arrays], truncated=(), original_lengths=lengths)

    def tokenize_pairs(self, query: str, documents: Sequence[str], truncate: str) -> Encoded:
        return self._model.tokenizer.encode_pairs([(query, d) for d in documents], check_policy(truncate))

    # ---- the batch worker ---------------------------------------------------------------------------
    def run(self, key: Hashable, rows: list[Row]) -> np.ndarray:
        """Rows merged from many requests; run_encoded sorts them by length into padded token-budget batches."""
        encoded = Encoded(
            ids=[r[0] for r in rows],
            type_ids=[r[1] for r in rows],
            truncated=(),
            original_lengths=tuple(len(r[0]) for r in rows),
        )
        if key[0] == EMBED:
            postprocess = embedding_postprocess(self.manifest.pooling, key[1])  # the same steps as Embedder.encode
            return self._model.run_encoded(encoded, self.max_batch_size, postprocess, False, "serve")
        if key[0] == SCORE:
            logits = self._model.run_encoded(
                encoded, self.max_batch_size, lambda raw, mask: raw.astype(np.float32, copy=False), False, "serve"
            )
            return logits[:, 0] if logits.ndim == 2 else logits
        raise ValueError(f"unknown batch key {key!r}")


def _plain_tokenizer(folder: Path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
