"""ModernBERT from a transformers model (torch) -> the windowed-attention ONNX graph.

Only the weight reading lives here: the graph itself is written from numpy arrays by
gte_onnx.convert.modernbert_graph, which the torch-free converter calls too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gte_onnx.convert.modernbert_graph import (
    Layer,
    Linear,
    ModernBertExportError,
    Norm,
    Parts,
    activation_name,
    build_graph,
    check_task,
    write_graph,
)
from gte_onnx.errors import missing_dependency

# The oldest transformers whose ModernBERT has what _extract reads: one rotary module with per-layer-type
# inv_freq buffers (full_attention_inv_freq, sliding_attention_inv_freq) and attention_type on each layer.
# Before 5.0 every attention layer owned its rotary module. pyproject.toml's [export] floor says the same.
MIN_TRANSFORMERS = "5.0.0"


def _np(tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu").float().numpy())


def _linear(module, rows: slice | None = None) -> Linear:
    weight = module.weight if rows is None else module.weight[rows]
    bias = None
    if module.bias is not None:
        bias = _np(module.bias if rows is None else module.bias[rows])
    return Linear(np.ascontiguousarray(_np(weight).T), bias)


def _norm(module) -> Norm:
    return Norm(_np(module.weight), None if module.bias is None else _np(module.bias))


def _rope_frequencies(base, kind_of_type: dict[str, str]) -> dict[str, tuple[np.ndarray, float]]:
    """inv_freq and attention scaling of each layer kind, read from the model's own rotary module.

    The graph computes cos/sin of position * inv_freq itself (as the module does: one fp32 product per
    element), so no (max_positions x head_dim/2) table is stored: 4 MB saved for gte, in every variant."""
    rotary = base.rotary_emb
    frequencies = {}
    for layer_type, kind in kind_of_type.items():
        rope_type = getattr(rotary, "rope_type", {}).get(layer_type, "default")
        if rope_type != "default":
            raise ModernBertExportError(f"rope type {rope_type!r} of {layer_type} layers is not supported")
        inv_freq = _np(getattr(rotary, f"{layer_type}_inv_freq")).reshape(-1)
        scaling = float(getattr(rotary, f"{layer_type}_attention_scaling", 1.0))
        frequencies[kind] = (inv_freq.astype(np.float32), scaling)
    return frequencies


def _extract(hf_model, task: str) -> Parts:
    base = hf_model.model if task == "rerank" else hf_model
    config = base.config
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    if hidden % heads or (hidden // heads) % 2:
        raise ModernBertExportError(f"hidden_size {hidden} / {heads} heads must give an even head size")
    head_dim = hidden // heads
    kinds = {"full_attention": "global", "sliding_attention": "local"}
    layer_types = [layer.attention_type for layer in base.layers]
    unknown = sorted(set(layer_types) - set(kinds))
    if unknown:
        raise ModernBertExportError(f"layer types {unknown} are not supported")
    # local_attention is the whole window; transformers masks |q - k| > local_attention // 2 (newer releases
    # also name the half config.sliding_window, which 5.0 lacks).
    window = int(config.local_attention) // 2
    if "sliding_attention" in layer_types and window < 1:
        raise ModernBertExportError(f"sliding window {window} must be at least 1")
    inter = int(config.intermediate_size)
    layers = []
    for index, layer in enumerate(base.layers):
        attn, mlp = layer.attn, layer.mlp
        layers.append(
            Layer(
                kind=kinds[layer_types[index]],
                attn_norm=_norm(layer.attn_norm) if hasattr(layer.attn_norm, "weight") else None,
                q=_linear(attn.Wqkv, slice(0, hidden)),
                k=_linear(attn.Wqkv, slice(hidden, 2 * hidden)),
                v=_linear(attn.Wqkv, slice(2 * hidden, 3 * hidden)),
                out=_linear(attn.Wo),
                mlp_norm=_norm(layer.mlp_norm),
                mlp_in=_linear(mlp.Wi, slice(0, inter)),
                mlp_gate=_linear(mlp.Wi, slice(inter, 2 * inter)),
                mlp_out=_linear(mlp.Wo),
            )
        )
    used = {t: kinds[t] for t in set(layer_types)}
    parts = Parts(
        hidden=hidden,
        heads=heads,
        head_dim=head_dim,
        eps=float(config.norm_eps),
        window=window,
        activation=activation_name(config.hidden_activation),
        embeddings=_np(base.embeddings.tok_embeddings.weight),
        embed_norm=_norm(base.embeddings.norm),
        layers=layers,
        final_norm=_norm(base.final_norm),
        rope=_rope_frequencies(base, used),
    )
    if task == "rerank":
        pooling = hf_model.config.classifier_pooling
        if pooling not in ("mean", "cls"):
            raise ModernBertExportError(f"classifier_pooling {pooling!r} is not supported (mean, cls)")
        parts.head = {
            "pooling": pooling,
            "dense": _linear(hf_model.head.dense),
            "activation": activation_name(hf_model.config.classifier_activation),
            "norm": _norm(hf_model.head.norm),
            "classifier": _linear(hf_model.classifier),
        }
    return parts


def _check_model(hf_model, task: str) -> None:
    check_task(task)
    expected = "ModernBertForSequenceClassification" if task == "rerank" else "ModernBertModel"
    if type(hf_model).__name__ != expected:
        raise ModernBertExportError(f"task {task!r} needs a {expected}, got {type(hf_model).__name__}")


def installed_transformers() -> str:
    import transformers

    return transformers.__version__


def check_transformers_version(installed: str | None = None) -> None:
    """A typed error naming the installed transformers when it is older than MIN_TRANSFORMERS."""
    installed = installed or installed_transformers()
    from packaging.version import Version

    if Version(installed) < Version(MIN_TRANSFORMERS):
        raise ModernBertExportError(
            f"transformers {installed} is installed; exporting ModernBERT needs transformers >= {MIN_TRANSFORMERS} "
            f"(its per-layer-type rotary embeddings): pip install -U 'transformers>={MIN_TRANSFORMERS}'"
        )


def _parts(hf_model, task: str) -> Parts:
    _check_model(hf_model, task)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise missing_dependency("torch", "export", "Exporting ModernBERT from PyTorch") from None
    check_transformers_version()
    return _extract(hf_model, task)


def build_modernbert_graph(hf_model, task: str, opset: int | None = None):
    """The windowed-attention graph of a transformers model as an un-optimised ModelProto."""
    return build_graph(_parts(hf_model, task), task, opset)[0]


def export_modernbert(hf_model, task: str, onnx_path: Path, opset: int | None = None) -> dict[str, Any]:
    """Write the windowed-attention ONNX graph of a ModernBertModel (task "embedding") or a
    ModernBertForSequenceClassification (task "rerank") at onnx_path, optimised offline by ORT."""
    return write_graph(_parts(hf_model, task), task, Path(onnx_path), opset)
