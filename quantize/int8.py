"""int8 for x86 CPUs: linear layers as u8 x s8 integer GEMMs, the embedding table in 4-bit blocks.

Every linear layer gets per-channel int8 weights and activations quantized per token (plain ops in front of
MatMulIntegerToFloat: per_token.py), so a vector never depends on the other texts of its batch and outlier
tokens do not coarsen the rest. GEMMs that read one tensor share its quantization, and the writer's fused
q/k/v and GeGLU GEMMs become one GEMM per part (no Split copy). Activations stay uint8 around 128: MLAS's
s8 x s8 kernel is far slower than its u8 x s8 one. The 4-bit embedding table (embedding.py) keeps the gte file
under 150 MB. Attention is written as plain ops (attention.py), so every x86 CPU computes the same vectors.
The file is saved as ORT's CPU EP optimises it and loads with optimisations off (graph.save_variant). The
measurements and trials behind each choice: docs/quantization.md.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gte_onnx.errors import missing_dependency

from . import graph
from .attention import plain_attention
from .embedding import quantize_embedding_tables
from .per_token import per_token_int8

METHODS = ("dynamic", "static")
ROLES = ("square", "expand", "contract")
PER_TOKEN_KERNELS = ("integer", "nbits")
ATTENTION_FORMS = ("plain", "fused")


@dataclass(frozen=True)
class Int8Options:
    method: str = "dynamic"
    per_channel: bool = True
    # 7-bit weights: protects AVX2 CPUs without VNNI from u8 x s8 saturation (vpmaddubsw).
    reduce_range: bool = False
    min_weight_elements: int = graph.MIN_WEIGHT_ELEMENTS
    quantize_embeddings: bool = True
    # Linear layers left in float by role (see graph.WeightUse.role): "square", "expand", "contract".
    float_roles: tuple[str, ...] = ()
    # SmoothQuant migration strength (None: off; it did not help on MiniLM). Needs calibration text.
    smooth_alpha: float | None = None
    # Layers whose activations get one scale per token instead of one per batch: every role by default,
    # so no vector depends on its batch-mates, and one outlier token ([CLS]/[SEP] rows reach 6x the median
    # row's maximum in MiniLM) no longer coarsens every other token. The rest use per-tensor dynamic scales.
    per_token_roles: tuple[str, ...] = ROLES
    # How those layers quantize per token: "integer" (plain ops + MatMulIntegerToFloat, per_token.py) or
    # "nbits" (MatMulNBits, 8-bit weights in blocks of block_size, accuracy level 4).
    per_token_kernel: str = "integer"
    # With the integer kernel: a fused GEMM whose output only feeds a Split (q/k/v, the GeGLU halves)
    # becomes one GEMM per part over one shared quantization of its input, and the Split goes.
    split_fused: bool = True
    block_size: int = 128
    # Token embedding table: 8 bits (a scale per row) or 4 bits (blocks of embedding_block_size).
    embedding_bits: int = 4
    embedding_block_size: int = 32
    # "plain": attention as plain ops (attention.py), so the file computes the same vectors on every x86
    # CPU, VNNI or not; "fused": ORT's attention kernels, faster on long inputs but ISA-dependent by an ulp,
    # which per-token quantization turns into 1e-3-sized moves (cost and figures: docs/cpu-support.md).
    attention: str = "plain"

    def __post_init__(self):
        if self.attention not in ATTENTION_FORMS:
            raise ValueError(f"attention must be one of {ATTENTION_FORMS}, got {self.attention!r}")
        if self.per_token_kernel not in PER_TOKEN_KERNELS:
            raise ValueError(f"per_token_kernel must be one of {PER_TOKEN_KERNELS}, got {self.per_token_kernel!r}")
        if self.method not in METHODS:
            raise ValueError(f"int8 method must be one of {METHODS}, got {self.method!r}")
        unknown = (set(self.float_roles) | set(self.per_token_roles)) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown layer role(s) {sorted(unknown)}; roles are {', '.join(ROLES)}")


def _ort_quantization():
    try:
        from onnxruntime import quantization
    except ImportError as exc:
        raise missing_dependency(exc.name or "onnxruntime", "quantize", "int8 quantization") from None
    return quantization


def make_int8(
    src: str | Path,
    dst: str | Path,
    options: Int8Options = Int8Options(),
    calibration_feeds: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None,
    exact_rows: Sequence[int] = (),
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Write the int8 model of `src` to `dst`; returns (recipe, external data files).

    `exact_rows`: token ids whose embedding rows stay exact (the special tokens in every input).
    """
    graph.import_onnx(), _ort_quantization()  # a missing dependency is named before any work
    model = graph.load_model(src)
    prepared = graph.prepare(model)
    table = (quantize_embedding_tables(model, exact_rows, bits=options.embedding_bits,
                                       block_size=options.embedding_block_size)
             if options.quantize_embeddings else None)
    selected, kept = _select_matmuls(model, options, src)
    smoothing = _smooth(model, selected, options, calibration_feeds)
    per_token = [u for u in selected if u.role in options.per_token_roles]
    if per_token and options.per_token_kernel == "nbits":
        _blockwise_8bit(model, per_token, options.block_size)
    elif per_token:
        per_token_int8(model, per_token, options.per_channel, options.split_fused)
    selected = [u for u in selected if u not in per_token]
    with tempfile.TemporaryDirectory() as tmp:
        result, activations = _quantize_with_ort(model, selected, options, calibration_feeds, Path(tmp))
    if per_token:
        roles = ", ".join(options.per_token_roles)
        inside = (f"per token and block of {options.block_size} inside MatMulNBits ({roles})"
                  if options.per_token_kernel == "nbits" else f"per token, symmetric uint8 ({roles})")
        activations = f"{activations}; {inside}" if activations else inside
    attention = plain_attention(result).record() if options.attention == "plain" else {"form": "fused"}
    data_files = graph.save_variant(result, dst, cpu_optimized=True)
    saved = graph.import_onnx().load(str(dst), load_external_data=False)
    recipe = {
        "kind": "int8",
        "method": options.method,
        "op_types_quantized": ["MatMul"] + (["Gather"] if table and table["tables"] else []),
        "weights": "int8 symmetric " + ("per output channel" if options.per_channel else "per tensor"),
        "per_channel": options.per_channel,
        "reduce_range": options.reduce_range,
        "activations": activations,
        "matmuls_quantized": len(selected) + len(per_token),
        "per_token_matmuls": _per_token_record(options, len(per_token)) if per_token else None,
        "float_roles": list(options.float_roles),
        "min_weight_elements": options.min_weight_elements,
        "nodes_kept_float": kept,
        "embedding_table": table,
        "smoothing": smoothing,
        "graph_changes": prepared,
        "attention": attention,
        "op_counts": graph.op_counts(saved),
        # Saved as ORT's CPU EP optimises it (graph.save_variant): loaded with optimisations off.
        "session_optimization": "none",
        "tools": graph.tool_versions(),
    }
    return recipe, data_files


def _per_token_record(options: Int8Options, count: int) -> dict[str, Any]:
    if options.per_token_kernel == "nbits":
        return {"roles": list(options.per_token_roles), "count": count, "op": "MatMulNBits bits=8 accuracy_level=4",
                "block_size": options.block_size}
    return {"roles": list(options.per_token_roles), "count": count,
            "op": "ReduceMax(|x|) + QuantizeLinear + com.microsoft MatMulIntegerToFloat, int8 weights "
                  + ("per output channel" if options.per_channel else "per tensor")}


def _select_matmuls(model, options: Int8Options, src) -> tuple[list[graph.WeightUse], list[str]]:
    """(the linear layers to quantize, the names of the weight MatMul/Gemm nodes left in float)."""
    uses = graph.weight_matmuls(model, ("MatMul", "Gemm"))
    selected = [u for u in uses if u.op_type == "MatMul" and u.elements >= options.min_weight_elements
                and u.role not in options.float_roles]
    if not selected:
        raise ValueError(f"{src} has no MatMul with a float weight of >= {options.min_weight_elements} elements")
    return selected, sorted(u.node for u in uses if u not in selected)


def _smooth(model, selected, options: Int8Options, calibration_feeds) -> dict[str, Any] | None:
    if options.smooth_alpha is None:
        return None
    if calibration_feeds is None:
        raise ValueError("int8 smoothing needs calibration_feeds (real text); pass smooth_alpha=None to skip it")
    from .smooth import smooth_for_int8

    return smooth_for_int8(model, selected, calibration_feeds(), options.smooth_alpha)


def _quantize_with_ort(model, selected, options: Int8Options, calibration_feeds, tmp: Path):
    """(the model with `selected` quantized by onnxruntime's quantizer, how its activations are quantized)."""
    onnx = graph.import_onnx()
    q = _ort_quantization()
    out = tmp / "int8.onnx"
    if not selected:  # every layer went to the per-token kernel
        graph.save_model(model, out)
        return graph.load_model(out), None
    extra = {
        # ORT-optimised graphs defeat the quantizer's shape inference; unknown tensors are float here.
        "DefaultTensorType": onnx.TensorProto.FLOAT,
        "MatMulConstBOnly": True,
    }
    staged = tmp / "prepared.onnx"
    graph.save_model(model, staged)
    common = dict(
        nodes_to_quantize=[u.node for u in selected],
        op_types_to_quantize=["MatMul"],
        per_channel=options.per_channel,
        reduce_range=options.reduce_range,
        weight_type=q.QuantType.QInt8,
        use_external_data_format=staged.stat().st_size >= graph.SINGLE_FILE_LIMIT,
    )
    if options.method == "dynamic":
        with graph.quiet_quantizer_logs():
            q.quantize_dynamic(str(staged), str(out), extra_options=extra, **common)
        activations = "uint8 per tensor, quantized at run time (DynamicQuantizeLinear)"
    else:
        if calibration_feeds is None:
            raise ValueError("int8 method 'static' needs calibration_feeds (real text)")
        with graph.quiet_quantizer_logs():
            q.quantize_static(
                str(staged), str(out), _Reader(calibration_feeds()),
                quant_format=q.QuantFormat.QDQ, activation_type=q.QuantType.QUInt8,
                calibrate_method=q.CalibrationMethod.MinMax,
                extra_options={**extra, "ActivationSymmetric": False}, **common,
            )
        activations = "uint8 per tensor, scales calibrated on real text (QDQ, MinMax)"
    return graph.load_model(out), activations


def _blockwise_8bit(model, uses, block_size: int) -> None:
    """MatMulNBits (8-bit symmetric weights, accuracy level 4: int8 compute) for `uses`, in place."""
    from .q4 import matmul_nbits

    matmul_nbits(model, uses, 8, block_size, True, 4)


class _Reader:
    """onnxruntime's CalibrationDataReader over an iterable of feeds."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # part of the reader protocol; one pass is all MinMax needs
        pass


def calibration_batches(
    folder: str | Path, inputs: Sequence[str], max_length: int, pad_token_id: int,
    texts: Sequence[str], batch_size: int = 16, length_cap: int = 256,
) -> list[dict[str, np.ndarray]]:
    """Feeds of real text for static calibration, padded per batch like the runtime pads."""
    from gte_onnx.inference.batching import pad_batch
    from gte_onnx.inference.tokenize import TextTokenizer

    tok = TextTokenizer.from_folder(folder, min(max_length, length_cap), pad_token_id)
    encoded = tok.encode(list(texts))
    feeds = []
    for start in range(0, len(encoded.ids), batch_size):
        ids, mask = pad_batch(encoded.ids[start:start + batch_size], pad_token_id)
        width = ids.shape[1]
        available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
                     "position_ids": np.broadcast_to(np.arange(width, dtype=np.int64), ids.shape).copy()}
        feeds.append({name: available[name] for name in inputs})
    return feeds
