"""The runtime's defaults and names, written once: every module, verb and server setting reads them here."""

from __future__ import annotations

import os
from pathlib import Path

VERSION = "0.1.0"  # the package's version (pyproject.toml says the same; gte_onnx.__version__)

# ONNX Runtime's execution provider names.
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# Padded tokens (rows x width) per session.run: the TEI-style batch budget of Embedder, Reranker, the
# server and the corpus engines.
MAX_BATCH_TOKENS = 16384
# Documents read, tokenized and embedded at a time by Embedder.embed and the corpus engines.
CHUNK_SIZE = 1024

# Where converted and imported model folders and the verified-digest cache live.
CACHE_ENV = "GTE_ONNX_CACHE"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $GTE_ONNX_CACHE, else ~/.cache/gte-onnx (under $XDG_CACHE_HOME when set)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "gte-onnx"
