"""Per-token int8 linear layers (quantize/per_token.py): what they compute and which ops they use."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

from gte_onnx.quantize import graph
from gte_onnx.quantize.per_token import per_token_int8, quantize_weight

K, N = 96, 64


def linear_model(weight: np.ndarray, opset: int):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="down")]
    g = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "l", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "l", N])],
                          [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("opset", [17, 21])
@pytest.mark.parametrize("per_channel", [True, False])
def test_per_token_layer_matches_the_float_layer_and_scales_each_token(opset, per_channel):
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    x = rng.standard_normal((2, 7, K)).astype(np.float32)
    x[0, 0] *= 50.0  # an outlier token: a per-tensor scale would flatten every other token
    x[1, 3] = 0.0  # an all-zero token must stay finite
    model = linear_model(weight, opset)
    expected = run(model, x)
    assert per_token_int8(model, graph.weight_matmuls(model), per_channel) == 1
    assert not graph.weight_matmuls(model)  # no float weight left
    assert {n.op_type for n in model.graph.node} >= {"QuantizeLinear", "MatMulIntegerToFloat", "ReduceMax"}
    got = run(model, x)
    assert np.isfinite(got).all() and np.abs(got[1, 3]).max() == 0.0
    for b in range(2):
        for t in range(7):
            if b == 1 and t == 3:
                continue
            error = np.abs(got[b, t] - expected[b, t]).max() / np.abs(expected[b, t]).max()
            assert error < 0.03, (b, t, error)  # each token keeps its own resolution, the outlier's neighbours too


def test_weights_round_to_int8_within_half_a_step():
    weight = np.random.default_rng(1).standard_normal((K, N)).astype(np.float32)
    for per_channel in (True, False):
        q, scale = quantize_weight(weight, per_channel)
        assert q.dtype == np.int8 and np.abs(q).max() <= 127
        assert np.all(np.abs(q * scale - weight) <= scale / 2 + 1e-6)
