"""Quantized token embedding table, special-token rows exact; only the looked-up rows are dequantized.

gte's 50368x768 table is 155 MB in fp32, more than either size target leaves for it. Two schemes:
- 4 bits (the default of int8 and q4): asymmetric blocks of 32 along each row, float32 scales, 4-bit zero
  points, read by com.microsoft GatherBlockQuantized (CPU EP), 24.8 MB for gte.
- 8 bits: int8 rows with one float32 scale per row, standard ops (Gather, Cast, Mul), so it runs on every
  execution provider; 38.9 MB for gte. Every element within max|row|/254 of the original.
A DequantizeLinear in front of a Gather would rebuild the whole fp32 table on every run; both schemes
dequantize only the gathered rows.

The rows of the special tokens the tokenizer puts in every input ([CLS], [SEP], padding) are kept exact:
their rounding error would be the same in every input, a constant offset shared by all embeddings, which
dominates on a random-weight model. The exact rows cost S rows of float residual and no vocabulary-sized table:
    out = dequantized rows + Cast(Equal(ids[..., None], kept_ids)) @ residual
where residual holds (exact - dequantized) for the S kept rows. Measured drops: docs/quantization.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .graph import (
    MIN_TABLE_ELEMENTS,
    consumers,
    embedding_gathers,
    import_onnx,
    initializers,
)


def quantize_rows_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: (q int8 (V, D), scale float32 (V, 1)) with table ~= q * scale."""
    table = np.asarray(table, dtype=np.float32)
    peak = np.max(np.abs(table), axis=1, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    return q, scale


def quantize_rows_4bit(table: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 4-bit blocks of `block_size` along each row (GatherBlockQuantized's layout): codes uint8
    (V, D) in 0..15, scales float32 (V, D / block_size), zero points uint8 (V, D / block_size)."""
    table = np.asarray(table, dtype=np.float32)
    vocab, dim = table.shape
    if dim % block_size:
        raise ValueError(f"a 4-bit table needs its width ({dim}) to be a multiple of the block size {block_size}")
    blocks = table.reshape(vocab, dim // block_size, block_size)
    lo = np.minimum(blocks.min(axis=2), 0.0)
    hi = np.maximum(blocks.max(axis=2), 0.0)
    scale = ((hi - lo) / 15.0).astype(np.float32)
    safe = np.where(scale == 0, 1.0, scale).astype(np.float32)
    zero = np.where(scale == 0, 8, np.clip(np.rint(-lo / safe), 0, 15)).astype(np.uint8)
    codes = np.clip(np.rint(blocks / safe[..., None]) + zero[..., None], 0, 15).astype(np.uint8)
    return codes.reshape(vocab, dim), scale, zero


def dequantize_rows_4bit(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    vocab, dim = codes.shape
    blocks = codes.reshape(vocab, scale.shape[1], -1).astype(np.float32) - zero[..., None].astype(np.float32)
    return (blocks * scale[..., None]).reshape(vocab, dim).astype(np.float32)


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """uint8 values 0..15 (..., even width) -> two per byte, the lower-indexed one in the low nibble."""
    return (values[..., 0::2] & 0xF) | ((values[..., 1::2] & 0xF) << 4)


def exact_rows_of(table: np.ndarray, dequantized: np.ndarray, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (S,), residual float32 (S, D)): the kept rows and what makes them exact."""
    vocab = table.shape[0]
    rows = sorted({int(r) for r in rows if 0 <= int(r) < vocab})
    ids = np.array(rows, dtype=np.int64)
    return ids, (table[ids] - dequantized[ids]).astype(np.float32).reshape(len(rows), table.shape[1])


def _tables_to_quantize(model, min_elements: int) -> tuple[set[str], list[str]]:
    """(Gather node names to rewrite, table names left in float because a MatMul shares them)."""
    users = consumers(model)
    chosen: set[str] = set()
    kept: list[str] = []
    for use in embedding_gathers(model, min_elements):
        if any(node.op_type != "Gather" for node in users[use.weight]):
            kept.append(use.weight)  # tied to a MatMul (an LM head): quantizing would keep both copies
        else:
            chosen.add(use.node)
    return chosen, kept


def _table_names(table: str) -> dict[str, str]:
    return {k: f"{table}_{k}" for k in ("int8", "row_scale", "q4", "scales", "zero_points",
                                         "exact_ids", "exact_residual", "last_axis")}


def _quantized_table(values: np.ndarray, bits: int, block_size: int, names: dict[str, str],
                     exact_rows: Sequence[int]) -> tuple[list, list[int]]:
    """(initializers replacing the float table, the token ids whose rows are kept exact)."""
    from onnx import TensorProto, helper, numpy_helper

    if bits == 8:
        q, scale = quantize_rows_int8(values)
        dequantized = q.astype(np.float32) * scale.astype(np.float32)
        arrays = [numpy_helper.from_array(q, names["int8"]), numpy_helper.from_array(scale, names["row_scale"])]
    else:
        codes, scale, zero = quantize_rows_4bit(values, block_size)
        dequantized = dequantize_rows_4bit(codes, scale, zero)
        arrays = [
            helper.make_tensor(names["q4"], TensorProto.UINT4, list(codes.shape),
                               _pack_nibbles(codes).tobytes(), raw=True),
            numpy_helper.from_array(scale, names["scales"]),
            helper.make_tensor(names["zero_points"], TensorProto.UINT4, list(zero.shape),
                               _pack_nibbles(zero).tobytes(), raw=True),
        ]
    kept_ids, residual = exact_rows_of(values, dequantized, exact_rows)
    if len(kept_ids):
        arrays += [numpy_helper.from_array(kept_ids, names["exact_ids"]),
                   numpy_helper.from_array(residual, names["exact_residual"]),
                   numpy_helper.from_array(np.array([-1], dtype=np.int64), names["last_axis"])]
    return arrays, [int(r) for r in kept_ids]


def _lookup_nodes(model, bits: int, block_size: int, names: dict[str, str], ids: str, out: str, deq: str,
                  prefix: str) -> list:
    """The nodes that gather and dequantize only the looked-up rows into `deq`."""
    from onnx import TensorProto, helper

    if bits == 8:
        return [
            helper.make_node("Gather", [names["int8"], ids], [out + "_q"], name=prefix + "_rows_int8", axis=0),
            helper.make_node("Cast", [out + "_q"], [out + "_qf"], name=prefix + "_rows_float", to=TensorProto.FLOAT),
            helper.make_node("Gather", [names["row_scale"], ids], [out + "_scale"], name=prefix + "_row_scale",
                             axis=0),
            helper.make_node("Mul", [out + "_qf", out + "_scale"], [deq], name=prefix + "_dequantize"),
        ]
    # onnx's shape inference does not know the contrib op: declare its output float32 so type inference
    # (the fp16 converter's included) goes on past it.
    model.graph.value_info.append(helper.make_tensor_value_info(deq, TensorProto.FLOAT, None))
    return [helper.make_node(
        "GatherBlockQuantized", [names["q4"], ids, names["scales"], names["zero_points"]], [deq],
        name=prefix + "_rows_4bit", domain="com.microsoft", gather_axis=0, quantize_axis=1,
        block_size=block_size)]


def _exact_row_nodes(names: dict[str, str], ids: str, out: str, deq: str, prefix: str, opset: int) -> list:
    """out = deq + Cast(Equal(ids[..., None], kept_ids)) @ residual."""
    from onnx import TensorProto, helper

    if opset >= 13:
        unsqueeze = helper.make_node("Unsqueeze", [out + "_ids64", names["last_axis"]], [out + "_ids_col"],
                                     name=prefix + "_ids_column")
    else:
        unsqueeze = helper.make_node("Unsqueeze", [out + "_ids64"], [out + "_ids_col"],
                                     name=prefix + "_ids_column", axes=[-1])
    return [
        helper.make_node("Cast", [ids], [out + "_ids64"], name=prefix + "_ids_int64", to=TensorProto.INT64),
        unsqueeze,
        helper.make_node("Equal", [out + "_ids_col", names["exact_ids"]], [out + "_is_kept"],
                         name=prefix + "_is_kept_row"),
        helper.make_node("Cast", [out + "_is_kept"], [out + "_kept"], name=prefix + "_kept_float",
                         to=TensorProto.FLOAT),
        helper.make_node("MatMul", [out + "_kept", names["exact_residual"]], [out + "_fix"],
                         name=prefix + "_exact_rows"),
        helper.make_node("Add", [deq, out + "_fix"], [out], name=prefix + "_with_exact_rows"),
    ]


def quantize_embedding_tables(
    model, exact_rows: Sequence[int] = (), min_elements: int = MIN_TABLE_ELEMENTS, bits: int = 8,
    block_size: int = 32,
) -> dict[str, Any]:
    """Rewrite the token embedding table(s) in place; returns the recipe entry (what was done).

    bits 8: int8 rows, one float32 scale per row (Gather, Cast, Mul: standard ops).
    bits 4: asymmetric 4-bit blocks of `block_size` per row, float32 scales (com.microsoft
    GatherBlockQuantized, which dequantizes only the rows it gathers).
    Either way the special-token rows are made exact by adding their residual where the id matches:
        out += Cast(Equal(ids[..., None], kept_ids)) @ residual        (S kept rows: no vocab-sized table)
    """
    if bits not in (4, 8):
        raise ValueError(f"embedding tables are quantized to 8 or 4 bits, not {bits}")
    onnx = import_onnx()
    from onnx import numpy_helper

    inits = initializers(model)
    chosen, kept = _tables_to_quantize(model, min_elements)
    note = None
    if bits == 4 and any(use.shape[1] % block_size for use in embedding_gathers(model, min_elements)
                         if use.node in chosen):
        bits, note = 8, f"table width not a multiple of {block_size}: 8 bits instead of 4"
    replaced: dict[str, Any] = {}
    exact: list[int] = []
    new_nodes = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    for node in model.graph.node:
        if node.name not in chosen:
            new_nodes.append(node)
            continue
        table, ids, out, prefix = node.input[0], node.input[1], node.output[0], node.name
        names = _table_names(table)
        if table not in replaced:
            values = numpy_helper.to_array(inits[table])
            arrays, exact = _quantized_table(values, bits, block_size, names, exact_rows)
            model.graph.initializer.extend(arrays)
            model.graph.initializer.remove(inits[table])
            replaced[table] = list(values.shape)
        deq = out + "_deq" if exact else out
        new_nodes += _lookup_nodes(model, bits, block_size, names, ids, out, deq, prefix)
        if exact:
            new_nodes += _exact_row_nodes(names, ids, out, deq, prefix, opset)
    model.graph.ClearField("node")
    model.graph.node.extend(new_nodes)
    if bits == 4 and replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    scheme = ("int8 symmetric, one float32 scale per row (Gather, Cast, Mul: standard ops)" if bits == 8 else
              f"4-bit asymmetric, blocks of {block_size} per row, float32 scales (com.microsoft GatherBlockQuantized)")
    return {
        "scheme": scheme,
        "bits": bits,
        "block_size": block_size if bits == 4 else None,
        "tables": replaced,
        "rows_kept_exact": exact,
        "kept_float": kept,
        **({"note": note} if note else {}),
    }


def special_token_rows(tokenizer_info: dict[str, Any]) -> list[int]:
    """Token ids the manifest names (cls/sep/pad/...): the rows present in every input."""
    return sorted({int(v) for k, v in tokenizer_info.items() if k.endswith("_token_id") and isinstance(v, int)})
