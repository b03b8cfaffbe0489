"""The windowed ModernBERT graph (export/modernbert.py): structure, parity with transformers, portability.

A tiny random ModernBERT (hidden 64, 4 heads, 6 layers: global 0 and 3, local 1, 2, 4, 5 with the real
128-token window) is exported once per module and compared with the unmodified transformers model.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from gte_onnx.convert.graph_optimize import PORTABLE_CONTRIB_OPS
from gte_onnx.export.modernbert import (
    MIN_TRANSFORMERS,
    ModernBertExportError,
    build_modernbert_graph,
    check_transformers_version,
    export_modernbert,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "export" / "model_files" / "Alibaba-NLP"
TINY = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96, "num_hidden_layers": 6}
ATOL = 1e-4
PAD_ID = 50283
# window edges: w = 64 is the block size, 128 the full window, 192 one full 3-block window
EDGE_LENGTHS = (1, 2, 63, 64, 65, 127, 128, 129, 191, 192, 193, 255, 256, 257, 1000)
BATCH_LENGTHS = (5, 129, 64, 300, 17, 1)
STRUCTURE_LENGTH = 1000


@functools.cache
def tiny_model(task: str, overrides: tuple = ()):
    """The tiny model for `task` (config overrides as (key, value) pairs), built once; tests only read it."""
    name = "gte-reranker-modernbert-base" if task == "rerank" else "gte-modernbert-base"
    settings = json.loads((CONFIG_DIR / name / "config.json").read_text(encoding="utf-8"))
    config = transformers.ModernBertConfig(**{**settings, **TINY, **dict(overrides)})  # layer types follow
    torch.manual_seed(0)
    cls = transformers.ModernBertForSequenceClassification if task == "rerank" else transformers.ModernBertModel
    return cls._from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()


def session(path: Path, level=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if level is not None:
        options.graph_optimization_level = level
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def padded_batch(lengths, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), max(lengths)), PAD_ID, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(0, 50000, length)
        mask[row, :length] = 1
    return ids, mask


def reference(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    model = tiny_model("embedding")
    path = tmp_path_factory.mktemp("modernbert") / "model.onnx"
    info = export_modernbert(model, "embedding", path)
    return model, path, info, session(path)


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    model = tiny_model("rerank")
    path = tmp_path_factory.mktemp("modernbert-rerank") / "model.onnx"
    info = export_modernbert(model, "rerank", path)
    return model, session(path), info


# -- structure --------------------------------------------------------------------------------------


def sequence_dims(shape, length: int) -> int:
    """How many dimensions of `shape` scale with the sequence (>= its length; blocks are << length)."""
    return sum(1 for dim in shape if isinstance(dim, int) and dim >= length)


def test_sequence_dims_counts_a_dense_score_tensor():
    assert sequence_dims((1, 4, 1000, 1000), 1000) == 2
    assert sequence_dims((16, 4, 64, 192), 1000) == 0
    assert sequence_dims((1, 1024, 64), 1000) == 1


def inline_branches(model, length: int, window: int):
    """The graph as it runs at `length`: each If replaced by the nodes of the branch it takes there
    (local layers: dense up to 3 * window tokens, blockwise beyond; global layers: unpadded here)."""
    inlined = onnx.ModelProto()
    inlined.CopyFrom(model)
    nodes = []
    for node in inlined.graph.node:
        if node.op_type != "If":
            nodes.append(node)
            continue
        attrs = {a.name: a.g for a in node.attribute}
        if ".local/" in node.name:
            branch = attrs["then_branch"] if length <= 3 * window else attrs["else_branch"]
        else:
            branch = attrs["then_branch"]  # one unpadded text
        nodes.extend(branch.node)
        nodes.append(onnx.helper.make_node("Identity", [branch.output[0].name], [node.output[0]], name=node.name))
    del inlined.graph.node[:]
    inlined.graph.node.extend(nodes)
    return inlined


def local_tensor_shapes(model, length: int) -> tuple[dict, dict]:
    """Shapes of every tensor made by a local-layer node at a concrete length: (from onnx shape
    inference, from running the graph). Inference alone cannot follow the Mod/Range size arithmetic
    nor the contrib attention op, so the run supplies the shapes it leaves open."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for graph_input in fixed.graph.input:
        for dim, value in zip(graph_input.type.tensor_type.shape.dim, (1, length)):
            dim.ClearField("dim_param")
            dim.dim_value = value
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    local_names = [out for node in model.graph.node if ".local/" in node.name for out in node.output]
    static = {}
    for info in inferred.graph.value_info:
        if info.name in local_names and info.type.tensor_type.HasField("shape"):
            static[info.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim
            ]
    for name in local_names:
        fixed.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node as built
    run = ort.InferenceSession(fixed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ids, mask = padded_batch([length])
    values = run.run(local_names, {"input_ids": ids, "attention_mask": mask})
    return static, {name: value.shape for name, value in zip(local_names, values)}


def test_no_local_layer_tensor_has_two_sequence_dims():
    hf_model = tiny_model("embedding")
    model = inline_branches(build_modernbert_graph(hf_model, "embedding"), STRUCTURE_LENGTH, hf_model.config.local_attention // 2)
    static, actual = local_tensor_shapes(model, STRUCTURE_LENGTH)
    assert len(actual) > 100  # every local layer contributes its attention, projections and MLP
    too_big = {n: s for n, s in {**static, **actual}.items() if sequence_dims(s, STRUCTURE_LENGTH) > 1}
    assert not too_big
    largest = max(int(np.prod(shape)) for shape in actual.values())
    # the largest local tensor is a key/value window: 3 blocks per block, i.e. O(L * window)
    assert largest <= 3 * 1024 * TINY["hidden_size"]


def test_dense_local_path_is_taken_only_up_to_three_windows():
    """The If in front of each local layer: dense (L x L bias) only while L <= 3w, so the dense path's
    largest tensor is bounded by the window, not by the input."""
    hf_model = tiny_model("embedding")
    w = hf_model.config.local_attention // 2
    model = build_modernbert_graph(hf_model, "embedding")
    local_ifs = [n for n in model.graph.node if n.op_type == "If" and ".local/" in n.name]
    assert len(local_ifs) == 4  # one per local layer of the tiny model
    conditions = sorted({n.input[0] for n in local_ifs})
    assert len(conditions) == 1
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.ValueInfoProto(name=conditions[0]))
    run = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    for length, dense in ((1, True), (3 * w, True), (3 * w + 1, False), (1000, False)):
        ids, mask = padded_batch([length])
        assert bool(run.run([conditions[0]], {"input_ids": ids, "attention_mask": mask})[0]) is dense
    static, actual = local_tensor_shapes(inline_branches(model, 3 * w, w), 3 * w)
    assert max(int(np.prod(shape)) for shape in actual.values()) <= 3 * w * 3 * w * TINY["num_attention_heads"]


def test_saved_graph_uses_only_portable_ops(embedder):
    _, path, info, _ = embedder
    saved = onnx.load(str(path))
    for node in saved.graph.node:
        assert node.domain in ("", "ai.onnx") or (
            node.domain == "com.microsoft" and node.op_type in PORTABLE_CONTRIB_OPS
        ), f"{node.domain}:{node.op_type}"
    assert [i.name for i in saved.graph.input] == info["inputs"] == ["input_ids", "attention_mask"]
    assert [o.name for o in saved.graph.output] == [info["output"]] == ["last_hidden_state"]
    assert info["global_layers"] == [0, 3] and info["local_layers"] == [1, 2, 4, 5]
    assert info["opset"] == 23


def expected_fused_ops(config, task: str, opset: int = 23) -> dict[str, int]:
    """What the saved graph must hold, from the config alone: each layer's attention once in each branch
    of its If (global: unpadded / padded keys; local: dense / blockwise, both the standard Attention op
    from opset 23), one Gelu per MLP, one LayerNorm per norm module (embeddings, each layer's
    attention norm but layer 0's, each MLP's, the final one), and the reranker head's Gelu and LayerNorm."""
    layers = int(config.num_hidden_layers)
    every = int(config.global_attn_every_n_layers)
    global_layers = sum(1 for i in range(layers) if i % every == 0)
    local_layers = layers - global_layers
    head = 1 if task == "rerank" else 0
    standard = 2 * local_layers if opset >= 23 else 0
    return {
        "MultiHeadAttention": 2 * global_layers + 2 * local_layers - standard,
        "Attention": standard,
        "Gelu": layers + head,
        "LayerNormalization": 1 + (layers - 1) + layers + 1 + head,
    }


def fused_ops(op_counts: dict[str, int]) -> dict[str, int]:
    """MultiHeadAttention, Gelu and LayerNorm counts whatever the domain (Gelu is an ONNX op from opset 20,
    ORT's fusion of the erf formula below it); a SkipLayerNormalization counts as its LayerNorm."""
    out = {"MultiHeadAttention": 0, "Attention": 0, "Gelu": 0, "LayerNormalization": 0}
    for key, count in op_counts.items():
        op = key.rpartition(":")[2]
        op = "LayerNormalization" if op in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization") else op
        if op in out:
            out[op] += count
    return out


@pytest.mark.parametrize("task, opset", [("embedding", 23), ("embedding", 17), ("rerank", 23)])
def test_saved_graph_holds_the_fused_ops_the_config_implies(embedder, reranker, tmp_path, task, opset):
    """An onnxruntime that stops fusing (opset 17: the erf GELU into Gelu) or unfuses an op fails here."""
    if opset == 23:
        info = embedder[2] if task == "embedding" else reranker[2]
    else:
        info = export_modernbert(tiny_model(task), task, tmp_path / "model.onnx", opset=opset)
    counts = info["recipe"]["op_counts"]
    assert counts == info["ops"]  # recorded in the manifest's recipe as saved
    assert fused_ops(counts) == expected_fused_ops(tiny_model(task).config, task, opset)
    assert "Erf" not in counts  # the GELU formula is gone, fused


def test_tiny_fixture_manifest_records_the_fused_ops(exported_tiny_gte_dir):
    from gte_onnx.folder.manifest import Manifest

    from tests.conftest import TINY_OVERRIDES

    manifest = Manifest.load(exported_tiny_gte_dir)
    settings = json.loads((CONFIG_DIR / "gte-modernbert-base" / "config.json").read_text(encoding="utf-8"))
    config = transformers.ModernBertConfig(**{**settings, **TINY_OVERRIDES})
    assert fused_ops(manifest.variants["fp32"].recipe["op_counts"]) == expected_fused_ops(config, "embedding")


# -- parity -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", EDGE_LENGTHS)
def test_embedding_matches_transformers_at_window_edges(embedder, length):
    model, _, _, sess = embedder
    ids, mask = padded_batch([length], seed=length)
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert got.shape == (1, length, TINY["hidden_size"])
    assert np.abs(got - reference(model, ids, mask)).max() <= ATOL


def test_padded_batch_matches_transformers_and_each_text_alone(embedder):
    model, _, _, sess = embedder
    ids, mask = padded_batch(BATCH_LENGTHS, seed=7)
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert np.isfinite(got).all()  # padding rows too: masked scores are finite, never -inf
    real = mask.astype(bool)
    assert np.abs(got - reference(model, ids, mask))[real].max() <= ATOL
    for row, length in enumerate(BATCH_LENGTHS):
        alone = sess.run(
            None, {"input_ids": ids[row : row + 1, :length], "attention_mask": mask[row : row + 1, :length]}
        )[0]
        assert np.abs(alone[0] - got[row, :length]).max() <= ATOL


def test_graph_gives_the_same_numbers_without_load_time_optimisation(embedder):
    _, path, _, sess = embedder
    ids, mask = padded_batch((70, 200), seed=3)
    plain = session(path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    feed = {"input_ids": ids, "attention_mask": mask}
    assert np.abs(plain.run(None, feed)[0] - sess.run(None, feed)[0]).max() <= 1e-6


def test_rerank_logits_match_transformers(reranker):
    model, sess, info = reranker
    assert info["output"] == "logits"
    ids, mask = padded_batch((12, 300, 129, 1), seed=11)
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert got.shape == (4, model.config.num_labels)
    assert np.abs(got - reference(model, ids, mask)).max() <= ATOL


@pytest.mark.parametrize(
    "task, opset, overrides",
    [
        ("embedding", 17, ()),  # rotary as plain ops, exact GELU as its erf formula
        ("embedding", 17, (("hidden_activation", "gelu_pytorch_tanh"),)),  # tanh GELU as its formula
        ("embedding", 23, (("hidden_activation", "gelu_pytorch_tanh"),)),  # Gelu(approximate="tanh")
        ("rerank", 23, (("classifier_pooling", "cls"),)),
    ],
)
def test_other_opsets_and_config_variants_match_transformers(tmp_path, task, opset, overrides):
    model = tiny_model(task, overrides)
    info = export_modernbert(model, task, tmp_path / "model.onnx", opset=opset)
    assert info["opset"] == opset
    sess = session(tmp_path / "model.onnx")
    ids, mask = padded_batch((65, 257, 3), seed=5)
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    diff = np.abs(got - reference(model, ids, mask))
    assert (diff if task == "rerank" else diff[mask.astype(bool)]).max() <= ATOL


# -- bad arguments ----------------------------------------------------------------------------------


def test_bad_arguments_are_named(tmp_path, embedder):
    model = embedder[0]
    with pytest.raises(ModernBertExportError, match="task"):
        export_modernbert(model, "classify", tmp_path / "x.onnx")
    with pytest.raises(ModernBertExportError, match="ModernBertForSequenceClassification"):
        export_modernbert(model, "rerank", tmp_path / "x.onnx")
    with pytest.raises(ModernBertExportError, match="opset 16"):
        export_modernbert(model, "embedding", tmp_path / "x.onnx", opset=16)
    with pytest.raises(ModernBertExportError, match="activation 'relu'"):
        export_modernbert(tiny_model("embedding", (("hidden_activation", "relu"),)), "embedding", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_a_transformers_too_old_for_the_exporter_is_named(tmp_path, monkeypatch):
    with pytest.raises(ModernBertExportError, match=r"transformers 4\.57\.6 is installed; .* >= 5\.0\.0"):
        check_transformers_version("4.57.6")
    check_transformers_version(MIN_TRANSFORMERS)
    check_transformers_version(transformers.__version__)
    import gte_onnx.export.modernbert as exporter

    monkeypatch.setattr(exporter, "installed_transformers", lambda: "4.48.0")
    with pytest.raises(ModernBertExportError, match=r"transformers 4\.48\.0 is installed"):
        export_modernbert(tiny_model("embedding"), "embedding", tmp_path / "model.onnx")


def test_pyproject_transformers_floor_is_the_exporters():
    import re

    from packaging.version import Version

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    floors = re.findall(r'"transformers>=([0-9.]+)"', text)
    assert floors and all(Version(f) == Version(MIN_TRANSFORMERS) for f in floors), floors
