"""`gte-onnx serve`: a torch-free HTTP server speaking the OpenAI embeddings, TEI and Cohere rerank APIs.

Needs the `[server]` extra (FastAPI + uvicorn); those are imported only inside this package, so the rest
of gte_onnx never pays for them. Modules:

  settings.py  the server's options (one frozen dataclass)
  backend.py   the model behind the routes: tokenize at admission, run merged batches in the worker
  batcher.py   the queue that merges concurrent requests into token-budget batches (one worker thread)
  schemas.py   request and response models (the OpenAPI schema comes from them)
  token_ids.py token ids in a request: this model's, or tiktoken's (decoded back to text)
  engine.py    what the routes share: checks, admission, tokenization off the loop, the queue
  errors.py    typed error -> HTTP status and JSON body, per API style
  metrics.py   Prometheus text counters
  app.py       the FastAPI app: routes, auth, body-size limit, lifespan
  main.py      `main(argv)`, the `gte-onnx serve DIR [options]` entry point
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from .main import main as _main

    return _main(argv)
