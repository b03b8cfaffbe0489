"""A damaged model folder fails with a GteOnnxError, never with a raw exception.

Hypothesis mutates a copy of the tiny model folder: manifest values and their types, the manifest's bytes,
truncated or garbled tokenizer.json and model.onnx (with the manifest's hash updated, as a tool that rewrote
the file would), and missing files. Loading and encoding (or scoring, for the reranker) must then either work
or raise a GteOnnxError.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gte_onnx import Embedder, Reranker
from gte_onnx.errors import GteOnnxError
from gte_onnx.folder.manifest import MANIFEST_NAME
from tests.folders import link_copy

TOP_KEYS = ["format_version", "task", "pooling", "normalize", "max_length", "dim", "inputs", "output", "opset",
            "tokenizer", "variants", "source", "tools", "validation", "speed_ranking", "extra"]
VARIANT_KEYS = ["file", "sha256", "bytes", "data_files", "recipe", "fidelity", "providers"]
PATHS = ([(k,) for k in TOP_KEYS] + [("variants", "fp32", k) for k in VARIANT_KEYS]
         + [("tokenizer", "pad_token_id"), ("variants", "fp32", "recipe", "session_optimization"),
            ("speed_ranking", "CPUExecutionProvider"), ("variants", "fp32")])
FILES = ["gte-onnx.json", "model.onnx", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
TEXTS = ["what is the capital of China?", "a longer text, with punctuation; and numbers 12345 and émojis 🙂"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 600) | st.integers(-(2**40), 2**40)
    | st.sampled_from([2**31, 2**63, 10**30, -(2**63)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["cls", "mean", "none", "rerank", "embedding", "fp32", "model.onnx",
                                              "last_hidden_state", "../outside.onnx", "\x00", "\ud800.onnx"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)


def _byte_edits(size: int):
    """Positions (biased to the head and tail, where the structure lives) and replacement bytes."""
    head = st.integers(0, min(size - 1, 4096))
    tail = st.integers(max(0, size - 4096), size - 1)
    anywhere = st.integers(0, size - 1)
    return st.lists(st.tuples(head | tail | anywhere, st.integers(0, 255)), min_size=1, max_size=8)


def mutations(sizes: dict[str, int]):
    manifest_set = st.tuples(st.just("set"), st.sampled_from(PATHS), json_values)
    manifest_del = st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none())
    truncate = st.tuples(st.just("truncate"), st.sampled_from(FILES[:3]), st.floats(0, 1))
    garble = st.sampled_from(FILES[:3]).flatmap(
        lambda name: st.tuples(st.just("garble"), st.just(name), _byte_edits(sizes[name])))
    remove = st.tuples(st.just("remove"), st.sampled_from(FILES), st.none())
    return st.lists(manifest_set | manifest_del | truncate | garble | remove, min_size=1, max_size=2)


def _replace(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _set(manifest: dict, path: tuple, value) -> None:
    node = manifest
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    if isinstance(node, dict):
        if value is _DELETE:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value


_DELETE = object()


def _resign(folder: Path, name: str) -> None:
    """Record the mutated file's new hash and size, so the runtime goes past its integrity check."""
    manifest_path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        variant = manifest["variants"]["fp32"]
        data = (folder / name).read_bytes()
        variant["sha256"], variant["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    except (OSError, ValueError, KeyError, TypeError):
        return  # the manifest itself was damaged or the file removed: nothing to re-sign
    _replace(manifest_path, json.dumps(manifest).encode())


def apply(folder: Path, mutation) -> None:
    kind, target, arg = mutation
    if kind in ("set", "delete"):
        path = folder / MANIFEST_NAME
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        _set(manifest, target, _DELETE if kind == "delete" else arg)
        _replace(path, json.dumps(manifest).encode())
        return
    path = folder / target
    if kind == "remove":
        path.unlink(missing_ok=True)
        return
    if not path.is_file():
        return
    data = bytearray(path.read_bytes())
    if kind == "truncate":
        data = data[: int(len(data) * arg)]
    else:
        for position, value in arg:
            if position < len(data):
                data[position] = value
    _replace(path, bytes(data))
    if target == "model.onnx":
        _resign(folder, target)


def _embed(folder: Path) -> None:
    model = Embedder(folder, threads=1)
    assert model.encode(TEXTS).shape == (len(TEXTS), model.dim)


def _rerank(folder: Path) -> None:
    model = Reranker(folder, threads=1)
    assert model.predict([(TEXTS[0], text) for text in TEXTS]).shape[0] == len(TEXTS)


@pytest.mark.parametrize("fixture, use, examples", [("tiny_gte_dir", _embed, 80), ("tiny_reranker_dir", _rerank, 40)],
                         ids=["embedder", "reranker"])
def test_a_damaged_folder_raises_only_typed_errors(request, fixture, use, examples):
    pristine = Path(request.getfixturevalue(fixture))
    sizes = {name: (pristine / name).stat().st_size for name in FILES[:3]}

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutations(sizes))
    def check(changes):
        with tempfile.TemporaryDirectory(prefix="gte-onnx-fuzz-") as tmp:
            folder = Path(tmp) / "model"
            link_copy(pristine, folder)
            for change in changes:
                apply(folder, change)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    use(folder)
                except GteOnnxError:
                    pass

    check()
