"""The per-token int8 pass on small hand-made graphs: ops counted, the fused GEMM split into parts only when
its output feeds nothing but a last-axis Split, one shared quantization per input, numpy-checked output."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper

from gte_onnx.quantize.graph import op_counts, weight_matmuls
from gte_onnx.quantize.per_token import per_token_int8

K = 64
RNG = np.random.default_rng(7)
W = {"w_fused": RNG.normal(size=(K, 96)).astype(np.float32),
     "w_plain": RNG.normal(size=(K, 64)).astype(np.float32),
     "w_shared": RNG.normal(size=(K, 48)).astype(np.float32)}


def _graph(OPSET=23):
    """x -> fused GEMM -> Split [32, 32, 32]; x -> plain GEMM; x -> GEMM whose output feeds a Split *and* is
    a graph output (the guard: that Split must stay)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w_fused"], ["fused"], name="fused_mm"),
        helper.make_node("Split", ["fused", "sizes3"], ["a", "b", "c"], name="split3", axis=-1),
        helper.make_node("MatMul", ["x", "w_plain"], ["plain"], name="plain_mm"),
        helper.make_node("MatMul", ["x", "w_shared"], ["shared"], name="shared_mm"),
        helper.make_node("Split", ["shared", "sizes2"], ["d", "e"], name="split2", axis=-1),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in W.items()]
    inits += [numpy_helper.from_array(np.array([32, 32, 32], np.int64), "sizes3"),
              numpy_helper.from_array(np.array([24, 24], np.int64), "sizes2")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "seq", None]) for n in ("a", "b", "c", "plain", "shared",
                                                                                   "d", "e")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], outs, inits),
                             opset_imports=[helper.make_opsetid("", OPSET)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))


def _reference(x, w, divide=True):
    """numpy per-token symmetric int8: one scale per row of x, one per output channel of w."""
    peak = np.maximum(np.abs(x).max(-1, keepdims=True), 1e-12)
    q = np.clip(np.rint(x / (peak / np.float32(127)) if divide else x * (np.float32(127) / peak)), -128, 127)
    w_scale = np.abs(w).max(0) / 127.0
    w_q = np.clip(np.rint(w / w_scale), -127, 127)
    return (q @ w_q) * w_scale * (peak / 127.0)


@pytest.mark.parametrize("opset", [17, 23])  # below 21: Abs/ReduceMax/Mul; from 21: blocked QuantizeLinear
def test_pass_splits_the_fused_gemm_shares_one_quantization_and_keeps_a_guarded_split(opset):
    model = _graph(opset)
    assert per_token_int8(model, weight_matmuls(model)) == 3
    counts = op_counts(model)
    assert counts["QuantizeLinear"] == counts["ReduceMax"] == 1  # x quantized once for all three GEMMs
    assert counts.get("Abs", 0) == (opset < 21) and counts.get("ReduceMin", 0) == (opset >= 21)
    assert counts["MatMulIntegerToFloat"] == 3 + 1 + 1
    assert counts["Split"] == 1 and not counts.get("MatMul")  # split3 gone; split2 guarded (shared is read twice)
    names = {i.name for i in model.graph.initializer}
    assert "sizes2" in names and "sizes3" not in names and not names & set(W)  # no orphan left behind
    onnx.checker.check_model(model)
    x = RNG.normal(size=(3, 5, K)).astype(np.float32)
    x[1, 2] *= 20  # an outlier token: per-token scales keep the other rows fine
    got = _run(model, x)
    fused = _reference(x, W["w_fused"], opset >= 21)
    for i, name in enumerate("abc"):
        np.testing.assert_allclose(got[name], fused[..., 32 * i:32 * (i + 1)], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["plain"], _reference(x, W["w_plain"], opset >= 21), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.concatenate([got["d"], got["e"]], -1), got["shared"], atol=0)


def test_split_parts_equal_the_unsplit_gemm_and_no_row_depends_on_its_batch():
    split, whole = _graph(), _graph()
    per_token_int8(split, weight_matmuls(split))
    per_token_int8(whole, weight_matmuls(whole), split_fused=False)
    assert op_counts(whole)["Split"] == 2 and op_counts(whole)["MatMulIntegerToFloat"] == 3
    x = RNG.normal(size=(4, 7, K)).astype(np.float32)
    a, b = _run(split, x), _run(whole, x)
    for name in ("a", "b", "c", "plain", "d", "e"):
        np.testing.assert_allclose(a[name], b[name], atol=1e-6)
    alone = _run(split, x[2:3, :3])  # one text, shorter, without its batch-mates
    for name in ("a", "plain", "d"):
        np.testing.assert_array_equal(alone[name][0], a[name][2, :3])
