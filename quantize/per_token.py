"""int8 linear layers whose activations are quantized per token, written as plain ops around one integer GEMM.

For a MatMul x @ W (x: (..., K), W: (K, N)):
    peak  = max(ReduceMax(|x|, last axis), tiny)                 (..., 1)   one scale per token
    x_q   = QuantizeLinear(x * (127 / peak), 1, 128)             uint8, symmetric around 128
    y     = MatMulIntegerToFloat(x_q, W_q, 1, w_scale / 127, 128) * peak
with W_q int8 symmetric per output channel (w_scale = max |W[:, n]| / 127) or per tensor.

Why: the MLP down-projection's input has outlier tokens ([CLS]/[SEP] rows reach 6x the median row's peak
in MiniLM) that a per-tensor scale cannot absorb. MatMulNBits at accuracy level 4 also quantizes per
token (and per block of K), but its kernel ran the 1152 -> 768 projection at 4096 tokens 1.2-1.5x slower
than this, and at 128 tokens 1.4-2x slower (dev/contract_gemm.py, 2 threads, shared machine).
"""

from __future__ import annotations

import numpy as np

from . import graph


def quantize_weight(weight: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float32 scales: (N,) per output channel or (1,) per tensor), symmetric."""
    peak = np.abs(weight).max(axis=0) if per_channel else np.array([np.abs(weight).max()])
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(weight / scale), -127, 127).astype(np.int8), scale


def _shared_constants(model) -> dict[str, str]:
    from onnx import numpy_helper

    values = {"pt_tiny": np.array(1e-12, np.float32), "pt_127": np.array(127.0, np.float32),
              "pt_one": np.array(1.0, np.float32), "pt_zero_point": np.array(128, np.uint8),
              "pt_last_axis": np.array([-1], np.int64)}
    present = {init.name for init in model.graph.initializer}
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items() if k not in present)
    return {k: k for k in values}


def _nodes_for(node, weight_q: str, scale: str, c: dict[str, str], opset: int) -> list:
    from onnx import helper

    x, y, name = node.input[0], node.output[0], node.name
    t = {k: f"{name}_pt_{k}" for k in ("abs", "peak", "safe", "inv", "scaled", "q", "gemm")}
    if opset >= 18:
        reduce = helper.make_node("ReduceMax", [t["abs"], c["pt_last_axis"]], [t["peak"]], name=name + "_pt_peak",
                                  keepdims=1)
    else:
        reduce = helper.make_node("ReduceMax", [t["abs"]], [t["peak"]], name=name + "_pt_peak", axes=[-1], keepdims=1)
    return [
        helper.make_node("Abs", [x], [t["abs"]], name=name + "_pt_abs"),
        reduce,
        helper.make_node("Max", [t["peak"], c["pt_tiny"]], [t["safe"]], name=name + "_pt_safe"),
        helper.make_node("Div", [c["pt_127"], t["safe"]], [t["inv"]], name=name + "_pt_inv"),
        helper.make_node("Mul", [x, t["inv"]], [t["scaled"]], name=name + "_pt_scale"),
        helper.make_node("QuantizeLinear", [t["scaled"], c["pt_one"], c["pt_zero_point"]], [t["q"]],
                         name=name + "_pt_quantize"),
        helper.make_node("MatMulIntegerToFloat", [t["q"], weight_q, c["pt_one"], scale, c["pt_zero_point"]],
                         [t["gemm"]], name=name + "_pt_gemm", domain="com.microsoft"),
        helper.make_node("Mul", [t["gemm"], t["safe"]], [y], name=name + "_pt_rescale"),
    ]


def per_token_int8(model, uses, per_channel: bool = True) -> int:
    """Replace the MatMuls of `uses` (graph.WeightUse) in place; returns how many were replaced."""
    graph.import_onnx()
    from onnx import helper, numpy_helper

    chosen = {u.node for u in uses}
    inits = graph.initializers(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    consts = _shared_constants(model)
    new_nodes, done = [], 0
    replaced: dict[str, tuple[str, str]] = {}
    for node in model.graph.node:
        if node.name not in chosen:
            new_nodes.append(node)
            continue
        weight = node.input[1]
        if weight not in replaced:
            init = inits[weight]
            weight_q, scale = quantize_weight(numpy_helper.to_array(init), per_channel)
            replaced[weight] = (f"{weight}_int8", f"{weight}_scale_127")
            model.graph.initializer.remove(init)
            model.graph.initializer.extend([numpy_helper.from_array(weight_q, replaced[weight][0]),
                                            numpy_helper.from_array((scale / 127.0).astype(np.float32),
                                                                    replaced[weight][1])])
        new_nodes += _nodes_for(node, *replaced[weight], consts, opset)
        done += 1
    model.graph.ClearField("node")
    model.graph.node.extend(new_nodes)
    if done and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return done
