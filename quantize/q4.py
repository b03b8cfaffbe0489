"""q4: 4-bit weight-only linear layers (com.microsoft MatMulNBits) and a 4-bit embedding table.

MatMulNBits stores each weight column in blocks of `block_size` values with one float32 scale (and, when
asymmetric, one zero point) per block; `accuracy_level` 4 makes the CPU kernel quantize activations per
token and block to int8 and use integer dot products. Weights are first given activation-aware scales
(smooth.py), then rounded by GPTQ (gptq.py) on the Hessians of real-text inputs; the codes are written
into MatMulNBits directly. The token embedding table is 4-bit too (GatherBlockQuantized, blocks of 32
along each row, special-token rows exact; embedding.py).

Default: attention projections and MLP up-projections 4-bit asymmetric in blocks of 64; MLP
down-projections ("contract" role, fed by the activation function) 8-bit symmetric in blocks of 128;
GPTQ + AWQ; 4-bit table. The float32 scales are what limits the block size, and the MLP down-projections
stay 8-bit because 4 bits round away the activation outliers that short odd inputs produce. The trials
behind this default: docs/quantization.md.
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
ROUNDINGS = ("gptq", "rtn")


@dataclass(frozen=True)
class Q4Options:
    block_size: int = 64
    accuracy_level: int = 4
    symmetric: bool = False
    min_weight_elements: int = graph.MIN_WEIGHT_ELEMENTS
    quantize_embeddings: bool = True
    # Activation-aware weight scales searched on real text (needs calibration feeds).
    activation_aware: bool = True
    # Layer roles (graph.WeightUse.role) given 8-bit weights instead of 4: mixed precision.
    int8_roles: tuple[str, ...] = ("contract",)
    # Single layers given 8 bits: (role, index among that role's layers in graph order; -1 the last).
    int8_layers: tuple[tuple[str, int], ...] = ()
    # "gptq": error-feedback rounding on real-text Hessians (gptq.py); "rtn": round to nearest (ORT's).
    rounding: str = "gptq"
    gptq_damp: float = 0.01
    gptq_act_order: bool = False
    # Block sizes by layer role where they differ from block_size, e.g. (("contract", 16),).
    role_block_sizes: tuple[tuple[str, int], ...] = (("contract", 128),)
    # Token embedding table: 8 bits (a scale per row) or 4 bits (blocks of embedding_block_size).
    embedding_bits: int = 4
    embedding_block_size: int = 32

    def __post_init__(self):
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"q4 block size must be one of {BLOCK_SIZES}, got {self.block_size}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise ValueError(f"q4 accuracy level must be one of {ACCURACY_LEVELS}, got {self.accuracy_level}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"q4 rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.embedding_bits not in (4, 8):
            raise ValueError(f"the embedding table takes 4 or 8 bits, not {self.embedding_bits}")
        for role, size in self.role_block_sizes:
            if size not in BLOCK_SIZES:
                raise ValueError(f"q4 block size must be one of {BLOCK_SIZES}, got {size} for {role}")
        unknown = (set(self.int8_roles) | {r for r, _ in self.role_block_sizes}) - {"square", "expand", "contract"}
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
    table = (quantize_embedding_tables(model, exact_rows, bits=options.embedding_bits,
                                       block_size=options.embedding_block_size)
             if options.quantize_embeddings else None)
    uses = graph.weight_matmuls(model, ("MatMul", "Gemm"))
    selected = [u for u in uses if u.op_type == "MatMul" and u.elements >= options.min_weight_elements]
    if not selected:
        raise ValueError(f"the model has no MatMul with a float weight of >= {options.min_weight_elements} elements")
    kept = sorted(u.node for u in uses if u not in selected)
    eight_bit = [u for u in selected if u.role in options.int8_roles]
    for role, index in options.int8_layers:
        of_role = [u for u in selected if u.role == role]
        if of_role and -len(of_role) <= index < len(of_role) and of_role[index] not in eight_bit:
            eight_bit.append(of_role[index])
    four_bit = [u for u in selected if u not in eight_bit]
    scaling = None
    if options.activation_aware and four_bit:
        if calibration_feeds is None:
            raise ValueError("activation-aware q4 needs calibration_feeds (real text); "
                             "pass activation_aware=False to skip it")
        from .smooth import awq_for_q4

        scaling = awq_for_q4(model, four_bit, calibration_feeds(), options.block_size, options.symmetric)
    rounding = None
    if options.rounding == "gptq":
        if calibration_feeds is None:
            raise ValueError("GPTQ rounding needs calibration_feeds (real text); pass rounding='rtn' to skip it")
        from .gptq import gptq_matmul_nbits

        by_role = dict(options.role_block_sizes)
        sizes = {u.node: by_role[u.role] for u in selected if u.role in by_role}
        rounding = gptq_matmul_nbits(model, four_bit, calibration_feeds(), 4, options.block_size, options.symmetric,
                                     options.accuracy_level, options.gptq_damp, eight_bit=eight_bit,
                                     block_sizes=sizes, act_order=options.gptq_act_order)
    else:
        by_role = dict(options.role_block_sizes)
        for bits, uses_, symmetric in ((8, eight_bit, True), (4, four_bit, options.symmetric)):
            for size in sorted({by_role.get(u.role, options.block_size) for u in uses_}):
                chosen = [u for u in uses_ if by_role.get(u.role, options.block_size) == size]
                matmul_nbits(model, chosen, bits, size, symmetric, options.accuracy_level)
    return {
        "kind": "q4",
        "op_types_quantized": ["MatMul"] + (["Gather"] if table and table["tables"] else []),
        "weights": f"4-bit {'symmetric' if options.symmetric else 'asymmetric'} blocks of {options.block_size} "
                   "along the input dimension (MatMulNBits)",
        "block_size": options.block_size,
        "role_block_sizes": dict(options.role_block_sizes),
        "accuracy_level": options.accuracy_level,
        # MLAS's 4-bit kernel computes the odd last row of a GEMM on another path (same text alone and in a
        # batch differed by 3e-3 on MiniLM); the runtime pads batches to an even width, so no row is odd.
        "pad_to_multiple": 2,
        "symmetric": options.symmetric,
        "per_channel": False,
        "matmuls_quantized": len(selected),
        "eight_bit": {"roles": list(options.int8_roles), "count": len(eight_bit)} if eight_bit else None,
        "min_weight_elements": options.min_weight_elements,
        "nodes_kept_float": kept,
        "embedding_table": table,
        "activation_aware": scaling,
        "rounding": rounding or {"method": "round to nearest"},
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
    return recipe, graph.save_variant(model, dst)
