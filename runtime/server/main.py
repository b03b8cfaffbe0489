"""`gte-onnx serve DIR [options]`: load a model folder and serve it with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from gte_onnx import defaults
from gte_onnx.cli.errors import verb_main
from ..errors import missing_dependency
from .backend import DEFAULT_MAX_BATCH_SIZE
from .settings import (
    DEFAULT_MAX_CLIENT_BATCH_SIZE,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_PAYLOAD_LIMIT,
    DEFAULT_UNHEALTHY_AFTER,
    ServerSettings,
)
from .token_ids import TokenIdMode

API_KEY_ENV = "GTE_ONNX_API_KEY"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gte-onnx serve",
        description="Serve a gte-onnx model folder over HTTP: OpenAI /v1/embeddings, TEI /embed and /rerank, "
        "Cohere /v1/rerank, /health, /metrics. The folder's manifest task picks the live routes.",
    )
    parser.add_argument("model", help="model folder made by `gte-onnx export` (or a hub id)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; none means no auth)",
    )
    parser.add_argument("--variant", default="auto", help="fp32, int8, q4, fp16 or auto (default)")
    parser.add_argument("--providers", default=None, help="execution providers, comma-separated (default: best available)")
    parser.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads (default: physical cores)")
    parser.add_argument("--model-name", default=None, help="name in /v1/models and responses (default: the source model id)")
    parser.add_argument("--alias", action="append", default=[], help="another name listed and echoed (repeatable)")
    parser.add_argument("--strict-model-name", action="store_true",
                        help="refuse (404) a request naming a model other than --model-name or an --alias; "
                        "by default any name is accepted and answered as the served model")
    parser.add_argument("--token-ids", default="auto", metavar="auto|model|tiktoken[:ENCODING]",
                        help="what token ids sent to /v1/embeddings are: auto (default) decodes them with tiktoken "
                        "when the request names an OpenAI model (text-embedding-3-small...), else takes them as "
                        "this model's ids; model: always this model's ids; tiktoken[:ENCODING]: always tiktoken "
                        "ids (ENCODING, else the requested model's, else cl100k_base)")
    parser.add_argument("--max-batch-tokens", type=positive_int, default=defaults.MAX_BATCH_TOKENS,
                        help="tokens taken from the queue per step, and padded tokens (rows x longest) per model run")
    parser.add_argument("--max-batch-size", type=positive_int, default=DEFAULT_MAX_BATCH_SIZE,
                        help="rows per model run (as Embedder.encode's batch_size)")
    parser.add_argument("--max-concurrent-requests", type=positive_int, default=DEFAULT_MAX_CONCURRENT_REQUESTS,
                        help="requests admitted at once; more are answered 429")
    parser.add_argument("--max-client-batch-size", type=positive_int, default=DEFAULT_MAX_CLIENT_BATCH_SIZE,
                        help="inputs per request; more are answered 413")
    parser.add_argument("--payload-limit", type=positive_int, default=DEFAULT_PAYLOAD_LIMIT, help="request body bytes; more -> 413")
    parser.add_argument("--truncate", choices=("end", "start", "error"), default="end",
                        help="over-long inputs when the request does not say (error -> 413)")
    parser.add_argument("--unhealthy-after", type=positive_int, default=DEFAULT_UNHEALTHY_AFTER,
                        help="/health answers 503 once this many model runs in a row have failed (and a probe fails)")
    from ..precision import PRECISIONS

    parser.add_argument("--embed-precision", choices=PRECISIONS, default="float32",
                        help="vectors TEI's /embed answers with: float32 (default), int8/uint8 (calibration ranges: "
                        "--embed-ranges or those recorded in the folder) or binary/ubinary (packed signs), as JSON "
                        "ints, or base64 of their bytes when the request says encoding_format=base64; "
                        "/v1/embeddings stays float32")
    parser.add_argument("--embed-ranges", default=None, metavar="FILE",
                        help="int8/uint8 ranges JSON from `gte-onnx calibrate` (default: those recorded in the folder)")
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds to finish in-flight requests after SIGTERM/SIGINT")
    from gte_onnx.cli.options import add_model_source_options

    add_model_source_options(parser)
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return parser


def build_app(args: argparse.Namespace):
    """Load the backend and make the app; raises typed errors for a bad folder or option."""
    from gte_onnx.cli.options import load_ranges, model_source_kwargs
    from ..precision import needs_ranges, recorded_ranges
    from .app import create_app
    from .backend import OnnxBackend

    backend = OnnxBackend(
        args.model,
        variant=args.variant,
        providers=args.providers.split(",") if args.providers else None,
        threads=args.threads,
        max_batch_tokens=args.max_batch_tokens,
        max_batch_size=args.max_batch_size,
        **model_source_kwargs(args),
    )
    ranges = None
    if needs_ranges(args.embed_precision):
        ranges = load_ranges(args.embed_ranges) or recorded_ranges(backend.manifest, args.model)
    settings = ServerSettings(
        model_name=args.model_name or backend.model_id,
        aliases=tuple(args.alias),
        api_key=args.api_key or None,
        max_batch_tokens=args.max_batch_tokens,
        max_concurrent_requests=args.max_concurrent_requests,
        max_client_batch_size=args.max_client_batch_size,
        payload_limit=args.payload_limit,
        truncate=args.truncate,
        strict_model_name=args.strict_model_name,
        token_ids=TokenIdMode.parse(args.token_ids),
        unhealthy_after=args.unhealthy_after,
        embed_precision=args.embed_precision,
        embed_ranges=ranges,
    )
    return create_app(backend, settings), backend, settings


@verb_main
def main(argv: list[str]) -> int:
    """Entry point of `gte-onnx serve`; a bad folder or option is reported by the shared CLI policy."""
    args = build_parser().parse_args(argv)
    try:
        import fastapi  # noqa: F401
    except ImportError:
        raise missing_dependency("fastapi", "server", "gte-onnx serve") from None
    try:
        import uvicorn
    except ImportError:
        raise missing_dependency("uvicorn", "server", "gte-onnx serve") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app, backend, settings = build_app(args)
    logging.getLogger("gte_onnx.server").info(
        "serving %s (%s, variant %s on %s) as %r at http://%s:%d%s",
        backend.model_id, backend.task, backend.variant, backend.provider, settings.model_name,
        args.host, args.port, " with API key" if settings.api_key else "",
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        # Our own 429 admission is the limit; keep uvicorn's backlog large so bursts queue, not fail.
        backlog=4096,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot start (e.g. the port is taken); it logged why
        print(f"gte-onnx serve: could not serve on {args.host}:{args.port} (see the error above)", file=sys.stderr)
        return exc.code if isinstance(exc.code, int) and exc.code else 1
    return 0 if server.started else 1
