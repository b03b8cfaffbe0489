"""ModernBERT config.json + safetensors tensors -> the numpy Parts the graph writer and the reference take.

The same Parts export/modernbert.py reads from a torch model: Wqkv split into q, k, v; Wi split into its
input and gate halves; norms without bias unless norm_bias; rotary inv_freq per layer kind from its rope
theta, computed as transformers' "default" rope type does (attention scaling 1). Fields config.json may
omit take transformers' ModernBertConfig defaults.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .checkpoint_meta import config_value
from .modernbert_graph import Layer, Linear, ModernBertExportError, Norm, Parts, activation_name
from .safetensors_io import CheckpointFormatError
from .weights import Weights

# transformers' ModernBertConfig defaults for the fields read here
DEFAULTS = {
    "norm_eps": 1e-5,
    "norm_bias": False,
    "hidden_activation": "gelu",
    "local_attention": 128,
    "global_attn_every_n_layers": 3,
    "global_rope_theta": 160_000.0,
    "local_rope_theta": 10_000.0,
    "attention_bias": False,
    "mlp_bias": False,
    "classifier_pooling": "cls",
    "classifier_activation": "gelu",
    "classifier_bias": False,
}
KINDS = {"full_attention": "global", "sliding_attention": "local"}
THETA_KEYS = {"full_attention": "global_rope_theta", "sliding_attention": "local_rope_theta"}


def setting(config: dict, key: str):
    return config_value(config, key, DEFAULTS.get(key))


def layer_types(config: dict) -> list[str]:
    """Per-layer attention type: config's layer_types, else every n-th layer global (n from the config)."""
    count = int(config["num_hidden_layers"])
    types = config.get("layer_types")
    if types is None:
        every = int(setting(config, "global_attn_every_n_layers"))
        types = ["sliding_attention" if i % every else "full_attention" for i in range(count)]
    unknown = sorted(set(types) - set(KINDS))
    if unknown:
        raise ModernBertExportError(f"layer types {unknown} are not supported (supported: {sorted(KINDS)})")
    if len(types) != count:
        raise ModernBertExportError(f"layer_types lists {len(types)} layers but num_hidden_layers is {count}")
    return list(types)


def default_inv_freq(theta: float, head_dim: int) -> np.ndarray:
    """1 / theta ** (arange(0, d, 2) / d) as transformers computes it in float32: the exponent in float32,
    the power correctly rounded to float32, then the reciprocal in float32 (bit-identical for d = 64)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    power = (np.float64(theta) ** exponent.astype(np.float64)).astype(np.float32)
    return (np.float32(1.0) / power).astype(np.float32)


def rope_frequencies(config: dict, head_dim: int, used: set[str]) -> dict[str, tuple[np.ndarray, float]]:
    """kind -> (inv_freq, attention scaling) from rope_parameters (new configs) or global/local_rope_theta
    and rope_scaling (older ones)."""
    parameters = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    frequencies = {}
    for layer_type in sorted(used):
        params = {**scaling, **(parameters.get(layer_type) or {})}
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            raise ModernBertExportError(f"rope type {rope_type!r} of {layer_type} layers is not supported (default)")
        theta = params.get("rope_theta", config_value(config, THETA_KEYS[layer_type],
                                                      DEFAULTS[THETA_KEYS[layer_type]]))
        frequencies[KINDS[layer_type]] = (default_inv_freq(float(theta), head_dim), 1.0)
    return frequencies


def _sizes(config: dict) -> tuple[int, int, int, int]:
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        inter = int(config["intermediate_size"])
    except KeyError as exc:
        raise ModernBertExportError(f"config.json has no {exc.args[0]!r}") from None
    if hidden % heads or (hidden // heads) % 2:
        raise ModernBertExportError(f"hidden_size {hidden} / {heads} heads must give an even head size")
    return hidden, heads, hidden // heads, inter


def _layer(w: Weights, config: dict, index: int, kind: str, hidden: int, inter: int) -> Layer:
    p = f"layers.{index}."
    attn_bias, mlp_bias, norm_bias = (bool(setting(config, k)) for k in ("attention_bias", "mlp_bias", "norm_bias"))
    wqkv = w.linear(p + "attn.Wqkv", (3 * hidden, hidden), attn_bias)
    wi = w.linear(p + "mlp.Wi", (2 * inter, hidden), mlp_bias)
    return Layer(
        kind=kind,
        # layer 0's attn_norm is an Identity: no weight in the checkpoint
        attn_norm=w.norm(p + "attn_norm", hidden, norm_bias) if w.has(p + "attn_norm.weight") else None,
        q=wqkv.columns(0, hidden),
        k=wqkv.columns(hidden, 2 * hidden),
        v=wqkv.columns(2 * hidden, 3 * hidden),
        out=w.linear(p + "attn.Wo", (hidden, hidden), attn_bias).as_linear(),
        mlp_norm=w.norm(p + "mlp_norm", hidden, norm_bias),
        mlp_in=wi.columns(0, inter),
        mlp_gate=wi.columns(inter, 2 * inter),
        mlp_out=w.linear(p + "mlp.Wo", (hidden, inter), mlp_bias).as_linear(),
    )


def _head(w: Weights, config: dict, hidden: int) -> dict[str, Any]:
    pooling = setting(config, "classifier_pooling")
    if pooling not in ("mean", "cls"):
        raise ModernBertExportError(f"classifier_pooling {pooling!r} is not supported (mean, cls)")
    classifier = w.raw("classifier.weight")
    if classifier.ndim != 2 or classifier.shape[1] != hidden:
        raise CheckpointFormatError(f"{w.where}: classifier.weight has shape {list(classifier.shape)}, expected "
                                    f"[num_labels, {hidden}]")
    norm_bias = bool(setting(config, "norm_bias"))
    return {
        "pooling": pooling,
        "dense": w.linear("head.dense", (hidden, hidden), bool(setting(config, "classifier_bias"))).as_linear(),
        "activation": activation_name(setting(config, "classifier_activation")),
        "norm": w.norm("head.norm", hidden, norm_bias),
        "classifier": w.linear("classifier", (classifier.shape[0], hidden), w.has("classifier.bias")).as_linear(),
    }


def modernbert_parts(config: dict, tensors: dict[str, np.ndarray], task: str, where: str = "the checkpoint") -> Parts:
    """Parts of a ModernBertModel (task "embedding") or ModernBertForSequenceClassification ("rerank")."""
    hidden, heads, head_dim, inter = _sizes(config)
    w = Weights(tensors, where, base_key="embeddings.tok_embeddings.weight")
    types = layer_types(config)
    window = int(setting(config, "local_attention")) // 2  # = config.sliding_window: the band |q - k| <= it
    if "sliding_attention" in types and window < 1:
        raise ModernBertExportError(f"sliding window {window} must be at least 1")
    norm_bias = bool(setting(config, "norm_bias"))
    embeddings = w.base("embeddings.tok_embeddings.weight")
    if embeddings.ndim != 2 or embeddings.shape[1] != hidden:
        raise CheckpointFormatError(f"{where}: embeddings.tok_embeddings.weight has shape {list(embeddings.shape)}, "
                                    f"expected [vocab_size, {hidden}]")
    parts = Parts(
        hidden=hidden,
        heads=heads,
        head_dim=head_dim,
        eps=float(setting(config, "norm_eps")),
        window=window,
        activation=activation_name(setting(config, "hidden_activation")),
        embeddings=np.ascontiguousarray(embeddings, dtype=np.float32),
        embed_norm=w.norm("embeddings.norm", hidden, norm_bias),
        layers=[_layer(w, config, i, KINDS[t], hidden, inter) for i, t in enumerate(types)],
        final_norm=w.norm("final_norm", hidden, norm_bias),
        rope=rope_frequencies(config, head_dim, set(types)),
    )
    if task == "rerank":
        parts.head = _head(w, config, hidden)
    return parts
