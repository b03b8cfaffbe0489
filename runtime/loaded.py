"""What Embedder and Reranker share: a model folder loaded (manifest, tokenizer, session) and the
batched run loop: sort by length -> token-budget batches -> session.run -> postprocess -> input order."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .batching import DEFAULT_MAX_BATCH_TOKENS, pad_batch, pad_rows, plan_batches
from .errors import InvalidInputError, ModelFolderError
from .hub import resolve_model_folder
from .manifest import Manifest
from .progress import Progress, auto_enabled
from .session import OnnxModel
from .tokenize import Encoded, TextTokenizer, check_policy


class LoadedModel:
    def __init__(
        self,
        model: str | Path,
        task: str,
        variant: str = "auto",
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        truncate: str = "end",
        revision: str | None = None,
        verify: bool = True,
        session_config: Mapping[str, str] | None = None,
    ):
        self.folder = resolve_model_folder(model, revision)
        self.manifest = Manifest.load(self.folder)
        if self.manifest.task != task:
            raise ModelFolderError(
                f"{self.folder} holds a {self.manifest.task!r} model, not {task!r}; "
                f"use {'Reranker' if self.manifest.task == 'rerank' else 'Embedder'} for it"
            )
        if int(max_batch_tokens) < 1:
            raise InvalidInputError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.max_batch_tokens = int(max_batch_tokens)
        self.truncate = check_policy(truncate)
        self.tokenizer = TextTokenizer.from_folder(
            self.folder, self.manifest.max_length, self.manifest.tokenizer.get("pad_token_id")
        )
        self.onnx = OnnxModel(self.folder, self.manifest, variant, providers, threads, verify=verify,
                              session_config=session_config)

    @property
    def variant(self) -> str:
        return self.onnx.variant.name

    @property
    def provider(self) -> str:
        return self.onnx.provider

    @property
    def max_length(self) -> int:
        return self.manifest.max_length

    def run_encoded(
        self,
        encoded: Encoded,
        batch_size: int,
        postprocess: Callable[[np.ndarray, np.ndarray], np.ndarray],
        show_progress: bool | None,
        desc: str,
    ) -> np.ndarray:
        """Run every input through the graph in token-budget batches; rows come back in input order."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
        n = len(encoded.ids)
        out: np.ndarray | None = None
        progress = Progress(n, desc, auto_enabled(show_progress, n))
        try:
            for rows in plan_batches(encoded.lengths, batch_size, self.max_batch_tokens):
                input_ids, mask = pad_batch([encoded.ids[i] for i in rows], self.tokenizer.pad_token_id)
                type_ids = pad_rows([encoded.type_ids[i] for i in rows]) if "token_type_ids" in self.onnx.input_names else None
                raw = self.onnx.run(self.onnx.feed(input_ids, mask, type_ids))
                result = postprocess(raw, mask)
                if out is None:
                    out = np.empty((n,) + result.shape[1:], dtype=np.float32)
                out[rows] = result
                progress.update(len(rows))
        finally:
            progress.close()
        assert out is not None
        return out


class FolderModel:
    """What Embedder and Reranker share as public objects: the constructor and the model's facts."""

    task = ""  # set by each subclass: the manifest task it serves

    def __init__(
        self,
        model: str | Path,
        variant: str = "auto",
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        truncate: str = "end",
        revision: str | None = None,
        verify: bool = True,
        session_config: Mapping[str, str] | None = None,
    ):
        self._model = LoadedModel(
            model, self.task, variant, providers, threads, max_batch_tokens, truncate, revision, verify,
            session_config,
        )
        self.manifest = self._model.manifest
        self.folder = self._model.folder
        self.tokenizer = self._model.tokenizer

    variant = property(lambda self: self._model.variant)
    provider = property(lambda self: self._model.provider)
    max_length = property(lambda self: self._model.max_length)
    threads = property(lambda self: self._model.onnx.threads)
    max_batch_tokens = property(lambda self: self._model.max_batch_tokens)
    onnx_model = property(lambda self: self._model.onnx, doc="the OnnxModel (session, inputs, provider)")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.folder)!r}, variant={self.variant!r}, provider={self.provider!r}, "
            f"max_length={self.max_length})"
        )
