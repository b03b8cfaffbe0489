"""Every failure -> one HTTP status and a JSON body, never an HTML page or a bare traceback.

The status comes from the typed error (gte_onnx.errors carries `http_status`). The body follows the API
style of the route, so each client library can read it:
  /v1/...          OpenAI: {"error": {"message", "type", "code", "param"}}
  everything else  TEI:    {"error": "...", "error_type": "..."}
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import BackendUnavailableError, GteOnnxError, InferenceError, InvalidInputError

log = logging.getLogger("gte_onnx.server")


class WrongModelTaskError(InvalidInputError):
    """The route needs the other kind of model (e.g. /rerank on a server running an embedder)."""

    http_status = 400
    code = "wrong_model_task"


class ModelNotFoundError(InvalidInputError):
    """The request names a model this server does not serve."""

    http_status = 404
    code = "model_not_found"


class UnauthorizedError(GteOnnxError):
    http_status = 401
    code = "unauthorized"


class ShuttingDownError(GteOnnxError, RuntimeError):
    http_status = 503
    code = "shutting_down"


# ONNX Runtime's error classes (onnxruntime.capi.onnxruntime_pybind11_state) for a device or provider
# failure; with a failed allocation these are worth a retry later, unlike a broken graph.
_RESOURCE_ERRORS = ("EPFail",)


def inference_error(exc: BaseException) -> InferenceError:
    """A model run's exception -> the typed error its requests are answered with (500, or 503 to retry)."""
    detail = f"{type(exc).__name__}: {exc}"
    if len(detail) > 400:  # ORT messages can carry whole tensor shapes; the log has the rest
        detail = detail[:400] + "..."
    resources = isinstance(exc, MemoryError) or type(exc).__name__ in _RESOURCE_ERRORS
    if resources or "allocat" in str(exc).lower():
        return BackendUnavailableError(
            f"the model run failed for want of resources ({detail}); retry later, or send fewer or shorter inputs"
        )
    return InferenceError(f"the model run failed ({detail}); the server log has the traceback")


# OpenAI's "type" field for each status family; its client maps statuses to exception classes itself.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(path: str, status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    if path.startswith("/v1/"):
        kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return {"error": message, "error_type": code}


# Fields typed as a union: pydantic reports one error per member, which reads as noise; say what fits.
UNION_FIELDS = {
    "input": "must be a string, a list of strings, a list of token ids, or a list of lists of token ids",
    "inputs": "must be a string, a list of strings, a list of token ids, or a list of lists of token ids",
    "documents": "must be a list of strings or of objects {\"text\": string}",
    "ids": "must be a list of token ids or a list of lists of token ids",
}


def describe_validation_errors(errors: list[dict[str, Any]], limit: int = 5) -> tuple[str, str | None]:
    """Pydantic's error list -> one readable sentence and the first offending field."""
    parts = []
    first_field = None
    for err in errors:
        if err.get("type") == "json_invalid":
            parts.append(f"the request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
            continue
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        # Union members show up as loc segments like 'str' or 'list[int]': keep only the field path.
        field = ".".join(x for x in loc if not x.startswith(("str", "list[", "function-", "json-", "Cohere")))
        top = loc[0] if loc else ""
        if first_field is None and field:
            first_field = top
        if top in UNION_FIELDS:
            parts.append(f"{top} {UNION_FIELDS[top]}")
        elif err.get("type") == "model_attributes_type" and not field:
            parts.append("the request body must be a JSON object")
        else:
            parts.append(f"{field or 'body'}: {err.get('msg', 'invalid value')}")
    unique = list(dict.fromkeys(parts))  # a union repeats the same sentence once per member
    extra = f"; ... and {len(unique) - limit} more" if len(unique) > limit else ""
    return "invalid request: " + "; ".join(unique[:limit]) + extra, first_field


def install_error_handlers(app) -> None:
    """Map typed errors, validation errors, HTTP errors (404/405) and anything unexpected to JSON."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def respond(request, status: int, code: str, message: str, param: str | None = None, headers=None):
        body = error_body(request.url.path, status, code, message, param)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(GteOnnxError)
    async def typed_error(request, exc: GteOnnxError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
        if exc.http_status == 429:
            headers = {"Retry-After": str(getattr(exc, "retry_after", 1))}
        if exc.http_status >= 500:
            log.error("request %s failed: %s", request.url.path, exc)
        return respond(request, exc.http_status, exc.code, str(exc), getattr(exc, "param", None), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        message, field = describe_validation_errors(list(exc.errors()))
        return respond(request, 422, "invalid_input", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        elif exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not decode the body
            message = f"the request body could not be read ({message.lower()}); send UTF-8 JSON"
        return respond(request, exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request, exc: Exception):
        # A bug, not bad input: log the traceback here, answer without it.
        log.exception("unexpected error on %s", request.url.path)
        return respond(request, 500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")
