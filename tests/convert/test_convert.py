"""The torch-free converter: safetensors read with numpy, ModernBERT and BERT graphs written from them,
validated against numpy references; all checked here against the transformers models of the same weights."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import GTE_ID, RERANKER_ID, TINY_OVERRIDES, cache_key, minilm_checkpoint
from gte_onnx.convert import convert_checkpoint, supported_architecture
from gte_onnx.convert.checkpoint_meta import read_config
from gte_onnx.convert.safetensors_io import CheckpointFormatError, read_checkpoint, read_safetensors
from gte_onnx.errors import ModelFolderError, UnsupportedModelError
from gte_onnx.folder.manifest import Manifest

# 1..2048 tokens with every edge of the 64-token half window and of the 192-token dense/blockwise switch
EDGE_LENGTHS = (1, 2, 63, 64, 65, 127, 128, 129, 191, 192, 193, 255, 256, 257, 600, 2048)
QUIET = dict(log=lambda _m: None)


def _cache(tmp_path_factory, name: str, **key) -> Path:
    """A folder under GTE_ONNX_TEST_CACHE keyed like conftest's (the converter's sources included), else a new one."""
    cache = os.environ.get("GTE_ONNX_TEST_CACHE")
    return Path(cache) / f"{name}-{cache_key(**key)}" if cache else tmp_path_factory.mktemp(name)


def _torch_checkpoint(tmp_path_factory, name: str, model_id: str, dtype=None):
    """A tiny transformers model with seeded random weights and its saved safetensors folder."""
    import torch

    from gte_onnx.export.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(model_id, random_weights=True, seed=0, config_overrides=TINY_OVERRIDES)
    folder = _cache(tmp_path_factory, name, model=model_id, dtype=str(dtype), config_overrides=TINY_OVERRIDES)
    if not (folder / "gte-onnx-source.json").is_file():  # save_checkpoint writes it last
        if dtype is not None:
            ckpt.model.to(dtype)
        save_checkpoint(ckpt, folder)
        ckpt.model.float()
    if dtype is not None:  # the reference model holds exactly the rounded weights the file holds
        ckpt.model.to(dtype).float()
    assert ckpt.model.dtype == torch.float32
    return ckpt.model, folder


@pytest.fixture(scope="module")
def tiny_embedder_ckpt(tmp_path_factory):
    import torch

    return _torch_checkpoint(tmp_path_factory, "ckpt-tiny-gte-fp16", GTE_ID, torch.float16)


@pytest.fixture(scope="module")
def tiny_reranker_ckpt(tmp_path_factory):
    import torch

    return _torch_checkpoint(tmp_path_factory, "ckpt-tiny-reranker-bf16", RERANKER_ID, torch.bfloat16)


def _converted(tmp_path_factory, ckpt_dir: Path, name: str) -> Path:
    lengths = (1, 64, 65, 129, 193)
    out = _cache(tmp_path_factory, name, source=ckpt_dir.name, validate_lengths=lengths)
    if not (out / "gte-onnx.json").is_file():
        convert_checkpoint(ckpt_dir, out, variants=(), validate_lengths=lengths, **QUIET)
    return out


def _torch_run(model, task, ids, mask, token_type=False):
    import torch

    kwargs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if token_type:
        kwargs["token_type_ids"] = torch.zeros_like(kwargs["input_ids"])
    with torch.inference_mode():
        out = model(**kwargs)
    return (out.logits if task == "rerank" else out.last_hidden_state).numpy()


def _inputs(length: int, vocab: int, seed: int, batch: int = 1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab - 1000, size=(batch, length)).astype(np.int64)
    mask = np.ones_like(ids)
    if batch > 1:
        mask[1:, max(1, length // 2):] = 0
    return ids, mask


def _max_diff(ref, got, mask, task) -> float:
    diff = np.abs(ref.astype(np.float64) - got)
    return float((diff[mask.astype(bool)] if task != "rerank" else diff).max())


# ---- safetensors -----------------------------------------------------------------------------------
def _write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple, bytes]]) -> None:
    header, data, offset = {}, b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def test_safetensors_dtypes_are_read_as_float32(tmp_path):
    import torch
    from safetensors.torch import save_file

    values = torch.randn(3, 5) * 10
    save_file({"a.f16": values.half(), "a.bf16": values.bfloat16(), "a.f32": values, "i": torch.arange(4)},
              str(tmp_path / "model.safetensors"))
    got = read_safetensors(tmp_path / "model.safetensors")
    for name, expected in (("a.f16", values.half().float()), ("a.bf16", values.bfloat16().float()),
                           ("a.f32", values)):
        assert got[name].dtype == np.float32 and np.array_equal(got[name], expected.numpy()), name
    assert got["i"].dtype == np.int64 and got["i"].tolist() == [0, 1, 2, 3]


def test_a_truncated_safetensors_file_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "model.safetensors"
    _write_safetensors(path, {"w": ("F32", (4, 4), np.ones(16, np.float32).tobytes())})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointFormatError, match=r"model\.safetensors.*'w'.*truncated") as info:
        read_safetensors(path)
    assert isinstance(info.value, ModelFolderError)
    path.write_bytes(b"\x10\x00")
    with pytest.raises(CheckpointFormatError, match="too short"):
        read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(CheckpointFormatError, match="not valid JSON"):
        read_safetensors(path)


def test_sharded_checkpoints_are_read_through_their_index(tmp_path):
    _write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": ("F16", (2,), np.ones(2, np.float16).tobytes())})
    _write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": ("F32", (1,), np.ones(1, np.float32).tobytes())})
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    got = read_checkpoint(tmp_path)
    assert sorted(got) == ["a", "b"] and got["a"].dtype == np.float32
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointFormatError, match="model-00002-of-00002"):
        read_checkpoint(tmp_path)


def test_pickle_weights_are_never_read(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointFormatError, match="pickle"):
        read_checkpoint(tmp_path)


# ---- architecture and typed errors ------------------------------------------------------------------
def test_supported_architectures():
    assert supported_architecture({"model_type": "modernbert", "architectures": ["ModernBertModel"]}) == "modernbert"
    assert supported_architecture({"model_type": "bert", "architectures": ["BertForSequenceClassification"]}) == "bert"
    assert supported_architecture({"model_type": "bert"}) == "bert"
    assert supported_architecture({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}) is None
    assert supported_architecture({"model_type": "bert", "architectures": ["BertForMaskedLM"]}) is None


def test_an_unsupported_architecture_is_a_typed_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(UnsupportedModelError, match=r"LlamaForCausalLM.*ModernBertModel.*BertModel"):
        convert_checkpoint(tmp_path, tmp_path / "out", **QUIET)
    assert not (tmp_path / "out" / "gte-onnx.json").exists()


def test_missing_weights_are_a_typed_error(tiny_embedder_ckpt, tmp_path):
    _, folder = tiny_embedder_ckpt
    tensors = read_checkpoint(folder)
    del tensors["layers.1.mlp.Wi.weight"]
    from gte_onnx.convert.modernbert_weights import modernbert_parts

    with pytest.raises(CheckpointFormatError, match=r"missing the weight 'layers\.1\.mlp\.Wi\.weight'"):
        modernbert_parts(read_config(folder), tensors, "embedding", str(folder))
    tensors = read_checkpoint(folder)
    tensors["final_norm.weight"] = tensors["final_norm.weight"][:3]
    with pytest.raises(CheckpointFormatError, match=r"final_norm\.weight.*shape \[3\]"):
        modernbert_parts(read_config(folder), tensors, "embedding", str(folder))


# ---- ModernBERT: graph and reference vs transformers ------------------------------------------------
@pytest.mark.parametrize("which", ["embedder", "reranker"])
def test_modernbert_graph_and_reference_match_transformers(which, tiny_embedder_ckpt, tiny_reranker_ckpt,
                                                           tmp_path_factory):
    import onnxruntime as ort

    from gte_onnx.convert import reference
    from gte_onnx.convert.modernbert_weights import modernbert_parts

    model, folder = tiny_embedder_ckpt if which == "embedder" else tiny_reranker_ckpt
    task = "rerank" if which == "reranker" else "embedding"
    out = _converted(tmp_path_factory, folder, f"converted-tiny-{which}")
    manifest = Manifest.load(out)
    assert manifest.task == task and manifest.validation["reference"] == "numpy"
    assert manifest.variants["fp32"].fidelity["reference"] == "numpy"
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    parts = modernbert_parts(read_config(folder), read_checkpoint(folder), task)
    worst_graph = worst_ref = 0.0
    for n, length in enumerate(EDGE_LENGTHS):
        ids, mask = _inputs(length, 50368, seed=n, batch=2 if length in (65, 257) else 1)
        expected = _torch_run(model, task, ids, mask)
        got = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        worst_graph = max(worst_graph, _max_diff(expected, got, mask, task))
        if length <= 600:  # the dense numpy reference is O(L^2): long inputs are covered by the graph
            worst_ref = max(worst_ref, _max_diff(expected, reference.modernbert_forward(parts, ids, mask, task),
                                                 mask, task))
    assert worst_graph <= 1e-5 and worst_ref <= 1e-5, (worst_graph, worst_ref)


def test_the_converted_folder_embeds_like_the_exported_one(tiny_embedder_ckpt, tmp_path_factory):
    from gte_onnx import Embedder

    model, folder = tiny_embedder_ckpt
    out = _converted(tmp_path_factory, folder, "converted-tiny-embedder")
    manifest = Manifest.load(out)
    assert manifest.pooling == "cls" and manifest.max_length == 8192 and manifest.dim == 64
    assert manifest.source["random_weights"] is True and manifest.source["architecture"] == "ModernBertModel"
    vectors = Embedder(out, threads=1).encode(["hello world", "a second, longer text " * 20])
    assert vectors.shape == (2, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# ---- BERT: MiniLM's real weights, and a tiny sequence classifier -------------------------------------
@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel

    folder = minilm_checkpoint()
    return AutoModel.from_pretrained(folder).eval(), folder


@pytest.mark.slow  # MiniLM's real weights in numpy, seven lengths
def test_bert_graph_and_reference_match_transformers_on_minilm(minilm, tmp_path):
    import onnxruntime as ort

    from gte_onnx.convert import reference
    from gte_onnx.convert.bert_graph import write_bert_graph
    from gte_onnx.convert.bert_weights import bert_parts

    model, folder = minilm
    parts = bert_parts(read_config(folder), read_checkpoint(folder), "embedding")
    info = write_bert_graph(parts, "embedding", tmp_path / "model.onnx")
    assert info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    worst_graph = worst_ref = 0.0
    for n, length in enumerate((1, 2, 64, 65, 129, 257, 512)):
        ids, mask = _inputs(length, 30522, seed=n, batch=3 if length == 65 else 1)
        expected = _torch_run(model, "embedding", ids, mask, token_type=True)
        got = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        worst_graph = max(worst_graph, _max_diff(expected, got, mask, "embedding"))
        worst_ref = max(worst_ref, _max_diff(expected, reference.bert_forward(parts, ids, mask), mask, "embedding"))
    assert worst_graph <= 1e-5 and worst_ref <= 1e-5, (worst_graph, worst_ref)


def test_bert_sequence_classifier_converts(tmp_path):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = minilm_checkpoint()
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, num_labels=1, architectures=["BertForSequenceClassification"])
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "ckpt" / name).write_bytes((folder / name).read_bytes())
    out = convert_checkpoint(tmp_path / "ckpt", tmp_path / "out", variants=(), validate_lengths=(1, 5, 130), **QUIET)
    manifest = Manifest.load(out)
    assert manifest.task == "rerank" and manifest.output == "logits" and manifest.dim == 1
    assert manifest.inputs == ("input_ids", "attention_mask", "token_type_ids")
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ids, mask = _inputs(40, 30522, seed=3, batch=3)
    got = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    assert _max_diff(_torch_run(model, "rerank", ids, mask, token_type=True), got, mask, "rerank") <= 1e-5


def test_validation_failure_is_typed_and_leaves_no_manifest(tiny_embedder_ckpt, tmp_path, monkeypatch):
    """A graph that disagrees with the numpy reference fails conversion before any manifest exists."""
    from gte_onnx.convert import converter, reference
    from gte_onnx.convert.validation import ExportValidationError

    _, folder = tiny_embedder_ckpt
    original = reference.modernbert_forward
    monkeypatch.setattr(reference, "modernbert_forward", lambda *a, **k: original(*a, **k) + 1e-3)
    with pytest.raises(ExportValidationError) as info:
        converter.convert_fp32(folder, tmp_path / "out", validate_lengths=(5,), **QUIET)
    assert info.value.case == "length 5" and "numpy reference" in str(info.value)
    assert not (tmp_path / "out" / "gte-onnx.json").exists()


def test_export_cli_converts_without_torch(tiny_embedder_ckpt, tmp_path, capsys):
    from gte_onnx.export.cli import main

    _, folder = tiny_embedder_ckpt
    assert main([str(folder), str(tmp_path / "out"), "--no-torch", "--validate-lengths", "1,65"]) == 0
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.validation["reference"] == "numpy" and sorted(manifest.validation["lengths"]) == ["1", "65"]
    assert list(manifest.variants) == ["fp32"]
    with pytest.raises(SystemExit):
        main([GTE_ID, str(tmp_path / "other"), "--no-torch", "--random-weights"])
    assert "--random-weights need PyTorch" in capsys.readouterr().err


def test_the_reference_of_a_padded_batch_equals_its_rows_alone(tiny_embedder_ckpt):
    from gte_onnx.convert import reference
    from gte_onnx.convert.converter import row_by_row
    from gte_onnx.convert.modernbert_weights import modernbert_parts
    from gte_onnx.convert.validation import Probe

    _, folder = tiny_embedder_ckpt
    parts = modernbert_parts(read_config(folder), read_checkpoint(folder), "embedding")
    ids, mask = _inputs(200, 50368, seed=5, batch=3)
    padded = reference.modernbert_forward(parts, ids, mask)
    rows = row_by_row(lambda i, m: reference.modernbert_forward(parts, i, m), Probe(ids, mask, ""), "embedding")
    assert _max_diff(padded, rows, mask, "embedding") <= 1e-6
    assert not rows[1, 100:].any()  # pad positions are zeros
