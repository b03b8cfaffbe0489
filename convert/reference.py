"""Numpy forward passes of ModernBERT and BERT: the torch-free converter's reference.

They follow transformers' eager code, not the ONNX graph: dense attention over all keys with a mask
(ModernBERT's local layers: the band |q - k| <= window and the key padding; global layers and BERT: the
key padding only), rotary embeddings applied as q * cos + rotate_half(q) * sin, GeGLU, LayerNorm as
mean/variance. The windowed graph's blocks, gathers and folded masks are therefore checked against the
plain definition of the model.
"""

from __future__ import annotations

import numpy as np

from .bert_graph import BertParts
from .modernbert_graph import Linear, Norm, Parts

NEG = -1.0e9  # additive mask; finite, so a padding query whose keys are all masked stays NaN-free
# erfc(z) ~ t * exp(-z^2 + poly(t)), t = 1 / (1 + z / 2): Numerical Recipes' Chebyshev fit (|relative
# error| < 1.2e-7 everywhere), since numpy has no erf and scipy is not a dependency.
_ERFC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
         -0.82215223, 0.17087277)


def erf(x: np.ndarray) -> np.ndarray:
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(t)
    for c in reversed(_ERFC):
        poly = poly * t + c
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0).astype(x.dtype)


def activation(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "gelu":
        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0).astype(x.dtype)))
    if kind == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    if kind == "relu":
        return np.maximum(x, 0)
    raise ValueError(f"unknown activation {kind!r}")


def linear(x: np.ndarray, lin: Linear) -> np.ndarray:
    y = x @ lin.weight_t.astype(x.dtype, copy=False)
    return y if lin.bias is None else y + lin.bias.astype(x.dtype, copy=False)


def layer_norm(x: np.ndarray, norm: Norm, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps) * norm.weight.astype(x.dtype)
    return y if norm.bias is None else y + norm.bias.astype(x.dtype)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray, heads: int) -> np.ndarray:
    """(B, L, D) q, k, v and a (B, 1, L, L) additive bias -> (B, L, D)."""
    b, length, dim = q.shape
    d = dim // heads

    def split(x):
        return x.reshape(b, length, heads, d).transpose(0, 2, 1, 3)

    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d).astype(q.dtype) + bias
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    weights = scores / scores.sum(-1, keepdims=True)
    return (weights @ split(v)).transpose(0, 2, 1, 3).reshape(b, length, dim)


def key_padding(mask: np.ndarray, dtype) -> np.ndarray:
    return ((1.0 - mask.astype(dtype)) * NEG)[:, None, None, :]


def rotate(x: np.ndarray, inv_freq: np.ndarray, scaling: float, heads: int) -> np.ndarray:
    """Rotary embedding of (B, L, D) q or k; cos/sin from float32 position * inv_freq like transformers."""
    b, length, dim = x.shape
    freqs = np.arange(length, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos = (np.cos(emb) * scaling).astype(x.dtype)[None, :, None, :]
    sin = (np.sin(emb) * scaling).astype(x.dtype)[None, :, None, :]
    h = x.reshape(b, length, heads, dim // heads)
    half = h.shape[-1] // 2
    rotated = np.concatenate([-h[..., half:], h[..., :half]], axis=-1)
    return (h * cos + rotated * sin).reshape(b, length, dim)


def modernbert_forward(parts: Parts, ids: np.ndarray, mask: np.ndarray, task: str = "embedding",
                       dtype=np.float32) -> np.ndarray:
    """last_hidden_state (B, L, D), or logits (B, labels) for task "rerank"."""
    p = parts
    length = ids.shape[1]
    x = layer_norm(p.embeddings[ids].astype(dtype), p.embed_norm, p.eps)
    padding = key_padding(mask, dtype)
    distance = np.abs(np.arange(length)[:, None] - np.arange(length)[None, :])
    band = np.where(distance <= p.window, 0.0, NEG).astype(dtype)[None, None]
    for layer in p.layers:
        h = x if layer.attn_norm is None else layer_norm(x, layer.attn_norm, p.eps)
        inv_freq, scaling = p.rope[layer.kind]
        q = rotate(linear(h, layer.q), inv_freq, scaling, p.heads)
        k = rotate(linear(h, layer.k), inv_freq, scaling, p.heads)
        bias = padding + band if layer.kind == "local" else padding
        x = x + linear(attention(q, k, linear(h, layer.v), bias, p.heads), layer.out)
        h = layer_norm(x, layer.mlp_norm, p.eps)
        gated = activation(linear(h, layer.mlp_in), p.activation) * linear(h, layer.mlp_gate)
        x = x + linear(gated, layer.mlp_out)
    x = layer_norm(x, p.final_norm, p.eps)
    if task != "rerank":
        return x
    head = p.head
    if head["pooling"] == "cls":
        pooled = x[:, 0]
    else:
        weights = mask.astype(dtype)[:, :, None]
        pooled = (x * weights).sum(1) / weights.sum(1)
    pooled = layer_norm(activation(linear(pooled, head["dense"]), head["activation"]), head["norm"], p.eps)
    return linear(pooled, head["classifier"])


def bert_forward(parts: BertParts, ids: np.ndarray, mask: np.ndarray, task: str = "embedding",
                 token_type_ids: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
    """last_hidden_state (B, L, D), or logits (B, labels) for task "rerank"."""
    p = parts
    length = ids.shape[1]
    x = p.word[ids].astype(dtype) + p.position[:length].astype(dtype)[None]
    if p.token_type is not None:
        types = np.zeros_like(ids) if token_type_ids is None else token_type_ids
        x = x + p.token_type[types].astype(dtype)
    x = layer_norm(x, p.embed_norm, p.eps)
    padding = key_padding(mask, dtype)
    for layer in p.layers:
        attn = attention(linear(x, layer.q), linear(x, layer.k), linear(x, layer.v), padding, p.heads)
        x = layer_norm(linear(attn, layer.out) + x, layer.attn_norm, p.eps)
        h = linear(activation(linear(x, layer.mlp_in), p.activation), layer.mlp_out)
        x = layer_norm(h + x, layer.mlp_norm, p.eps)
    if task != "rerank":
        return x
    pooled = np.tanh(linear(x[:, 0], p.head["pooler"]))
    return linear(pooled, p.head["classifier"])
