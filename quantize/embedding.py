"""8-bit token embedding table: Gather(int8 rows) * Gather(per-row scale), special-token rows exact.

gte's 50368x768 table is 155 MB in fp32, more than the int8 size target leaves for it. A 4-bit table
(GatherBlockQuantized) dropped centred cosine to 0.2-0.3 in a trial here; 8 bits with one scale per row
keeps every element within max|row|/254 of the original. Only the looked-up rows are dequantized (a
DequantizeLinear in front of the Gather would rebuild the fp32 table on every run), with standard ONNX
ops, so the pattern runs on every execution provider.

The rows of the special tokens the tokenizer puts in every input ([CLS], [SEP], padding) are kept exact:
their rounding error would be the same in every input, a constant offset shared by all embeddings. On a
random-weight model, where the output is mostly the [CLS] row itself, that offset alone dropped centred
cosine to 0.43 (tiny gte); with the rows exact, 1.0000. The exact rows cost one small float table:
    out = Gather(q, ids) * Gather(scale, ids) + Gather(residual, Gather(row_slot, ids))
where residual holds (exact - dequantized) for the kept rows and zeros in slot 0, and row_slot maps
every token id to its slot (0 for ordinary tokens).
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


def exact_row_correction(
    table: np.ndarray, q: np.ndarray, scale: np.ndarray, rows: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(row_slot int32 (V,), residual float32 (1 + len(rows), D)) that make `rows` exact."""
    vocab = table.shape[0]
    rows = sorted({int(r) for r in rows if 0 <= int(r) < vocab})
    slot = np.zeros(vocab, dtype=np.int32)
    residual = np.zeros((1 + len(rows), table.shape[1]), dtype=np.float32)
    for i, row in enumerate(rows, start=1):
        slot[row] = i
        residual[i] = table[row] - q[row].astype(np.float32) * scale[row]
    return slot, residual


def quantize_embedding_tables(
    model, exact_rows: Sequence[int] = (), min_elements: int = MIN_TABLE_ELEMENTS
) -> dict[str, Any]:
    """Rewrite the token embedding table(s) in place; returns the recipe entry (what was done)."""
    import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    inits = initializers(model)
    users = consumers(model)
    chosen: set[str] = set()
    kept: list[str] = []
    for use in embedding_gathers(model, min_elements):
        if any(node.op_type != "Gather" for node in users[use.weight]):
            kept.append(use.weight)  # tied to a MatMul (an LM head): quantizing would keep both copies
        else:
            chosen.add(use.node)

    replaced: dict[str, Any] = {}
    exact: list[int] = []
    new_nodes = []
    for node in model.graph.node:
        if node.name not in chosen:
            new_nodes.append(node)
            continue
        table, ids, out, prefix = node.input[0], node.input[1], node.output[0], node.name
        names = {k: f"{table}_{k}" for k in ("int8", "row_scale", "row_slot", "exact_residual")}
        if table not in replaced:
            values = numpy_helper.to_array(inits[table])
            q, scale = quantize_rows_int8(values)
            slot, residual = exact_row_correction(values, q, scale, exact_rows)
            exact = [int(r) for r in np.flatnonzero(slot)]
            for key, array in (("int8", q), ("row_scale", scale), ("row_slot", slot), ("exact_residual", residual)):
                model.graph.initializer.append(numpy_helper.from_array(array, names[key]))
            model.graph.initializer.remove(inits[table])
            replaced[table] = list(q.shape)
        new_nodes += [
            helper.make_node("Gather", [names["int8"], ids], [out + "_q"], name=prefix + "_rows_int8", axis=0),
            helper.make_node("Cast", [out + "_q"], [out + "_qf"], name=prefix + "_rows_float", to=TensorProto.FLOAT),
            helper.make_node("Gather", [names["row_scale"], ids], [out + "_scale"], name=prefix + "_row_scale", axis=0),
            helper.make_node("Mul", [out + "_qf", out + "_scale"], [out + "_deq"], name=prefix + "_dequantize"),
            helper.make_node("Gather", [names["row_slot"], ids], [out + "_slot"], name=prefix + "_row_slot", axis=0),
            helper.make_node("Gather", [names["exact_residual"], out + "_slot"], [out + "_fix"],
                             name=prefix + "_exact_rows", axis=0),
            helper.make_node("Add", [out + "_deq", out + "_fix"], [out], name=prefix + "_with_exact_rows"),
        ]
    model.graph.ClearField("node")
    model.graph.node.extend(new_nodes)
    return {
        "scheme": "int8 symmetric, one float32 scale per row (Gather, Cast, Mul: standard ops)",
        "bits": 8,
        "tables": replaced,
        "rows_kept_exact": exact,
        "kept_float": kept,
    }


def special_token_rows(tokenizer_info: dict[str, Any]) -> list[int]:
    """Token ids the manifest names (cls/sep/pad/...): the rows present in every input."""
    return sorted({int(v) for k, v in tokenizer_info.items() if k.endswith("_token_id") and isinstance(v, int)})
