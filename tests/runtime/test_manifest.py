from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gte_onnx.errors import IntegrityError, ModelFolderError, VariantError
from gte_onnx.folder.manifest import MANIFEST_NAME, Manifest
from gte_onnx.folder.integrity import describe_file, resolve_inside


def test_manifest_roundtrip_and_fields(tiny_gte_dir):
    manifest = Manifest.load(tiny_gte_dir)
    assert manifest.task == "embedding"
    assert manifest.pooling == "cls"  # read from the shipped Sentence-Transformers files
    assert manifest.max_length == 8192  # tokenizer_config says 1e30: it must not leak
    assert manifest.inputs == ("input_ids", "attention_mask")  # ModernBERT takes no token_type_ids
    assert manifest.source["model_id"] == "Alibaba-NLP/gte-modernbert-base"
    assert manifest.source["revision"] == "e7f32e3c00f91d699e8c43b53106206bcc72bb22"
    fp32 = manifest.variant("fp32")
    assert fp32 == Manifest.from_json(json.loads(json.dumps(manifest.to_json()))).variant("fp32")
    assert describe_file(tiny_gte_dir, fp32.file)["sha256"] == fp32.sha256
    assert {"gte-onnx", "onnx", "onnxruntime"} <= set(manifest.tools)  # the converter's tools...
    assert not {"torch", "transformers"} & set(manifest.tools)  # ...without torch
    assert manifest.validation["max_abs_diff"] <= 1e-4


def test_minilm_manifest(minilm_dir):
    manifest = Manifest.load(minilm_dir)
    assert manifest.pooling == "mean"
    assert manifest.max_length == 256  # sentence_bert_config's max_seq_length, as sentence-transformers uses
    assert "token_type_ids" in manifest.inputs


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="no gte-onnx.json"):
        Manifest.load(tmp_path)
    with pytest.raises(ModelFolderError, match="not a directory"):
        Manifest.load(tmp_path / "missing")
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelFolderError, match="cannot read"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format_version": 1, "task": "embedding"}))
    with pytest.raises(ModelFolderError, match="missing the field"):
        Manifest.load(tmp_path)


def test_unknown_variant(tiny_gte_dir):
    with pytest.raises(VariantError, match="'int3' is not in this model folder"):
        Manifest.load(tiny_gte_dir).variant("int3")


def _copy(folder, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def test_sha256_mismatch_is_refused(tiny_gte_dir, tmp_path):
    from gte_onnx import Embedder

    folder = _copy(tiny_gte_dir, tmp_path)
    data = bytearray((folder / "model.onnx").read_bytes())
    data[-100] ^= 0xFF  # same size, one flipped byte deep in the weights
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 of model.onnx"):
        Embedder(folder)


def _with_weights_beside(tiny_gte_dir, tmp_path):
    """A private copy of the tiny folder, whose fp32 graph keeps its weights in model.onnx.data (the
    exporter writes them there), recorded with their sha256 and size."""
    folder = _copy(tiny_gte_dir, tmp_path)
    fp32 = Manifest.load(folder).variants["fp32"]
    assert fp32.data_files == ("model.onnx.data",)
    described = describe_file(folder, "model.onnx.data")
    assert fp32.data_integrity == {"model.onnx.data": {"sha256": described["sha256"], "bytes": described["bytes"]}}
    assert fp32.total_bytes == fp32.bytes + described["bytes"]
    return folder


def test_weights_beside_the_graph_are_checked_like_the_graph(tiny_gte_dir, tmp_path):
    from gte_onnx import Embedder

    folder = _with_weights_beside(tiny_gte_dir, tmp_path)
    np.testing.assert_array_equal(Embedder(folder).encode(["one text"]), Embedder(tiny_gte_dir).encode(["one text"]))
    assert json.loads((folder / MANIFEST_NAME).read_text())["variants"]["fp32"]["data_integrity"]
    data = bytearray((folder / "model.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte in the weights
    (folder / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 of model.onnx.data"):
        Embedder(folder)
    (folder / "model.onnx.data").write_bytes(bytes(data[:-8]))
    with pytest.raises(IntegrityError, match="model.onnx.data has"):
        Embedder(folder)


@pytest.mark.parametrize("change, message", [
    (lambda v: v["data_integrity"].update({"other.data": v["data_integrity"]["model.onnx.data"]}),
     "names 'other.data', which is not one of its data_files"),
    (lambda v: v["data_integrity"]["model.onnx.data"].update(sha256="ABC"), "64 lowercase hex digits"),
    (lambda v: v["data_integrity"]["model.onnx.data"].pop("bytes"), "bytes"),
])
def test_malformed_data_integrity_is_a_model_folder_error(tiny_gte_dir, tmp_path, change, message):
    folder = _with_weights_beside(tiny_gte_dir, tmp_path)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    change(data["variants"]["fp32"])
    with pytest.raises(ModelFolderError, match=message):
        Manifest.from_json(data)


def test_external_data_outside_the_folder_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from gte_onnx.inference.session import OnnxModel

    folder = tmp_path / "model"
    folder.mkdir()
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["w", "input_ids"], ["g"]), helper.make_node("ReduceMean", ["g"], ["last_hidden_state"], axes=[1], keepdims=1)],
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]), helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, folder / "model.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    (folder / "w.bin").rename(tmp_path / "secret.bin")
    proto = onnx.load(folder / "model.onnx", load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.bin"
    (folder / "model.onnx").write_bytes(proto.SerializeToString())
    described = describe_file(folder, "model.onnx")
    manifest = Manifest.from_json({
        "format_version": 1, "task": "embedding", "pooling": "cls", "normalize": True, "max_length": 8,
        "dim": 4, "inputs": ["input_ids", "attention_mask"], "output": "last_hidden_state", "opset": 13,
        "variants": {"fp32": {**described}},
    })
    with pytest.raises(IntegrityError, match="outside the model folder"):
        OnnxModel(folder, manifest, "fp32", ["cpu"])
    # and a manifest that names a file outside the folder is refused before anything is read
    with pytest.raises(IntegrityError, match="outside the model folder"):
        resolve_inside(folder, "../secret.bin")
