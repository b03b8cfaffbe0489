"""quantize.attention on small graphs: each attention form the writers emit becomes plain ops that compute what
the fused kernel computes, what the guard cannot express is left with a reason, and a text's row does not move
when padding keys are appended (the batch invariance the runtime tests rely on)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gte_onnx.convert.graph_optimize import all_nodes  # noqa: E402
from gte_onnx.quantize.attention import attention_for_cuda, plain_attention  # noqa: E402

HEADS, HEAD_DIM = 2, 4
RNG = np.random.default_rng(0)


def _run(model, feeds) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}})[0]


def _ops(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in all_nodes(model.graph):
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _model(node, inputs, opset=23, initializers=(), extra_nodes=(), ranks=None):
    """`ranks`: input name -> rank declared on the graph input (what the guard reads); others undeclared."""
    ranks = ranks or {}
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * ranks[name] if name in ranks else None)
              for name in inputs]
    graph = helper.make_graph(list(extra_nodes) + [node], "g", values,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("com.microsoft", 1)])


def _qkv(batch=2, queries=5, keys=5):
    width = HEADS * HEAD_DIM
    return {"q": RNG.standard_normal((batch, queries, width), dtype=np.float32),
            "k": RNG.standard_normal((batch, keys, width), dtype=np.float32),
            "v": RNG.standard_normal((batch, keys, width), dtype=np.float32)}


def _mask(batch, queries, keys):
    return np.where(RNG.random((batch, 1, queries, keys)) < 0.3, -1e4, 0).astype(np.float32)


def _rewritten(model, **kwargs):
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    report = plain_attention(rewritten, **kwargs)
    return rewritten, report


def _check_plain(model, feeds, **kwargs):
    expected = _run(model, feeds)
    rewritten, report = _rewritten(model, **kwargs)
    assert report.rewritten == 1 and report.left == {}
    ops = _ops(rewritten)
    assert "Attention" not in ops and "MultiHeadAttention" not in ops and "Softmax" not in ops
    assert ops["Exp"] == 1 and ops["ReduceMax"] == 1 and ops["MatMul"] == 2
    np.testing.assert_allclose(_run(rewritten, feeds), expected, rtol=1e-5, atol=1e-6)
    return rewritten


def test_multiheadattention_with_an_additive_bias_becomes_plain_ops():  # BERT's form
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "", "mask"], ["out"], domain="com.microsoft",
                            num_heads=HEADS, scale=0.37)
    feeds = _qkv() | {"mask": _mask(2, 5, 5)}
    _check_plain(_model(node, ["q", "k", "v", "mask"], ranks={"q": 3, "k": 3, "v": 3, "mask": 4}), feeds)


def test_standard_attention_with_a_mask_becomes_plain_ops():  # ModernBERT's local layers
    node = helper.make_node("Attention", ["q", "k", "v", "mask"], ["out"], q_num_heads=HEADS, kv_num_heads=HEADS,
                            scale=0.5)
    _check_plain(_model(node, ["q", "k", "v", "mask"]), _qkv(queries=3, keys=7) | {"mask": _mask(2, 3, 7)})


def test_bnsh_keys_and_values_are_read_as_they_are():  # ModernBERT's local windows below opset 23
    shape = numpy_helper.from_array(np.array([0, HEADS, -1, HEAD_DIM], np.int64), "bnsh")
    reshape = [helper.make_node("Reshape", [x, "bnsh"], [f"{x}4"]) for x in ("k", "v")]
    node = helper.make_node("MultiHeadAttention", ["q", "k4", "v4", "", "", "mask"], ["out"], domain="com.microsoft",
                            num_heads=HEADS, scale=0.5)
    model = _model(node, ["q", "k", "v", "mask"], initializers=[shape], extra_nodes=reshape, ranks={"q": 3})
    # k viewed as (B, heads, keys, d) straight from (B, heads * keys * d) rows: any layout will do for the check.
    _check_plain(model, _qkv(queries=5, keys=6) | {"mask": _mask(2, 5, 6)})


@pytest.mark.parametrize("length", [3, 8, 11])
def test_global_attention_runs_in_query_blocks_and_equals_the_fused_kernel(length):
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["out"], domain="com.microsoft",
                            num_heads=HEADS, scale=0.5)
    model = _model(node, ["q", "k", "v"], ranks={"q": 3, "k": 3, "v": 3})
    rewritten = _check_plain(model, _qkv(queries=length, keys=length), query_block=4)
    assert _ops(rewritten)["Loop"] == 1  # ceil(length / 4) blocks of <= 4 rows, one pass each


def test_a_row_is_the_same_to_the_bit_with_padding_keys_appended():
    """A text alone and inside a padded batch: the padding keys get weight exactly 0, and the row sums come out
    of the value GEMM, which adds along the keys in order, so nothing moves (ReduceSum's lanes would)."""
    node = helper.make_node("Attention", ["q", "k", "v", "mask"], ["out"], q_num_heads=HEADS, kv_num_heads=HEADS,
                            scale=0.5)
    rewritten, _ = _rewritten(_model(node, ["q", "k", "v", "mask"]))
    feeds = _qkv(batch=1, queries=7, keys=7)
    alone = _run(rewritten, feeds | {"mask": np.zeros((1, 1, 7, 7), np.float32)})
    for extra in (1, 5, 9, 26):
        padded = {name: np.concatenate([x, RNG.standard_normal((1, extra, x.shape[2]), dtype=np.float32)], axis=1)
                  for name, x in feeds.items()}
        mask = np.zeros((1, 1, 7 + extra, 7 + extra), np.float32)
        mask[..., 7:] = -1e6
        np.testing.assert_array_equal(_run(rewritten, padded | {"mask": mask})[:, :7], alone, err_msg=str(extra))


@pytest.mark.parametrize("attributes, inputs, reason", [
    ({"q_num_heads": 4, "kv_num_heads": 2, "scale": 0.5}, ["q", "k", "v"], "as many key as query heads"),
    ({"q_num_heads": 2, "kv_num_heads": 2, "scale": 0.5, "is_causal": 1}, ["q", "k", "v"], "causal"),
    ({"q_num_heads": 2, "kv_num_heads": 2}, ["q", "k", "v"], "no scale attribute"),
    ({"q_num_heads": 2, "kv_num_heads": 2, "scale": 0.5}, ["q", "k", "v", "", "past_k", "past_v"], "past"),
])
def test_what_the_rewrite_cannot_express_is_left_fused_with_the_reason(attributes, inputs, reason):
    node = helper.make_node("Attention", inputs, ["out"], name="attn", **attributes)
    model, report = _rewritten(_model(node, [i for i in inputs if i]))
    assert report.rewritten == 0 and reason in report.left["attn"]
    assert report.record()["form"] == "partly plain"
    assert [n.op_type for n in model.graph.node] == ["Attention"]


def test_multiheadattention_with_a_key_padding_mask_or_unknown_key_rank_is_left():
    padded = helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "kpm"], ["out"], name="kpm",
                              domain="com.microsoft", num_heads=HEADS, scale=0.5)
    assert "key padding mask" in _rewritten(_model(padded, ["q", "k", "v", "kpm"]))[1].left["kpm"]
    unknown = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["out"], name="unknown",
                               domain="com.microsoft", num_heads=HEADS, scale=0.5)
    assert "unknown" in _rewritten(_model(unknown, ["q", "k", "v"]))[1].left["unknown"]


def _attention_graph(**attributes):
    node = helper.make_node("Attention", ["q", "k", "v", "mask"], ["out"], **attributes)
    return _model(node, ["q", "k", "v", "mask"])


def test_attention_for_cuda_gives_the_same_result_and_leaves_what_it_cannot_run():
    feeds = {n: RNG.standard_normal((2, 5, 8), dtype=np.float32) for n in ("q", "k", "v")}
    feeds["mask"] = np.where(RNG.random((2, 1, 5, 5)) < 0.3, -1e4, 0).astype(np.float32)
    model = _attention_graph(q_num_heads=2, kv_num_heads=2, scale=0.3, is_causal=0, softcap=0.0)
    expected = _run(model, feeds)
    assert attention_for_cuda(model) == 1
    assert [(n.domain, n.op_type) for n in model.graph.node] == [("com.microsoft", "MultiHeadAttention")]
    assert list(model.graph.node[0].input) == ["q", "k", "v", "", "", "mask"]
    np.testing.assert_allclose(_run(model, feeds), expected, atol=1e-6)
    for attributes in ({}, {"q_num_heads": 4, "kv_num_heads": 2}, {"q_num_heads": 2, "kv_num_heads": 2, "is_causal": 1},
                       {"q_num_heads": 2, "kv_num_heads": 2, "softcap": 30.0}):
        untouched = _attention_graph(**attributes)
        assert attention_for_cuda(untouched) == 0, attributes
        assert untouched.graph.node[0].op_type == "Attention"
