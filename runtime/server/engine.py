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
from .token_ids import decode_tiktoken_ids


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

    def served_name(self, name: Optional[str]) -> str:
        """The name to answer with: the requested one when it is served here (the model name or an alias),
        else the model's own name; with strict_model_name, other names are refused (404)."""
        if name is None:
            return self.settings.model_name
        if name in self.settings.served_names:
            return name
        if not self.settings.strict_model_name:
            return self.settings.model_name
        raise param_error(
            ModelNotFoundError(
                f"model {name!r} is not served here; use {self.settings.model_name!r}"
                + (f" or an alias {list(self.settings.aliases)}" if self.settings.aliases else "")
                + " (start the server with --alias to accept other names, or without --strict-model-name)"
            ),
            "model",
        )

    def token_id_encoding(self, model: Optional[str]) -> Optional[str]:
        """The tiktoken encoding of token ids sent for `model`, or None for this model's own ids."""
        return self.settings.token_ids.encoding_for(model)

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
    async def embed(
        self, items: list, token_ids: bool, normalize: bool, truncate: str, tiktoken: Optional[str] = None
    ) -> tuple[np.ndarray, int]:
        """Vectors and the token count. Token ids are this model's, or, with `tiktoken` (an encoding name),
        ids of that encoding: decoded to their text, which is then embedded like any text."""
        from starlette.concurrency import run_in_threadpool

        with self.batcher.admit():
            if token_ids and tiktoken:
                items = await run_in_threadpool(decode_tiktoken_ids, items, tiktoken, "input")
                self.check_texts(items, "input")
                token_ids = False
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

    async def probe(self) -> None:
        """One tiny model run through the queue (what /health asks of a backend that has been failing)."""
        from starlette.concurrency import run_in_threadpool

        if self.backend.task == "rerank":
            encoded = await run_in_threadpool(self.backend.tokenize_pairs, "health", ["check"], "end")
            key = SCORE_KEY
        else:
            encoded = await run_in_threadpool(self.backend.tokenize, ["health check"], "end")
            key = embed_key(False)
        await self.batcher.submit(key, rows_of(encoded), encoded.lengths)

    # ---- TEI's tokenizer routes (no model run) ----------------------------------------------------------
    async def tokens(self, value: Any, add_special_tokens: bool) -> list[list[dict]]:
        from starlette.concurrency import run_in_threadpool

        texts = [value] if isinstance(value, str) else list(value)
        if not texts:
            raise param_error(InvalidInputError("inputs is empty: send at least one text"), "inputs")
        self.check_count(len(texts), "inputs")
        return await run_in_threadpool(self.backend.tokens, texts, add_special_tokens)

    async def decode(self, ids: list, skip_special_tokens: bool) -> list[str]:
        from starlette.concurrency import run_in_threadpool

        if not ids:
            raise param_error(InvalidInputError("ids is empty: send at least one token id"), "ids")
        batch = [ids] if isinstance(ids[0], int) else list(ids)
        self.check_count(len(batch), "ids")
        return await run_in_threadpool(self.backend.decode, batch, skip_special_tokens)
