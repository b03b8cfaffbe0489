"""Pure ASGI middlewares: they run before FastAPI parses anything, so a refused request costs nothing.

  RequestMetrics  counts every answer (401 and 413 included) by route and status, times it
  BearerAuth      the optional API key, compared in constant time
  BodyLimit       refuses a body over the payload limit with 413 before it is parsed
"""

from __future__ import annotations

import hmac
import time

from .errors import error_body
from .metrics import Metrics

PUBLIC_PATHS = frozenset({"/health"})  # liveness probes carry no credentials


async def _send_error(scope, receive, send, status: int, code: str, message: str, headers=None) -> None:
    from starlette.responses import JSONResponse

    response = JSONResponse(error_body(scope.get("path", ""), status, code, message), status, headers=headers)
    await response(scope, receive, send)


class RequestMetrics:
    def __init__(self, app, metrics: Metrics, known_paths: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}  # if the app dies before answering, the server sends a 500

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            # A fixed label set: fuzzed or scanned paths must not create one time series each.
            path = scope.get("path", "")
            route = path if path in self.known_paths else "other"
            self.metrics.inc("gte_onnx_requests_total", route=route, status=str(status["code"]))
            self.metrics.observe("gte_onnx_request_duration_seconds", time.perf_counter() - started, route=route)


class BearerAuth:
    def __init__(self, app, api_key: str):
        self.app = app
        self._key = api_key.encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        # compare_digest takes the same time whatever prefix matches; the scheme is not secret.
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
            message = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
            return await _send_error(
                scope, receive, send, 401, "unauthorized", message, {"WWW-Authenticate": "Bearer"}
            )
        return await self.app(scope, receive, send)


class BodyLimit:
    def __init__(self, app, limit: int):
        self.app = app
        self.limit = int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_large = f"the request body is larger than the server's limit of {self.limit} bytes"
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_error(scope, receive, send, 400, "bad_request", "invalid Content-Length")
                if declared > self.limit:
                    return await _send_error(scope, receive, send, 413, "payload_too_large", too_large)
        # Read the body here, bounded, and replay it to the app (which would read it whole anyway).
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_error(scope, receive, send, 413, "payload_too_large", too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
