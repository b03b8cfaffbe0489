"""q4: 4-bit weight-only linear layers (com.microsoft MatMulNBits) and an 8-bit embedding table.

MatMulNBits stores each weight column in blocks of `block_size` values with one scale and zero point per
block; `accuracy_level` 4 makes the CPU kernel quantize activations per token and block to int8 and use
integer dot products. Weights are rounded after activation-aware scaling (smooth.py). Defaults chosen on
the real MiniLM (STS-B / CISI nDCG@10 drops in points): blocks of 32 with 4-bit MLP down-projections
1.8 nDCG (round to nearest); blocks of 32, 8-bit down-projections 0.13 / 1.10 (fails the 1-point gate);
blocks of 16, 8-bit down-projections 0.20 / 0.94 (the default, 139 MB for gte); blocks of 32 with the
whole MLP in 8 bits 0.11 / 0.28 (143 MB for gte, so hardly smaller than int8). The embedding table gets 8 bits, not 4: see embedding.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gte_onnx.errors import missing_dependency

from . import graph
from .embedding import quantize_embedding_tables

BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Q4Options:
    block_size: int = 16
    accuracy_level: int = 4
    symmetric: bool = False
    min_weight_elements: int = graph.MIN_WEIGHT_ELEMENTS
    quantize_embeddings: bool = True
    # Activation-aware weight scales searched on real text (needs calibration feeds).
    activation_aware: bool = True
    # Layer roles (graph.WeightUse.role) given 8-bit weights instead of 4: mixed precision.
    int8_roles: tuple[str, ...] = ("contract",)

    def __post_init__(self):
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"q4 block size must be one of {BLOCK_SIZES}, got {self.block_size}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise ValueError(f"q4 accuracy level must be one of {ACCURACY_LEVELS}, got {self.accuracy_level}")
        unknown = set(self.int8_roles) - {"square", "expand", "contract"}
        if unknown:
            raise ValueError(f"unknown layer role(s) {sorted(unknown)}; roles are square, expand, contract")


def matmul_nbits(model, uses, bits: int, block_size: int, symmetric: bool, accuracy_level: int) -> None:
    """Replace the MatMuls of `uses` by MatMulNBits with `bits`-bit block-quantized weights, in place."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:  # onnxruntime's quantizer also needs onnx-ir, which it does not declare
        raise missing_dependency(exc.name or "onnxruntime", "quantize", "weight quantization") from None
    chosen = {u.node for u in uses}
    # The quantizer takes every MatMul it can unless excluded, so exclusion is how the choice is made.
    exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in chosen]
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=accuracy_level, nodes_to_exclude=exclude,
                                     op_types_to_quantize=("MatMul",))
    with graph.quiet_quantizer_logs():
        quantizer.process()
    if quantizer.model.model is not model:
        model.CopyFrom(quantizer.model.model)


def quantize_q4_model(
    model, options: Q4Options, exact_rows: Sequence[int] = (), calibration_feeds=None
) -> dict[str, Any]:
    """Quantize `model` in place (returns the recipe). Also the first step of q4f16.

    `exact_rows`: token ids whose embedding rows stay exact (the special tokens in every input).
    """
    prepared = graph.prepare(model)
    table = quantize_embedding_tables(model, exact_rows) if options.quantize_embeddings else None
    uses = graph.weight_matmuls(model, ("MatMul", "Gemm"))
    selected = [u for u in uses if u.op_type == "MatMul" and u.elements >= options.min_weight_elements]
    if not selected:
        raise ValueError(f"the model has no MatMul with a float weight of >= {options.min_weight_elements} elements")
    kept = sorted(u.node for u in uses if u not in selected)
    eight_bit = [u for u in selected if u.role in options.int8_roles]
    four_bit = [u for u in selected if u not in eight_bit]
    scaling = None
    if options.activation_aware and four_bit:
        if calibration_feeds is None:
            raise ValueError("activation-aware q4 needs calibration_feeds (real text); "
                             "pass activation_aware=False to skip it")
        from .smooth import awq_for_q4

        scaling = awq_for_q4(model, four_bit, calibration_feeds(), options.block_size, options.symmetric)
    if eight_bit:
        matmul_nbits(model, eight_bit, 8, options.block_size, True, options.accuracy_level)
    if four_bit:
        matmul_nbits(model, four_bit, 4, options.block_size, options.symmetric, options.accuracy_level)
    return {
        "kind": "q4",
        "op_types_quantized": ["MatMul"] + (["Gather"] if table and table["tables"] else []),
        "weights": f"4-bit {'symmetric' if options.symmetric else 'asymmetric'} blocks of {options.block_size} "
                   "along the input dimension (MatMulNBits)",
        "block_size": options.block_size,
        "accuracy_level": options.accuracy_level,
        "symmetric": options.symmetric,
        "per_channel": False,
        "matmuls_quantized": len(selected),
        "eight_bit": {"roles": list(options.int8_roles), "count": len(eight_bit)} if eight_bit else None,
        "min_weight_elements": options.min_weight_elements,
        "nodes_kept_float": kept,
        "embedding_table": table,
        "activation_aware": scaling,
        "graph_changes": prepared,
    }


def make_q4(
    src: str | Path, dst: str | Path, options: Q4Options = Q4Options(), exact_rows: Sequence[int] = (),
    calibration_feeds=None,
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Write the q4 model of `src` to `dst`; returns (recipe, external data files)."""
    model = graph.load_model(src)
    recipe = quantize_q4_model(model, options, exact_rows, calibration_feeds)
    recipe["float_matmul_weight_bytes_left"] = graph.float_weight_bytes(model, options.min_weight_elements)
    recipe["op_counts"] = graph.op_counts(model)
    recipe["tools"] = graph.tool_versions()
    return recipe, graph.save_model(model, dst)
