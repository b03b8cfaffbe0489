"""fp16 for GPUs: weights and activations in float16, float32 at the graph's inputs and outputs.

- onnxruntime.transformers.float16 does the conversion (onnxconverter-common's keep_io_types gave an
  unloadable model: docs/quantization.md).
- LayerNorm ops stay in float32 (the converter wraps them in Casts): their mean/variance reductions over
  768 values are where fp16 loses most, and the residual stream they read can exceed fp16's range.
- Rotary angles stay in float32: the exporter computes cos/sin of position * inv_freq in the graph, and
  in fp16 a position near 8192 is only exact to +-4, so the angle (and the attention) would be wrong at
  long inputs. Cos, Sin and the float nodes feeding them are blocked; only their outputs are cast down.
- The standard Attention ops (the writer's local layers) become com.microsoft MultiHeadAttention,
  same inputs and result: ORT 1.32's CUDA Attention runs unfused (no flash or memory-efficient kernel).
- Mask constants are made fp16-safe first: -inf or float32's finfo.min (-3.4e38, which the converter
  clamps to -65504) plus a negative score saturates to -inf in fp16, and a query row whose keys are all
  masked (a padding row) then gives softmax NaN, which mean pooling multiplies by zero and keeps (NaN*0
  is NaN). -1e4 still sends exp() to exactly 0, so unmasked rows are unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gte_onnx.errors import missing_dependency

from . import graph
from .attention import attention_for_cuda

# Ops kept in float32 (inputs cast up, outputs cast down): every LayerNorm flavour the exporters and
# ORT's optimiser produce.
FLOAT32_OPS = (
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
)
# Nodes of a quantized embedding table kept in float32 (embedding.py names them with these suffixes):
# GatherBlockQuantized's output type is its scales' type, which the converter does not track, so the
# table's dequantization and exact-row correction stay float32 up to the (float32) LayerNorm after them.
FLOAT32_NODE_SUFFIXES = ("_rows_4bit", "_kept_float", "_exact_rows", "_with_exact_rows")
# A large negative number that fp16 holds with room to spare (its max is 65504).
SAFE_MASK_VALUE = -1.0e4
# Only small constants are mask fill values; big tensors are weights and are left alone.
_MASK_CONSTANT_MAX_ELEMENTS = 16


def _float16_module():
    try:
        from onnxruntime.transformers import float16
    except ImportError:
        raise missing_dependency("onnxruntime", "cpu", "fp16 conversion") from None
    return float16


def _safe(array: np.ndarray) -> np.ndarray | None:
    """The array with fill values below SAFE_MASK_VALUE raised to it, or None when nothing changes."""
    if array.dtype.kind != "f" or array.size > _MASK_CONSTANT_MAX_ELEMENTS:
        return None
    low = array < SAFE_MASK_VALUE  # -inf included
    if not low.any():
        return None
    return np.where(low, np.array(SAFE_MASK_VALUE, dtype=array.dtype), array)


def make_mask_constants_safe(model) -> int:
    """Raise -inf / finfo.min fill values in small constants to SAFE_MASK_VALUE; returns how many."""
    graph.import_onnx()
    from onnx import AttributeProto, numpy_helper

    changed = 0
    for init in model.graph.initializer:
        fixed = _safe(numpy_helper.to_array(init))
        if fixed is not None:
            init.CopyFrom(numpy_helper.from_array(fixed, init.name))
            changed += 1
    for node in model.graph.node:
        if node.op_type not in ("Constant", "ConstantOfShape"):
            continue
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                fixed = _safe(numpy_helper.to_array(attr.t))
                if fixed is not None:
                    attr.t.CopyFrom(numpy_helper.from_array(fixed, attr.t.name))
                    changed += 1
            elif attr.type == AttributeProto.FLOAT and attr.name == "value_float" and attr.f < SAFE_MASK_VALUE:
                attr.f = SAFE_MASK_VALUE
                changed += 1
    return changed


def rotary_angle_nodes(model) -> list[str]:
    """Names of the Cos/Sin nodes and every node upstream of them (positions, their product with
    inv_freq): what must stay float32 for rotary angles to be right at long inputs."""
    producers = {out: node for node in model.graph.node for out in node.output}
    pending = [node for node in model.graph.node if node.op_type in ("Cos", "Sin")]
    names: set[str] = set()
    while pending:
        node = pending.pop()
        if node.name in names:
            continue
        names.add(node.name)
        pending += [producers[name] for name in node.input if name in producers]
    return sorted(names)


def drop_round_trips(model, float32_nodes: set[str]) -> int:
    """Skip the fp32 -> fp16 -> fp32 Cast pairs the converter puts between two float32 (blocked) nodes.

    The converter casts every blocked node's float output down and its float inputs back up, so a chain
    of blocked nodes (positions -> angles) would still pass through fp16 between links. A consumer Cast
    to float32 of such a down-Cast reads the float32 original instead (a float32 -> float32 Cast, which ORT
    drops); down-Casts left without readers are removed. Returns the number of bypassed Casts."""
    from onnx import TensorProto

    producers = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    bypassed = 0
    for down in list(model.graph.node):
        source = producers.get(down.input[0]) if down.input else None
        if cast_to(down) != TensorProto.FLOAT16 or source is None or source.name not in float32_nodes:
            continue
        for up in readers.get(down.output[0], []):
            if cast_to(up) == TensorProto.FLOAT:
                up.input[0] = down.input[0]
                bypassed += 1
        if all(cast_to(r) == TensorProto.FLOAT for r in readers.get(down.output[0], [])):
            model.graph.node.remove(down)
    return bypassed


def typed_for_conversion(model) -> tuple[Any, bool]:
    """(model, typed): the float16 converter casts the inputs of an op kept in float32 only when it knows
    they are float tensors. onnx's shape inference cannot type the outputs of com.microsoft ops
    (MultiHeadAttention, BiasGelu), so a LayerNorm reading them would get float16 inputs next to float32
    weights: a graph ONNX Runtime refuses to load. ORT's symbolic shape inference knows those ops; it runs
    only when onnx's leaves such an input untyped."""
    from onnx.shape_inference import infer_shapes

    inferred = infer_shapes(model)
    g = inferred.graph
    known = {v.name for v in (*g.value_info, *g.input, *g.output)} | {t.name for t in g.initializer}
    untyped = [name for node in g.node if node.op_type in FLOAT32_OPS for name in node.input[:1] if name not in known]
    if not untyped:
        return model, False
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True), True


def convert_to_fp16(model) -> tuple[Any, dict[str, Any]]:
    """The fp16 model (a new proto) and the recipe entries describing the conversion."""
    float16 = _float16_module()
    attention_rewritten = attention_for_cuda(model)
    safe_constants = make_mask_constants_safe(model)
    present = {node.op_type for node in model.graph.node}
    blocked = sorted(present & set(FLOAT32_OPS))
    rotary = rotary_angle_nodes(model)
    model, symbolic = typed_for_conversion(model)
    converted = float16.convert_float_to_float16(
        model,
        keep_io_types=True,
        disable_shape_infer=symbolic,
        op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FLOAT32_OPS),
        node_block_list=[n.name for n in model.graph.node if n.name.endswith(FLOAT32_NODE_SUFFIXES)]
        + rotary or None,
    )
    drop_round_trips(converted, set(rotary))
    recipe = {
        "dtype": "float16",
        "io_types": "float32 (Casts at the graph's inputs and outputs)",
        "ops_kept_float32": blocked,
        "rotary_angle_nodes_kept_float32": len(rotary),
        "mask_constants_made_safe": safe_constants,
        "attention_ops_as_multiheadattention": attention_rewritten,
        "safe_mask_value": SAFE_MASK_VALUE,
        "converter": "onnxruntime.transformers.float16",
        "types_from": "onnxruntime symbolic shape inference" if symbolic else "onnx shape inference",
    }
    return converted, recipe


def make_fp16(src, dst) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Write the fp16 model of `src` to `dst`; returns (recipe, external data files)."""
    model = graph.load_model(src)
    prepared = graph.prepare(model)
    converted, recipe = convert_to_fp16(model)
    recipe = {"kind": "fp16", **recipe, "graph_changes": prepared,
              "op_counts": graph.op_counts(converted), "tools": graph.tool_versions()}
    return recipe, graph.save_variant(converted, dst)


def make_q4f16(src, dst, options, exact_rows=(), calibration_feeds=None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """q4 weights with fp16 activations for GPUs: the q4 recipe, then the fp16 conversion."""
    from .q4 import quantize_q4_model

    model = graph.load_model(src)
    q4_recipe = quantize_q4_model(model, options, exact_rows, calibration_feeds)
    converted, fp16_recipe = convert_to_fp16(model)
    recipe = {**q4_recipe, **fp16_recipe, "kind": "q4f16",
              "op_counts": graph.op_counts(converted), "tools": graph.tool_versions()}
    return recipe, graph.save_variant(converted, dst)
