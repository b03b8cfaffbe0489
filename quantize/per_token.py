"""int8 linear layers whose activations are quantized per token, written as plain ops around one integer GEMM.

For a MatMul x @ W (x: (..., K), W: (K, N)):
    peak  = max(ReduceMax(|x|, last axis), tiny)                 (..., 1)   one scale per token
    x_q   = QuantizeLinear(x / (peak / 127), 128)                uint8, symmetric around 128 (below
                                                                 opset 21: x * (127 / peak), scale 1)
    y     = MatMulIntegerToFloat(x_q, W_q, 1, w_scale / 127, 128) * peak
with W_q int8 symmetric per output channel (w_scale = max |W[:, n]| / 127) or per tensor. x_q is made
once per tensor, whatever the number of GEMMs reading it.

Why: a token's scale depends on that token alone, so no vector depends on the other texts of its batch;
and outlier tokens (the [CLS]/[SEP] rows of the MLP down-projection input) do not coarsen the others, as a
per-tensor scale would. MatMulNBits at accuracy level 4 also quantizes per token (and per block of K), but
its kernel is slower at the model's shapes (docs/quantization.md).
"""

from __future__ import annotations

from typing import Any

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


def _quantize_nodes(x: str, width: int, tag: str, c: dict[str, str], opset: int) -> tuple[list, str, str]:
    """(nodes, uint8 tensor, float32 per-token peak) quantizing `x` (last axis `width`) for the GEMMs reading it.

    From opset 21 the peak comes from ReduceMax and ReduceMin (two reads of x, no |x| written) and one
    blocked QuantizeLinear divides by it (block = the whole last axis): 1.8-2.3x faster than
    Abs/ReduceMax/Mul/QuantizeLinear on a 4096 x 768 input (2 threads).
    """
    from onnx import TensorProto, helper

    def name(k: str) -> str:
        return f"{tag}_pt_{k}"

    def node(op: str, inputs: list[str], key: str, **attrs):
        return helper.make_node(op, inputs, [name(key)], name=name(key), **attrs)

    if opset < 21:
        reduce = (node("ReduceMax", [name("abs"), c["pt_last_axis"]], "peak", keepdims=1) if opset >= 18 else
                  node("ReduceMax", [name("abs")], "peak", axes=[-1], keepdims=1))
        return [
            node("Abs", [x], "abs"),
            reduce,
            node("Max", [name("peak"), c["pt_tiny"]], "safe"),
            node("Div", [c["pt_127"], name("safe")], "inv"),
            node("Mul", [x, name("inv")], "scaled"),
            node("QuantizeLinear", [name("scaled"), c["pt_one"], c["pt_zero_point"]], "q"),
        ], name("q"), name("safe")
    zero_point = helper.make_tensor("pt_zp_value", TensorProto.UINT8, [1], [128])
    return [
        node("ReduceMax", [x, c["pt_last_axis"]], "peak", keepdims=1),
        node("ReduceMin", [x, c["pt_last_axis"]], "low", keepdims=1),
        node("Neg", [name("low")], "neg"),
        node("Max", [name("peak"), name("neg"), c["pt_tiny"]], "safe"),
        node("Div", [name("safe"), c["pt_127"]], "step"),
        node("Shape", [name("step")], "shape"),
        # blocked QuantizeLinear wants a zero point of the scale's shape
        node("ConstantOfShape", [name("shape")], "zp", value=zero_point),
        node("QuantizeLinear", [x, name("step"), name("zp")], "q", axis=-1, block_size=width),
    ], name("q"), name("safe")


def _gemm_nodes(q: str, peak: str, weight_q: str, scale: str, y: str, tag: str, c: dict[str, str]) -> list:
    from onnx import helper

    gemm = f"{tag}_pt_gemm"
    return [
        helper.make_node("MatMulIntegerToFloat", [q, weight_q, c["pt_one"], scale, c["pt_zero_point"]],
                         [gemm], name=tag + "_pt_gemm", domain="com.microsoft"),
        helper.make_node("Mul", [gemm, peak], [y], name=tag + "_pt_rescale"),
    ]


def _last_axis_split(node, consumers: dict, inits: dict, width: int, outputs: set[str]
                     ) -> tuple[Any, list[int]] | None:
    """The Split that alone reads `node`'s output (not a graph output) along its last axis into constant
    widths, with them."""
    from onnx import numpy_helper

    readers = consumers.get(node.output[0], [])
    if node.output[0] in outputs or len(readers) != 1:
        return None
    split = readers[0]
    if split.op_type != "Split" or len(split.input) < 2 or not split.name:
        return None
    axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
    sizes = inits.get(split.input[1])
    if axis != -1 or sizes is None:
        return None
    widths = [int(v) for v in numpy_helper.to_array(sizes)]
    return (split, widths) if sum(widths) == width and len(widths) == len(split.output) else None


def per_token_int8(model, uses, per_channel: bool = True, split_fused: bool = True) -> int:
    """Replace the MatMuls of `uses` (graph.WeightUse) in place; returns how many were replaced.

    GEMMs reading the same tensor share one quantization of it. With `split_fused`, a GEMM whose output
    only feeds a last-axis Split (the writer's fused q/k/v and GeGLU halves) becomes one integer GEMM per
    part writing the Split's outputs: the fusion existed to quantize the input once, which sharing now
    does, and the Split's copy of the wide output goes away.
    """
    graph.import_onnx()
    from onnx import helper, numpy_helper

    chosen = {u.node for u in uses}
    inits = graph.initializers(model)
    consumers = graph.consumers(model)
    outputs = {o.name for o in model.graph.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    consts = _shared_constants(model)
    new_nodes, done = [], 0
    replaced: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    quantized: dict[str, tuple[str, str]] = {}  # input tensor -> (uint8 tensor, peak)
    dropped: set[str] = set()
    orphans: set[str] = set()  # the removed Splits' size constants
    written: set[str] = set()  # initializers stored for quantized weights (or their parts)
    for node in model.graph.node:
        if node.name in dropped:
            continue
        if node.name not in chosen:
            new_nodes.append(node)
            continue
        weight = node.input[1]
        if weight not in replaced:
            init = inits[weight]
            replaced[weight] = quantize_weight(numpy_helper.to_array(init), per_channel)
            model.graph.initializer.remove(init)
        weight_q, scale = replaced[weight]
        if node.input[0] not in quantized:
            nodes, q, peak = _quantize_nodes(node.input[0], weight_q.shape[0], node.name, consts, opset)
            new_nodes += nodes
            quantized[node.input[0]] = (q, peak)
        q, peak = quantized[node.input[0]]
        split = _last_axis_split(node, consumers, inits, weight_q.shape[1], outputs) if split_fused else None
        parts = [(node.output[0], 0, weight_q.shape[1], node.name, weight)]
        if split is not None:
            dropped.add(split[0].name)
            orphans.add(split[0].input[1])
            bounds = np.cumsum([0] + split[1])
            parts = [(out, int(a), int(b), f"{node.name}_part{i}", f"{weight}_part{i}_{a}_{b}")
                     for i, (out, a, b) in enumerate(zip(split[0].output, bounds[:-1], bounds[1:]))]
        for out, a, b, tag, stored in parts:
            names = (f"{stored}_int8", f"{stored}_scale_127")
            if stored not in written:  # a weight read by several MatMuls is stored once
                written.add(stored)
                part_scale = scale if scale.shape[0] == 1 else scale[a:b]
                model.graph.initializer.extend([
                    numpy_helper.from_array(np.ascontiguousarray(weight_q[:, a:b]), names[0]),
                    numpy_helper.from_array((part_scale / 127.0).astype(np.float32), names[1])])
            new_nodes += _gemm_nodes(q, peak, *names, out, tag, consts)
        done += 1
    model.graph.ClearField("node")
    model.graph.node.extend(new_nodes)
    still_read = {name for n in new_nodes for name in n.input}
    for name in orphans - still_read:
        model.graph.initializer.remove(inits[name])
    if done and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return done
