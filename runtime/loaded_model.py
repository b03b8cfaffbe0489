"""What Embedder, Reranker and the server share: a model (folder or hub id) resolved and loaded (manifest,
tokenizer, session), its facts, and the batched run loop: sort by length -> token-budget batches ->
session.run -> postprocess -> input order."""

from __future__ import annotations

import os
import sys
from typing import Callable, Mapping, Sequence

import numpy as np

from gte_onnx import defaults
from gte_onnx.inference.batching import (
    CPU_BATCH_COST_TOKENS,
    GPU_BATCH_COST_TOKENS,
    pad_batch,
    pad_rows,
    plan_batches,
)
from gte_onnx.errors import InvalidInputError, ModelFolderError
from gte_onnx.folder.manifest import Manifest
from gte_onnx.progress import Progress, auto_enabled
from gte_onnx.sources.resolve import resolve_model
from gte_onnx.inference.session import CPU, OnnxModel
from gte_onnx.inference.tokenize import Encoded, TextTokenizer, check_policy


def _to_stderr(message: str) -> None:
    """Conversion and import steps are reported on stderr: stdout may carry the caller's output."""
    print(message, file=sys.stderr)


class LoadedModel:
    """A model loaded for inference. Subclasses set `task`; None (the server) takes the manifest's.

    `model` is a gte-onnx folder, a hub id or a folder in another supported form (see gte_onnx.sources.resolve):
    `source` ("auto", "convert", "onnx") picks between conversion and a repo's own ONNX files,
    `cache_dir` (default $GTE_ONNX_CACHE or ~/.cache/gte-onnx) holds converted and imported folders,
    `local_files_only` (or HF_HUB_OFFLINE=1) never touches the network.
    """

    task: str | None = None

    def __init__(
        self,
        model: str | os.PathLike,
        variant: str = "auto",
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        max_batch_tokens: int = defaults.MAX_BATCH_TOKENS,
        truncate: str = "end",
        revision: str | None = None,
        verify: bool = True,
        *,
        source: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        session_config: Mapping[str, str] | None = None,
    ):
        if int(max_batch_tokens) < 1:
            raise InvalidInputError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.truncate = check_policy(truncate)
        self.folder = resolve_model(
            model, variant=variant, providers=providers, revision=revision, source=source,
            cache_dir=cache_dir, local_files_only=local_files_only, log=_to_stderr,
        )
        self.manifest = Manifest.load(self.folder)
        if self.task is not None and self.manifest.task != self.task:
            raise ModelFolderError(
                f"{model} holds a {self.manifest.task!r} model, not {self.task!r}; "
                f"use {'Reranker' if self.manifest.task == 'rerank' else 'Embedder'} for it"
            )
        self.task = self.manifest.task
        self._max_batch_tokens = int(max_batch_tokens)
        self.tokenizer = TextTokenizer.from_folder(
            self.folder, self.manifest.max_length, self.manifest.tokenizer.get("pad_token_id")
        )
        self.onnx = OnnxModel(self.folder, self.manifest, variant, providers, threads, verify=verify,
                              session_config=session_config)
        self._batch_cost_tokens = CPU_BATCH_COST_TOKENS if self.provider == CPU else GPU_BATCH_COST_TOKENS
        self._pad_multiple = int(self.onnx.variant.recipe.get("pad_to_multiple", 1))

    variant = property(lambda self: self.onnx.variant.name)
    provider = property(lambda self: self.onnx.provider)
    max_length = property(lambda self: self.manifest.max_length)
    threads = property(lambda self: self.onnx.threads)
    max_batch_tokens = property(lambda self: self._max_batch_tokens)
    onnx_model = property(lambda self: self.onnx, doc="the OnnxModel (session, inputs, provider)")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.folder)!r}, variant={self.variant!r}, provider={self.provider!r}, "
            f"max_length={self.max_length})"
        )

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
            for rows in plan_batches(encoded.lengths, batch_size, self._max_batch_tokens, self._batch_cost_tokens):
                input_ids, mask = pad_batch([encoded.ids[i] for i in rows], self.tokenizer.pad_token_id,
                                            self._pad_multiple, self.manifest.max_length)
                type_ids = pad_rows([encoded.type_ids[i] for i in rows], width=input_ids.shape[1]) if "token_type_ids" in self.onnx.input_names else None
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
