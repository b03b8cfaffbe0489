"""Rewrites of the attention nodes of a saved graph: find each node, match its form, guard what the rewrite
cannot express (the node is then left as it is and the reason reported), apply.

- `plain_attention`: every MultiHeadAttention / Attention node as MatMul, ReduceMax, Sub, Exp, one MatMul
  against the values with a column of ones (the row sums) and a Div. ONNX Runtime's fused attention
  kernels sum each softmax row with MLAS's ISA-specific code (16 lanes on AVX-512, 8 on AVX2), so their
  outputs move by an ulp between CPUs; the int8 file quantizes the next layer's input per token, where an ulp across a rounding boundary
  becomes a whole int8 step. These plain ops compute the same bits on every x86 CPU (docs/cpu-support.md),
  which is what makes int8 exact on CPUs without VNNI.
- `attention_for_cuda`: standard Attention as com.microsoft MultiHeadAttention (ORT 1.32's CUDA Attention
  is unfused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gte_onnx.inference.kernel_family import PLAIN_ATTENTION_FORM

# Query rows per block of plain global attention: the scores of one block, (batch, heads, rows, keys), are
# all that is materialised at a time, so memory stays O(length) like the flash kernel's.
QUERY_BLOCK = 256

_ATTENTION_ATTRIBUTES = {"q_num_heads", "kv_num_heads", "scale"}
_ATTENTION_DEFAULTS = {"is_causal": 0, "qk_matmul_output_mode": 0, "softcap": 0.0, "softmax_precision": 0}
_MHA_DEFAULTS = {"unidirectional": 0}
_MHA_ATTRIBUTES = {"num_heads", "scale", "mask_filter_value"} | set(_MHA_DEFAULTS)


@dataclass
class AttentionRewrite:
    """What `plain_attention` did: how many nodes it rewrote and, by node name, why it left the others."""

    rewritten: int = 0
    left: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"form": PLAIN_ATTENTION_FORM if not self.left else "partly plain", "rewritten": self.rewritten,
                "left_fused": dict(self.left)}


@dataclass(frozen=True)
class _Match:
    q: str
    k: str
    v: str
    mask: str | None
    heads: int
    scale: float
    kv_layout: str  # "BSD": (batch, keys, heads x d); "BNSH": (batch, heads, keys, d)


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)


# -- ranks, for the guard: which layout a node's key and value have ----------------------------------------
_SAME_RANK = {
    "Cast", "Identity", "Relu", "Gelu", "Erf", "Exp", "Neg", "Abs", "Sqrt", "Tanh", "Sigmoid", "Softmax",
    "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "Split", "Slice", "Pad",
    "Transpose", "RotaryEmbedding", "QuantizeLinear", "DequantizeLinear", "BiasGelu", "FastGelu", "Dropout",
    "Concat", "Round", "Clip", "DynamicQuantizeLinear",
}
_FIRST_OUTPUT_ONLY = {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                      "DynamicQuantizeLinear"}
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Equal", "Greater", "Less", "And", "Or"}
_MATMUL = {"MatMul", "MatMulInteger", "MatMulIntegerToFloat", "FusedMatMul"}


def _constant_values(graph_chain, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for graph in graph_chain:
        for init in graph.initializer:
            if init.name == name:
                return numpy_helper.to_array(init)
        for node in graph.node:
            if node.op_type == "Constant" and node.output[0] == name:
                for a in node.attribute:
                    if a.name == "value":
                        return numpy_helper.to_array(a.t)
    return None


def _ranks(graph, outer: dict[str, int], chain: tuple) -> dict[str, int]:
    """Rank of every tensor of `graph` this table can tell (inputs, initializers, and the outputs of the
    ops transformer graphs use before attention); subgraphs see their outer scope's ranks."""
    ranks = dict(outer)
    chain = (graph,) + chain
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    for init in graph.initializer:
        ranks[init.name] = len(init.dims)
    for node in graph.node:
        known = [ranks.get(i) for i in node.input]
        first = known[0] if known else None
        rank: int | None = None
        op = node.op_type
        if op in _SAME_RANK:
            rank = first
        elif op in _BROADCAST and known and None not in known:
            rank = max(known)
        elif op in _MATMUL and len(known) >= 2 and None not in known[:2]:
            rank = max(known[:2])
        elif op == "MatMulNBits":
            rank = first
        elif op == "Reshape":
            shape = _constant_values(chain, node.input[1])
            rank = None if shape is None else int(shape.size)
        elif op in ("Gather", "GatherBlockQuantized") and None not in known[:2]:
            rank = known[0] + known[1] - 1
        elif op in ("Unsqueeze", "Squeeze") and first is not None and len(node.input) > 1:
            axes = _constant_values(chain, node.input[1])
            rank = None if axes is None else first + (1 if op == "Unsqueeze" else -1) * int(axes.size)
        elif op in ("ReduceMax", "ReduceMin", "ReduceSum", "ReduceMean") and first is not None:
            keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
            rank = first if keep else None
        elif op in ("Attention", "MultiHeadAttention"):
            rank = 3 if first == 3 else None
        elif op == "If":
            branch = next(a.g for a in node.attribute if a.name == "then_branch")
            inner = _ranks(branch, ranks, chain)
            for out, b_out in zip(node.output, branch.output):
                if b_out.name in inner:
                    ranks[out] = inner[b_out.name]
            continue
        elif op == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            rank = None if value is None else len(value.dims)
        if rank is not None:
            for out in node.output[:1] if op in _FIRST_OUTPUT_ONLY else node.output:
                ranks[out] = rank
    return ranks


def _is_boolean(chain, name: str) -> bool:
    from onnx import TensorProto

    for graph in chain:
        for value in list(graph.input) + list(graph.value_info):
            if value.name == name:
                return value.type.tensor_type.elem_type == TensorProto.BOOL
        for init in graph.initializer:
            if init.name == name:
                return init.data_type == TensorProto.BOOL
    return False


def _match(node, ranks: dict[str, int], chain: tuple) -> tuple[_Match | None, str]:
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = list(node.input) + [""] * 8
    if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
        if any(attributes.get(name, default) != default for name, default in _ATTENTION_DEFAULTS.items()):
            return None, "causal, softcap, a softmax precision or a QK output mode"
        unknown = set(attributes) - _ATTENTION_ATTRIBUTES - set(_ATTENTION_DEFAULTS)
        if unknown:
            return None, f"attributes {sorted(unknown)}"
        heads = attributes.get("q_num_heads")
        if not heads or attributes.get("kv_num_heads") != heads:
            return None, "not 3D inputs with as many key as query heads"
        if any(inputs[4:6]) or len(node.output) > 1:
            return None, "past key/value state"
        layout = "BSD"
        mask = inputs[3] or None
        if mask and _is_boolean(chain, mask):
            return None, "a boolean mask"
    elif node.op_type == "MultiHeadAttention" and node.domain == "com.microsoft":
        if any(attributes.get(name, default) != default for name, default in _MHA_DEFAULTS.items()):
            return None, "unidirectional"
        if set(attributes) - _MHA_ATTRIBUTES:
            return None, f"attributes {sorted(set(attributes) - _MHA_ATTRIBUTES)}"
        heads = attributes.get("num_heads")
        if not inputs[1] or not inputs[2] or any(inputs[3:5]) or any(inputs[6:]) or len(node.output) > 1:
            return None, "packed q/k/v, a bias, a key padding mask or past state"
        if ranks.get(inputs[0]) != 3:
            return None, "query rank unknown or not 3"
        key_rank, value_rank = ranks.get(inputs[1]), ranks.get(inputs[2])
        if key_rank != value_rank or key_rank not in (3, 4):
            return None, "key/value ranks unknown or unlike"
        layout = "BSD" if key_rank == 3 else "BNSH"
        mask = inputs[5] or None
    else:
        return None, "not an attention node"
    if "scale" not in attributes:
        return None, "no scale attribute (the default needs the head size)"
    return _Match(inputs[0], inputs[1], inputs[2], mask, int(heads), float(attributes["scale"]), layout), ""


class _Writer:
    """Emits nodes into a list, with constants as initializers of the top graph (visible in every branch)."""

    def __init__(self, top, prefix: str, opset: int):
        self.top, self.prefix, self.opset, self.nodes, self.count = top, prefix, opset, [], 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def const(self, values, dtype=np.int64) -> str:
        from onnx import numpy_helper

        name = self.name("const")
        self.top.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        from onnx import helper

        output = output or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self.name(op_type), **attrs))
        return output

    def row_max(self, x: str) -> str:
        if self.opset >= 18:  # axes became an input
            return self.op("ReduceMax", [x, self.const([-1])], keepdims=1)
        return self.op("ReduceMax", [x], keepdims=1, axes=[-1])


def _heads_first(w: _Writer, x: str, heads: int, perm: list[int]) -> str:
    return w.op("Transpose", [w.op("Reshape", [x, w.const([0, 0, heads, -1])])], perm=perm)


def _split_heads(w: _Writer, m: _Match) -> tuple[str, str, str]:
    """Scaled queries (B, H, S, d), transposed keys (B, H, d, T) and values (B, H, T, d)."""
    q = w.op("Mul", [_heads_first(w, m.q, m.heads, [0, 2, 1, 3]), w.const(m.scale, np.float32)])
    if m.kv_layout == "BNSH":
        return q, w.op("Transpose", [m.k], perm=[0, 1, 3, 2]), m.v
    return q, _heads_first(w, m.k, m.heads, [0, 2, 3, 1]), _heads_first(w, m.v, m.heads, [0, 2, 1, 3])


def _merge_heads(w: _Writer, context: str, output: str) -> None:
    """(B, H, S, d) -> the node's (B, S, H x d) output."""
    w.op("Reshape", [w.op("Transpose", [context], perm=[0, 2, 1, 3]), w.const([0, 0, -1])], output)


def _write_plain(w: _Writer, m: _Match, output: str) -> None:
    q, k_t, v = _split_heads(w, m)
    scores = w.op("MatMul", [q, k_t])
    if m.mask:
        scores = w.op("Add", [scores, m.mask])
    _merge_heads(w, _softmax_times(w, scores, _with_ones(w, v)), output)


def _with_ones(w: _Writer, v: str) -> str:
    """(B, H, T, d) values -> (B, H, T, d + 1), a column of ones appended (see _softmax_times)."""
    from onnx import TensorProto, helper

    shape = w.op("Shape", [v])
    ones_shape = w.op("Concat", [w.op("Slice", [shape, w.const([0]), w.const([3])]), w.const([1])], axis=0)
    ones = w.op("ConstantOfShape", [ones_shape], value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    return w.op("Concat", [v, ones], axis=3)


def _softmax_times(w: _Writer, scores: str, values_and_ones: str) -> str:
    """softmax(scores) x values, normalised after the product. The row sums come out of the same GEMM, from
    the column of ones: a GEMM adds along the keys in order, so padding keys (weight exactly 0) appended to a
    row change nothing, and a text's vector stays equal to the bit alone and in a padded batch. ReduceSum
    adds in vector lanes with a scalar tail, whose split moves with the row length."""
    from onnx import helper

    weights = w.op("Exp", [w.op("Sub", [scores, w.row_max(scores)])])
    product = w.op("MatMul", [weights, values_and_ones])  # (B, H, S, d + 1)
    context, sums = w.name("context"), w.name("sums")
    width = w.op("Sub", [w.op("Gather", [w.op("Shape", [product]), w.const([3])], axis=0), w.const([1])])
    w.nodes.append(helper.make_node("Split", [product, w.op("Concat", [width, w.const([1])], axis=0)],
                                    [context, sums], axis=3, name=w.name("Split")))
    return w.op("Div", [context, sums])


def _write_blocked(w: _Writer, m: _Match, output: str, block: int) -> None:
    """Plain attention without a mask (ModernBERT's global layers), QUERY_BLOCK query rows at a time in a
    Loop: each block's (B, H, rows, T) scores stay small and cache-resident instead of (B, H, L, T)."""
    from onnx import TensorProto, helper

    q, k_t, v = _split_heads(w, m)
    v_ones = _with_ones(w, v)
    shape = w.op("Shape", [q])
    length = w.op("Gather", [shape, w.const([2])], axis=0)  # (1,)
    one = w.const([1])
    blocks = w.op("Div", [w.op("Add", [length, w.const([block - 1])]), w.const([block])])
    rows = w.op("Div", [w.op("Sub", [w.op("Add", [length, blocks]), one]), blocks])  # ceil(L / blocks)
    padding = w.op("Sub", [w.op("Mul", [blocks, rows]), length])
    zeros = w.const([0] * 6)
    pads = w.op("Concat", [zeros, padding, w.const([0])], axis=0)
    q_padded = w.op("Pad", [q, pads], mode="constant")

    body = _Writer(w.top, w.prefix + "/block", w.opset)
    index, cond = body.name("i"), body.name("cond")
    start = body.op("Mul", [body.op("Unsqueeze", [index, body.const([0])]), rows])
    q_block = body.op("Slice", [q_padded, start, body.op("Add", [start, rows]), body.const([2])])
    context = _softmax_times(body, body.op("MatMul", [q_block, k_t]), v_ones)
    cond_out = body.op("Identity", [cond])
    graph = helper.make_graph(
        body.nodes, body.prefix,
        [helper.make_tensor_value_info(index, TensorProto.INT64, []),
         helper.make_tensor_value_info(cond, TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
         helper.make_tensor_value_info(context, TensorProto.FLOAT, None)])
    trips = w.op("Squeeze", [blocks, w.const([0])])
    stacked = w.op("Loop", [trips, ""], body=graph)  # (blocks, B, H, rows, d)
    merged = w.op("Reshape", [w.op("Transpose", [stacked], perm=[1, 2, 0, 3, 4]),
                              w.op("Concat", [w.const([0, 0, -1]), w.op("Gather", [w.op("Shape", [v]), w.const([3])], axis=0)],
                                   axis=0)])
    _merge_heads(w, w.op("Slice", [merged, w.const([0]), length, w.const([2])]), output)


def plain_attention(model, query_block: int | None = QUERY_BLOCK) -> AttentionRewrite:
    """Rewrite, in place, every attention node of `model` (If branches included) that `_match` accepts as
    plain ops; returns what was rewritten and what was left, with why."""
    report = AttentionRewrite()
    opset = _opset(model)
    if opset < 13:
        for node in _attention_nodes(model.graph):
            report.left[node.name or node.output[0]] = f"opset {opset} < 13"
        return report

    def rewrite(graph, outer: dict[str, int], chain: tuple) -> None:
        ranks = _ranks(graph, outer, chain)
        nodes = []
        for node in graph.node:
            for attribute in node.attribute:
                for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    rewrite(sub, ranks, (graph,) + chain)
            if node.op_type not in ("Attention", "MultiHeadAttention"):
                nodes.append(node)
                continue
            match, why = _match(node, ranks, (graph,) + chain)
            if match is None:
                report.left[node.name or node.output[0]] = why
                nodes.append(node)
                continue
            writer = _Writer(model.graph, f"{node.name or node.output[0]}/plain", opset)
            if query_block and match.mask is None and match.kv_layout == "BSD":
                _write_blocked(writer, match, node.output[0], query_block)
            else:
                _write_plain(writer, match, node.output[0])
            nodes += writer.nodes
            report.rewritten += 1
        del graph.node[:]
        graph.node.extend(nodes)

    rewrite(model.graph, {}, ())
    return report


def _attention_nodes(graph):
    from gte_onnx.convert.graph_optimize import all_nodes

    return [n for n in all_nodes(graph) if n.op_type in ("Attention", "MultiHeadAttention")]


def attention_for_cuda(model) -> int:
    """Rewrite each standard Attention node of `model` (If branches included) that MultiHeadAttention can
    run, in place, as MultiHeadAttention; returns how many. Matched: 3D inputs (q_num_heads given), as many
    key as query heads, no past/present state, attributes only q_num_heads, kv_num_heads, scale (and others
    at their defaults). The mask becomes MultiHeadAttention's additive attention bias, which must be 4D:
    the writer's masks are, (B, 1, L, L) and (blocks, 1, w, 3w)."""
    from onnx import helper

    from gte_onnx.convert.graph_optimize import all_nodes

    rewritten = 0
    for node in all_nodes(model.graph):
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if any(attributes.pop(name) != default for name, default in _ATTENTION_DEFAULTS.items() if name in attributes):
            continue
        heads = attributes.get("q_num_heads", 0)
        if (set(attributes) - _ATTENTION_ATTRIBUTES or not heads or attributes.get("kv_num_heads") != heads
                or len(node.input) not in (3, 4) or len(node.output) != 1):
            continue
        inputs = list(node.input[:3]) + (["", "", node.input[3]] if len(node.input) == 4 and node.input[3] else [])
        extra = {"scale": attributes["scale"]} if "scale" in attributes else {}
        node.CopyFrom(helper.make_node("MultiHeadAttention", inputs, list(node.output), name=node.name,
                                       domain="com.microsoft", num_heads=heads, **extra))
        rewritten += 1
    if rewritten and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return rewritten
