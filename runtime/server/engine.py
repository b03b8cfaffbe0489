"""What the routes share: limits and input checks, admission, tokenization off the loop, the batch queue.

Every inference request takes the same path: admission (a concurrency slot, or 429) -> tokenization in a
thread-pool thread (validation errors here belong to this request alone) -> the batcher's queue, merged
with other requests -> the worker thread runs the model -> the answer.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InvalidInputError, PayloadTooLargeError
from .backend import SCORE_KEY, Backend, embed_key, rows_of
from .batcher import Batcher
from .errors import ModelNotFoundError, WrongModelTaskError
from .settings import ServerSettings


def param_error(error: InvalidInputError, param: str) -> InvalidInputError:
    error.param = param  # type: ignore[attr-defined]  # OpenAI's error body names the field
    return error


class Engine:
    """What the routes share: limits, admission, tokenization off the loop, the batch queue."""

    def __init__(self, backend: Backend, settings: ServerSettings, batcher: Batcher):
        self.backend = backend
        self.settings = settings
        self.batcher = batcher

    # ---- checks common to the APIs ------------------------------------------------------------------
    def require_task(self, task: str, route: str) -> None:
        if self.backend.task != task:
            other = "/embed, /v1/embeddings" if self.backend.task == "embedding" else "/rerank, /v1/rerank"
            raise WrongModelTaskError(
                f"{route} needs a {task!r} model, but this server runs {self.backend.model_id!r}, a "
                f"{self.backend.task!r} model (its routes: {other}); serve a {task} model folder for {route}"
            )
        if task == "rerank" and self.backend.dim != 1:
            raise WrongModelTaskError(f"{route} needs a one-label reranker; this model has {self.backend.dim} labels")

    def check_model(self, name: Optional[str]) -> None:
        if name is not None and name not in self.settings.served_names:
            raise param_error(
                ModelNotFoundError(
                    f"model {name!r} is not served here; use {self.settings.model_name!r}"
                    + (f" or an alias {list(self.settings.aliases)}" if self.settings.aliases else "")
                    + " (start the server with --alias to accept other names)"
                ),
                "model",
            )

    def check_dimensions(self, dimensions: Optional[int]) -> None:
        if dimensions is not None and dimensions != self.backend.dim:
            raise param_error(
                InvalidInputError(
                    f"dimensions={dimensions} is not supported: this model is not Matryoshka-trained, so a "
                    f"shortened vector would lose quality without warning; omit dimensions or pass "
                    f"{self.backend.dim}"
                ),
                "dimensions",
            )

    def parse_inputs(self, value: Any, field: str) -> tuple[list, bool]:
        """(items, are_token_ids) from a string, list of strings, token ids or list of token-id lists."""
        if isinstance(value, str):
            items, ids = [value], False
        elif not value:
            raise param_error(InvalidInputError(f"{field} is empty: send at least one text"), field)
        elif isinstance(value[0], str):
            items, ids = list(value), False
        elif isinstance(value[0], int):
            items, ids = [value], True
        else:
            items, ids = list(value), True
        self.check_count(len(items), field)
        if not ids:
            self.check_texts(items, field)
        return items, ids

    def check_count(self, count: int, field: str) -> None:
        limit = self.settings.max_client_batch_size
        if count > limit:
            raise param_error(
                PayloadTooLargeError(
                    f"{field} holds {count} inputs, more than this server's limit of {limit} per request; "
                    "split the request"
                ),
                field,
            )

    @staticmethod
    def check_texts(texts: Sequence[str], field: str) -> None:
        for i, text in enumerate(texts):
            if not text:
                raise param_error(InvalidInputError(f"{field}[{i}] is an empty string; send some text"), field)

    def policy(self, truncate: Optional[bool], direction: Optional[str]) -> str:
        """TEI's truncate/truncation_direction -> the runtime's "end" | "start" | "error"."""
        if truncate is False or (truncate is None and self.settings.truncate == "error"):
            return "error"
        if direction is None:
            return self.settings.truncate if self.settings.truncate != "error" else "end"
        return "start" if direction.lower() == "left" else "end"

    # ---- the inference path ---------------------------------------------------------------------------
    async def embed(self, items: list, token_ids: bool, normalize: bool, truncate: str) -> tuple[np.ndarray, int]:
        from starlette.concurrency import run_in_threadpool

        with self.batcher.admit():
            if token_ids:
                encoded = await run_in_threadpool(self.backend.tokenize_ids, items)
            else:
                encoded = await run_in_threadpool(self.backend.tokenize, items, truncate)
            vectors = await self.batcher.submit(embed_key(normalize), rows_of(encoded), encoded.lengths)
        return vectors, sum(encoded.lengths)

    async def score(self, query: str, documents: list[str], truncate: str) -> np.ndarray:
        from starlette.concurrency import run_in_threadpool

        if not query:
            raise param_error(InvalidInputError("query is an empty string; send some text"), "query")
        if not documents:
            raise param_error(InvalidInputError("no documents to rank: send at least one"), "documents")
        self.check_count(len(documents), "documents")
        self.check_texts(documents, "documents")
        with self.batcher.admit():
            encoded = await run_in_threadpool(self.backend.tokenize_pairs, query, documents, truncate)
            return await self.batcher.submit(SCORE_KEY, rows_of(encoded), encoded.lengths)
