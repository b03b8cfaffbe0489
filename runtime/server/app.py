"""The FastAPI app: OpenAI /v1/embeddings, TEI /embed, /rerank, /tokenize and /decode, Cohere /v1/rerank,
health, metrics.

Routes only translate between each API's shapes and the Engine (engine.py), which does the work. Each
API's routes are added by a function of their own; create_app puts them together.
"""

from __future__ import annotations

import base64
import time
import uuid
from contextlib import asynccontextmanager
from typing import Union

import numpy as np

from gte_onnx.defaults import VERSION
from ..errors import InvalidInputError, PrecisionError
from gte_onnx.inference.pooling import sigmoid
from ..precision import quantize
from ..reranker import ranked
from .backend import Backend
from .batcher import Batcher
from .engine import Engine, param_error
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import BearerAuth, BodyLimit, RequestMetrics
from .schemas import (
    CohereRerankRequest,
    CohereRerankResponse,
    DecodeRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Health,
    Info,
    ModelCard,
    ModelList,
    SimpleToken,
    TeiEmbedRequest,
    TeiRank,
    TeiRerankRequest,
    TokenizeRequest,
)
from .settings import ServerSettings


def _as_json_vectors(vectors: np.ndarray) -> list[list[float]]:
    # float32 -> Python float is exact, and json writes the shortest repr that parses back to it.
    return vectors.astype(np.float32, copy=False).tolist()


def _as_base64(vector: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _bytes_base64(vector: np.ndarray) -> str:
    """The vector's own bytes: little-endian float32, or the int8/uint8 values (packed bits for binary)."""
    dtype = vector.dtype.newbyteorder("<") if vector.dtype.itemsize > 1 else vector.dtype
    return base64.b64encode(np.ascontiguousarray(vector, dtype=dtype).tobytes()).decode("ascii")


def _no_prompts(prompt_name) -> None:
    if prompt_name is not None:
        raise param_error(InvalidInputError(f"prompt_name={prompt_name!r}: this model has no prompts"), "prompt_name")


def create_app(backend: Backend, settings: ServerSettings, metrics: Metrics | None = None):
    """The ASGI app for one loaded backend. The batch worker starts and stops with the app's lifespan."""
    from fastapi import APIRouter, Depends, FastAPI
    from fastapi.security import HTTPBearer

    if settings.embed_ranges is not None and backend.task == "embedding" and settings.embed_ranges.dim != backend.dim:
        raise PrecisionError(
            f"the --embed-ranges have {settings.embed_ranges.dim} dimensions but this model's vectors have {backend.dim}"
        )
    metrics = metrics or Metrics()
    batcher = Batcher(
        backend.run, settings.max_batch_tokens, settings.max_concurrent_requests, metrics, settings.unhealthy_after
    )
    engine = Engine(backend, settings, batcher)
    metrics.set(
        "gte_onnx_model_info", 1, model=settings.model_name, task=backend.task,
        variant=backend.variant, provider=backend.provider,
    )
    app = FastAPI(
        title="gte-onnx",
        version=VERSION,
        description="GTE-ModernBERT embeddings and reranking on ONNX Runtime: OpenAI, TEI and Cohere APIs.",
        lifespan=_lifespan(batcher),
    )
    app.state.engine = engine
    app.state.metrics = metrics
    install_error_handlers(app)

    # The key is enforced by the BearerAuth middleware; this dependency only documents it in OpenAPI.
    api = APIRouter(dependencies=[Depends(HTTPBearer(auto_error=False))] if settings.api_key else [])
    add_openai_routes(api, engine)
    add_tei_routes(api, engine)
    add_cohere_routes(api, engine)
    add_operations_routes(app, api, engine, metrics)
    app.include_router(api)
    _add_middleware(app, api, settings, metrics)
    return app


def _lifespan(batcher: Batcher):
    from starlette.concurrency import run_in_threadpool

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight requests; this finishes whatever is still queued.
            await run_in_threadpool(batcher.stop, 60.0)

    return lifespan


def _add_middleware(app, api, settings: ServerSettings, metrics: Metrics) -> None:
    # Outermost last: metrics see every answer, auth runs before the body is read, the limit before parsing.
    app.add_middleware(BodyLimit, limit=settings.payload_limit)
    if settings.api_key:
        app.add_middleware(BearerAuth, api_key=settings.api_key)
    known = frozenset(getattr(route, "path", "") for route in [*api.routes, *app.routes]) - {""}
    app.add_middleware(RequestMetrics, metrics=metrics, known_paths=known)


# ---- OpenAI ---------------------------------------------------------------------------------------------
def openai_embedding_body(vectors: np.ndarray, encoding_format: str, model: str, tokens: int) -> dict:
    if encoding_format == "base64":
        data = [{"object": "embedding", "index": i, "embedding": _as_base64(v)} for i, v in enumerate(vectors)]
    else:
        rows = _as_json_vectors(vectors)
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def add_openai_routes(api, engine: Engine) -> None:
    from fastapi.responses import JSONResponse

    settings = engine.settings
    started = int(time.time())

    @api.post("/v1/embeddings", response_model=EmbeddingsResponse, tags=["OpenAI"])
    async def openai_embeddings(request: EmbeddingsRequest):
        engine.require_task("embedding", "/v1/embeddings")
        model = engine.served_name(request.model)
        engine.check_dimensions(request.dimensions)
        items, token_ids = engine.parse_inputs(request.input, "input")
        tiktoken = engine.token_id_encoding(request.model) if token_ids else None
        # OpenAI's vectors are unit length and clients rely on dot product == cosine.
        vectors, tokens = await engine.embed(items, token_ids, True, settings.truncate, tiktoken)
        return JSONResponse(openai_embedding_body(vectors, request.encoding_format, model, tokens))

    @api.get("/v1/models", response_model=ModelList, tags=["OpenAI"])
    async def list_models():
        cards = [ModelCard(id=name, created=started, owned_by="gte-onnx") for name in settings.served_names]
        return ModelList(data=cards)


# ---- TEI ------------------------------------------------------------------------------------------------
def add_tei_routes(api, engine: Engine) -> None:
    from fastapi.responses import JSONResponse

    async def tei_embed(request: TeiEmbedRequest, route: str):
        engine.require_task("embedding", route)
        engine.check_dimensions(request.dimensions)
        _no_prompts(request.prompt_name)
        items, token_ids = engine.parse_inputs(request.inputs, "inputs")
        policy = engine.policy(request.truncate, request.truncation_direction)
        vectors, _ = await engine.embed(items, token_ids, request.normalize, policy)
        precision = engine.settings.embed_precision
        if precision != "float32":
            try:
                vectors = quantize(vectors, precision, engine.settings.embed_ranges, normalized=request.normalize)
            except InvalidInputError as exc:
                raise param_error(exc, "normalize") from None
        if request.encoding_format == "base64":
            return JSONResponse([_bytes_base64(v) for v in vectors])
        return JSONResponse(_as_json_vectors(vectors) if precision == "float32" else vectors.tolist())

    embed_answer = Union[list[list[float]], list[list[int]], list[str]]

    @api.post("/embed", response_model=embed_answer, tags=["TEI"])
    async def embed(request: TeiEmbedRequest):
        return await tei_embed(request, "/embed")

    # huggingface_hub's InferenceClient(base_url=...).feature_extraction posts to the base URL itself.
    @api.post("/", response_model=embed_answer, tags=["TEI"], summary="Embed (TEI's root route)")
    async def root_embed(request: TeiEmbedRequest):
        return await tei_embed(request, "/")

    @api.post("/rerank", response_model=list[TeiRank], response_model_exclude_none=True, tags=["TEI"])
    async def tei_rerank(request: TeiRerankRequest):
        engine.require_task("rerank", "/rerank")
        policy = engine.policy(request.truncate, request.truncation_direction)
        logits = await engine.score(request.query, list(request.texts), policy)
        scores = logits if request.raw_scores else sigmoid(logits)
        return JSONResponse(ranked(scores, request.texts, with_text=request.return_text))

    @api.post("/tokenize", response_model=list[list[SimpleToken]], tags=["TEI"])
    async def tokenize(request: TokenizeRequest):
        """This model's tokens of each input, untruncated: ids, text, special, character offsets."""
        _no_prompts(request.prompt_name)
        return JSONResponse(await engine.tokens(request.inputs, request.add_special_tokens))

    @api.post("/decode", response_model=list[str], tags=["TEI"])
    async def decode(request: DecodeRequest):
        """This model's token ids (a list, or a list of lists) -> one text per list."""
        return JSONResponse(await engine.decode(request.ids, request.skip_special_tokens))


# ---- Cohere ---------------------------------------------------------------------------------------------
def add_cohere_routes(api, engine: Engine) -> None:
    from fastapi.responses import JSONResponse

    @api.post("/v1/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True, tags=["Cohere"])
    async def cohere_rerank(request: CohereRerankRequest):
        engine.require_task("rerank", "/v1/rerank")
        engine.served_name(request.model)
        if request.top_n is not None and request.top_n < 1:
            raise param_error(InvalidInputError(f"top_n must be at least 1, got {request.top_n}"), "top_n")
        texts = [d if isinstance(d, str) else d.text for d in request.documents]
        scores = sigmoid(await engine.score(request.query, texts, engine.settings.truncate))
        results = []
        for item in ranked(scores, texts, request.top_n, with_text=request.return_documents):
            result = {"index": item["index"], "relevance_score": item["score"]}
            if "text" in item:
                result["document"] = {"text": item["text"]}
            results.append(result)
        meta = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
        return JSONResponse({"id": str(uuid.uuid4()), "results": results, "meta": meta})


# ---- operations -----------------------------------------------------------------------------------------
def add_operations_routes(app, api, engine: Engine, metrics: Metrics) -> None:
    from fastapi.responses import JSONResponse, PlainTextResponse

    backend, settings, batcher = engine.backend, engine.settings, engine.batcher

    @api.get("/info", response_model=Info, tags=["Operations"])
    async def info():
        return Info(
            model_id=backend.model_id, model_name=settings.model_name, aliases=list(settings.aliases),
            task=backend.task, variant=backend.variant, provider=backend.provider, dim=backend.dim,
            max_input_length=backend.max_length, max_batch_tokens=settings.max_batch_tokens,
            max_batch_size=backend.max_batch_size,
            max_concurrent_requests=settings.max_concurrent_requests,
            max_client_batch_size=settings.max_client_batch_size, version=VERSION,
            embed_precision=settings.embed_precision,
            embed_ranges=settings.embed_ranges.to_json() if settings.embed_ranges else None,
        )

    @api.get("/metrics", response_class=PlainTextResponse, tags=["Operations"])
    async def prometheus_metrics():
        metrics.set("gte_onnx_requests_in_flight", batcher.in_flight)
        metrics.set("gte_onnx_queue_inputs", batcher.queued_items)
        metrics.set("gte_onnx_consecutive_failed_batches", batcher.consecutive_failures)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/health", response_model=Health, tags=["Operations"])
    async def health():
        """200 when the model answers. 503 while shutting down, or when the last model runs all failed
        and a probe run fails too (a probe that succeeds clears the failures: the backend recovered)."""
        if not batcher.alive:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        if batcher.failing:
            try:
                await engine.probe()
            except Exception as exc:
                detail = f"the last {batcher.consecutive_failures} model runs failed; the latest: {exc}"
                return JSONResponse({"status": "failing", "detail": detail}, status_code=503)
        return JSONResponse({"status": "ok"})
