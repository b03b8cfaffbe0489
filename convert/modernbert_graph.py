"""ModernBERT -> ONNX with attention that costs only what the architecture needs.

The graph is written op by op from the transformers weights (no tracing), so every tensor has the shape
chosen here:

- Local (sliding-window) layers: the sequence is cut into blocks of w = local_attention // 2 tokens
  (padded to a multiple of w with Mod + Pad). Block i attends to the 3w keys of blocks i-1, i, i+1 under
  a (blocks, 1, w, 3w) mask holding the band |q - k| <= w and the key padding, so memory and FLOPs grow as
  O(L * w): no tensor of a local layer has two sequence-length dimensions. From opset 23 the op is the
  standard Attention (its CPU kernel runs a float mask in its tiled pass, where MultiHeadAttention with a
  bias runs unfused) on windows gathered as (blocks, 3w, D) rows, no transpose; below opset 23 it is
  com.microsoft MultiHeadAttention on windows gathered straight into its (blocks, heads, 3w, d) layout.
  The CUDA variants get MultiHeadAttention back (quantize.attention.attention_for_cuda): ORT 1.32's CUDA
  Attention is unfused.
- Global layers: MultiHeadAttention too, whose CPU kernel takes its flash path (tiled, O(L) memory) only
  when it gets no mask input. The key padding is therefore folded into the dot product: q gets an extra
  head dimension of 1 and k one of 0 (real token) or -1e6 (padding), so a padded key scores -1e6 * scale
  and gets exactly zero weight, while the real q.k sums are untouched. An If skips the extra dimension
  when the batch has no padding (every single text), where the kernel's head size stays 64.
- Short local layers (up to 3w tokens) attend in one band-masked pass, with the same op choice.
- Rotary embeddings: the opset-23 RotaryEmbedding op (plain ops below opset 23) on cos/sin of
  position * inv_freq computed in the graph for the actual length, with the rotary module's inv_freq, so
  no max_positions-sized table is stored; GeGLU as Gelu(up) * gate; LayerNormalization. ORT's
  extended-level optimisations run once at export and the result is saved (graph_optimize).
- q, k and v are one GEMM over the concatenated weights, and so are the two GeGLU halves, split after
  (Parts keeps them apart): four GEMM nodes per layer instead of seven, at even speed (docs/export.md).

Masked scores use a large finite negative, never -inf: a padding query can see only padding keys, and -inf
would turn its row into NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gte_onnx.errors import GteOnnxError, missing_dependency

from .graph_optimize import save_optimized

TASK_OUTPUTS = {"embedding": "last_hidden_state", "rerank": "logits"}
INPUT_NAMES = ["input_ids", "attention_mask"]
DEFAULT_OPSET = 23  # RotaryEmbedding became a standard op in 23
MIN_OPSET = 17  # LayerNormalization
MASKED = -1.0e6  # score offset of a masked key: exp() of it underflows to exactly 0 in fp32 and fp16
INT64_MAX = np.iinfo(np.int64).max


class ModernBertExportError(GteOnnxError, ValueError):
    """The model or the arguments are outside what this exporter supports."""

    code = "modernbert_export_unsupported"


# --------------------------------------------------------------------------------------------------
# What the graph needs from the transformers model, as numpy arrays


@dataclass
class Linear:
    weight_t: np.ndarray  # (in, out): ready for MatMul
    bias: np.ndarray | None


@dataclass
class Norm:
    weight: np.ndarray
    bias: np.ndarray | None


@dataclass
class Layer:
    kind: str  # "global" | "local"
    attn_norm: Norm | None  # layer 0 has none (Identity)
    q: Linear
    k: Linear
    v: Linear
    out: Linear
    mlp_norm: Norm
    mlp_in: Linear  # first half of Wi
    mlp_gate: Linear  # second half of Wi
    mlp_out: Linear


@dataclass
class Parts:
    hidden: int
    heads: int
    head_dim: int
    eps: float
    window: int  # half window w: a local query sees keys with |q - k| <= w
    activation: str
    embeddings: np.ndarray
    embed_norm: Norm
    layers: list[Layer]
    final_norm: Norm
    rope: dict[str, tuple[np.ndarray, float]]  # kind -> (inv_freq (head_dim/2,), attention scaling)
    head: dict[str, Any] = field(default_factory=dict)  # rerank only


def activation_name(name: str) -> str:
    supported = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
    if name not in supported:
        raise ModernBertExportError(f"activation {name!r} is not supported (supported: {sorted(supported)})")
    return supported[name]


# --------------------------------------------------------------------------------------------------
# A small graph writer


class _Graph:
    """Collects nodes and initializers; every node and tensor name carries the current scope."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self.scope = ""
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.scope}{hint}_{self._count}"

    def weight(self, hint: str, array: np.ndarray) -> str:
        name = f"{self.scope}{hint}"
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, values, dtype=np.int64) -> str:
        """A small shared constant (shapes, axes, scalars)."""
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = f"const_{len(self._consts)}"
            self.initializers.append(self.numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], domain: str = "", **attrs) -> str:
        output = self.name(op_type.lower())
        self.nodes.append(
            self.helper.make_node(op_type, inputs, [output], name=self.name(op_type), domain=domain, **attrs)
        )
        return output

    def branch(self, hint: str, build) -> Any:
        """A subgraph (for If) of the nodes `build()` writes; it reads outer tensors by name."""
        outer, self.nodes = self.nodes, []
        try:
            output = build()
            nodes = self.nodes
        finally:
            self.nodes = outer
        from onnx import TensorProto

        result = self.helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        return self.helper.make_graph(nodes, self.name(hint), [], [result])

    def split(self, x: str, sizes: list[int], axis: int) -> list[str]:
        outputs = [self.name("split") for _ in sizes]
        self.nodes.append(self.helper.make_node("Split", [x, self.const(sizes)], outputs, name=self.name("Split"),
                                                axis=axis))
        return outputs

    def slice(self, x: str, start, end, axis: int) -> str:
        starts = start if isinstance(start, str) else self.const([start])
        ends = end if isinstance(end, str) else self.const([end])
        return self.op("Slice", [x, starts, ends, self.const([axis])])


# --------------------------------------------------------------------------------------------------
# The model, piece by piece


class _LayerWriter:
    """What every encoder writer shares: the graph, the parts (with their `eps`) and the opset, and the
    linear and LayerNorm blocks (the BERT writer extends it too)."""

    def __init__(self, parts, opset: int):
        self.p = parts
        self.g = _Graph()
        self.opset = opset

    def linear(self, x: str, lin: Linear, hint: str) -> str:
        y = self.g.op("MatMul", [x, self.g.weight(f"{hint}.weight_t", lin.weight_t)])
        if lin.bias is not None:
            y = self.g.op("Add", [y, self.g.weight(f"{hint}.bias", lin.bias)])
        return y

    def norm(self, x: str, norm: Norm, hint: str) -> str:
        inputs = [x, self.g.weight(f"{hint}.weight", norm.weight)]
        if norm.bias is not None:
            inputs.append(self.g.weight(f"{hint}.bias", norm.bias))
        return self.g.op("LayerNormalization", inputs, axis=-1, epsilon=self.p.eps)


class _Writer(_LayerWriter):
    p: Parts

    # -- building blocks ---------------------------------------------------------------------------

    def fused_linear(self, x: str, lins: list[Linear], hint: str) -> list[str]:
        """Linear layers reading the same input as one GEMM over their concatenated weights, split
        after: one wide MatMul runs faster than several narrow ones, and once quantized it quantizes
        its input once instead of once per layer."""
        widths = [lin.weight_t.shape[1] for lin in lins]
        weight_t = np.concatenate([lin.weight_t for lin in lins], axis=1)
        bias = None
        if any(lin.bias is not None for lin in lins):
            bias = np.concatenate([lin.bias if lin.bias is not None else np.zeros(width, lin.weight_t.dtype)
                                   for lin, width in zip(lins, widths)])
        return self.g.split(self.linear(x, Linear(weight_t, bias), hint), widths, axis=-1)

    def act(self, x: str, kind: str) -> str:
        """GELU, exact ("gelu") or with the tanh approximation ("gelu_tanh")."""
        g = self.g
        approximate = "tanh" if kind == "gelu_tanh" else "none"
        if self.opset >= 20:
            return g.op("Gelu", [x], approximate=approximate)
        if approximate == "none":  # 0.5 x (1 + erf(x / sqrt 2)): ORT fuses this pattern into Gelu
            erf = g.op("Erf", [g.op("Div", [x, g.const(math.sqrt(2.0), np.float32)])])
            return g.op(
                "Mul", [g.op("Mul", [x, g.op("Add", [erf, g.const(1.0, np.float32)])]), g.const(0.5, np.float32)]
            )
        cube = g.op("Mul", [g.op("Mul", [x, x]), x])
        inner = g.op(
            "Mul",
            [
                g.op("Add", [x, g.op("Mul", [cube, g.const(0.044715, np.float32)])]),
                g.const(math.sqrt(2.0 / math.pi), np.float32),
            ],
        )
        return g.op(
            "Mul",
            [
                g.op("Mul", [x, g.op("Add", [g.op("Tanh", [inner]), g.const(1.0, np.float32)])]),
                g.const(0.5, np.float32),
            ],
        )

    # -- shared inputs -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Tensors every layer shares: sizes, positions, rotary tables, attention masks."""
        g, p = self.g, self.p
        shape = g.op("Shape", ["input_ids"])
        self.batch = g.slice(shape, 0, 1, 0)  # (1,)
        self.length = g.slice(shape, 1, 2, 0)  # (1,)
        self.mask = g.op("Cast", ["attention_mask"], to=1)  # (B, L) float
        positions = g.op("Range", [g.const(0), g.op("Squeeze", [self.length, g.const([0])]), g.const(1)])
        self.positions = g.op(
            "Expand", [g.op("Unsqueeze", [positions, g.const([0])]), g.op("Concat", [self.batch, self.length], axis=0)]
        )  # (B, L): RotaryEmbedding wants one row per batch item
        self.rope = {kind: self._rope_tables(kind, *rope) for kind, rope in p.rope.items()}
        kinds = {layer.kind for layer in p.layers}
        if "global" in kinds:
            self._prepare_global()
        if "local" in kinds:
            self._prepare_local()

    def _rope_tables(self, kind: str, inv_freq: np.ndarray, scaling: float) -> tuple[str, str]:
        """(L, head_dim/2) cos and sin of position * inv_freq, as the rotary module computes them."""
        g = self.g
        g.scope = f"rope.{kind}/"
        positions = g.op("Cast", [g.op("Range", [g.const(0), g.op("Squeeze", [self.length, g.const([0])]),
                                                g.const(1)])], to=1)
        freqs = g.op("Mul", [g.op("Unsqueeze", [positions, g.const([1])]), g.weight("inv_freq", inv_freq[None, :])])
        tables = [g.op("Cos", [freqs]), g.op("Sin", [freqs])]
        if scaling != 1.0:
            tables = [g.op("Mul", [t, g.const(scaling, np.float32)]) for t in tables]
        g.scope = ""
        return tables[0], tables[1]

    def _prepare_global(self) -> None:
        """The extra head dimension of q (ones) and of k (0 for a real key, MASKED for padding), and whether
        the batch has any padding at all."""
        g, p = self.g, self.p
        g.scope = "global_mask/"
        minimum = g.op("ReduceMin", ["attention_mask"], keepdims=0)
        self.unpadded = g.op("Equal", [minimum, g.const(1)])  # scalar bool
        shape = g.op("Concat", [self.batch, self.length, g.const([p.heads, 1])], axis=0)  # (B, L, heads, 1)
        self.q_extra = g.op("ConstantOfShape", [shape], value=g.numpy_helper.from_array(np.ones(1, np.float32)))
        key_offset = g.op("Mul", [g.op("Sub", [g.const(1.0, np.float32), self.mask]), g.const(MASKED, np.float32)])
        self.k_extra = g.op("Expand", [g.op("Unsqueeze", [key_offset, g.const([2, 3])]), shape])
        g.scope = ""

    def _prepare_local(self) -> None:
        """Padding to whole blocks, the window indices and the (B * blocks, 1, w, 3w) band + padding bias."""
        g, p = self.g, self.p
        w = p.window
        g.scope = "local_mask/"
        # inputs of up to 3w tokens take the dense path (local_dense), longer ones the blockwise one
        self.short = g.op("LessOrEqual", [g.op("Squeeze", [self.length, g.const([0])]), g.const(3 * w)])
        key_offset = g.op("Mul", [g.op("Sub", [g.const(1.0, np.float32), self.mask]), g.const(MASKED, np.float32)])
        self.key_bias_dense = g.op("Unsqueeze", [key_offset, g.const([1, 2])])  # (B, 1, 1, L)
        pad = g.op("Mod", [g.op("Sub", [g.const([w]), g.op("Mod", [self.length, g.const([w])])]), g.const([w])])
        after = g.op("Add", [pad, g.const([w])])
        zero = g.const([0])
        self.pads_q = g.op("Concat", [zero, zero, zero, zero, pad, zero], axis=0)  # (B, L, D) -> (B, Lp, D)
        self.pads_kv = g.op("Concat", [zero, g.const([w]), zero, zero, after, zero], axis=0)  # one block each side
        self.back_shape = g.op("Concat", [self.batch, g.const([-1, p.hidden])], axis=0)
        blocks = g.op("Div", [g.op("Add", [self.length, pad]), g.const([w])])
        first = g.op("Range", [g.const(0), g.op("Squeeze", [blocks, g.const([0])]), g.const(1)])
        # window of block i = padded blocks i, i+1, i+2 (= blocks i-1, i, i+1 of the unpadded sequence)
        window_blocks = g.op("Add", [g.op("Unsqueeze", [first, g.const([1])]), g.const([[0, 1, 2]])])  # (nb, 3)
        self.window_blocks = window_blocks
        # the same windows per head, as rows (block * heads + head) of a (B, (nb + 2) * heads, w * d) view
        self.window_rows = g.op(
            "Add",
            [
                g.op("Mul", [g.op("Unsqueeze", [window_blocks, g.const([1])]), g.const(p.heads)]),
                g.const(np.arange(p.heads).reshape(1, -1, 1)),
            ],
        )  # (nb, heads, 3)
        padded = g.op("Pad", [self.mask, g.op("Concat", [zero, g.const([w]), zero, after], axis=0)], mode="constant")
        key_valid = g.op("Gather", [g.op("Reshape", [padded, g.const([0, -1, w])]), window_blocks], axis=1)
        key_bias = g.op("Mul", [g.op("Sub", [g.const(1.0, np.float32), key_valid]), g.const(MASKED, np.float32)])
        # band: query r of a block sees window key j (position (i-1)w + j) iff |j - w - r| <= w
        r = np.arange(w)[:, None]
        j = np.arange(3 * w)[None, :]
        band = np.where((j >= r) & (j <= r + 2 * w), 0.0, MASKED).astype(np.float32)[None, None]
        self.local_bias = g.op("Add", [g.op("Reshape", [key_bias, g.const([-1, 1, 1, 3 * w])]), g.weight("band", band)])
        g.scope = ""

    # -- attention ---------------------------------------------------------------------------------
    def rotary(self, x: str, kind: str) -> str:
        g, p = self.g, self.p
        cos, sin = self.rope[kind]
        if self.opset >= 23:
            return g.op("RotaryEmbedding", [x, cos, sin, self.positions], num_heads=p.heads, interleaved=0)
        # x * cos + rotate_half(x) * sin, with rotate_half(x) = concat(-x2, x1) per head
        half = p.head_dim // 2
        heads = g.op("Reshape", [x, g.const([0, 0, p.heads, p.head_dim])])
        cos_l = g.op("Unsqueeze", [cos, g.const([0, 2])])  # (1, L, 1, half)
        sin_l = g.op("Unsqueeze", [sin, g.const([0, 2])])
        x1 = g.slice(heads, 0, half, 3)
        x2 = g.slice(heads, half, INT64_MAX, 3)
        rotated = g.op("Concat", [g.op("Neg", [x2]), x1], axis=3)
        out = g.op(
            "Add",
            [
                g.op("Mul", [heads, g.op("Concat", [cos_l, cos_l], axis=3)]),
                g.op("Mul", [rotated, g.op("Concat", [sin_l, sin_l], axis=3)]),
            ],
        )
        return g.op("Reshape", [out, g.const([0, 0, p.hidden])])

    def global_attention(self, q: str, k: str, v: str) -> str:
        """Flash MultiHeadAttention over all keys. A batch without padding (every single text, and
        batches of equal lengths) takes q, k, v as they are; otherwise the padding goes into the extra
        head dimension. The If costs one scalar test and spares the unpadded case the odd head size
        (d + 1 = 65 for gte), which the CPU kernel runs 13% slower (1.31 vs 1.16 s per layer at 8192)."""
        g, p = self.g, self.p

        def attend(q: str, k: str) -> str:
            return g.op("MultiHeadAttention", [q, k, v], domain="com.microsoft", num_heads=p.heads,
                        scale=1.0 / math.sqrt(p.head_dim))

        def padded() -> str:
            split = g.const([0, 0, p.heads, p.head_dim])
            merged = g.const([0, 0, p.heads * (p.head_dim + 1)])
            q_ext = g.op("Reshape", [g.op("Concat", [g.op("Reshape", [q, split]), self.q_extra], axis=3), merged])
            k_ext = g.op("Reshape", [g.op("Concat", [g.op("Reshape", [k, split]), self.k_extra], axis=3), merged])
            return attend(q_ext, k_ext)

        return g.op("If", [self.unpadded], then_branch=g.branch("unpadded", lambda: attend(q, k)),
                    else_branch=g.branch("padded", padded))

    def local_windows(self, x: str) -> str:
        """(B, L, D) keys or values -> each block's window: (B * blocks, 3w, D) for the standard Attention
        op (opset 23: no transpose at all), else (B * blocks, heads, 3w, d), the BNSH layout
        MultiHeadAttention reads without another transpose."""
        g, p = self.g, self.p
        w = p.window
        if self.opset >= 23:
            x = g.op("Reshape", [g.op("Pad", [x, self.pads_kv], mode="constant"), g.const([0, -1, w * p.hidden])])
            x = g.op("Gather", [x, self.window_blocks], axis=1)  # (B, nb, 3, w * D)
            return g.op("Reshape", [x, g.const([-1, 3 * w, p.hidden])])
        x = g.op("Reshape", [g.op("Pad", [x, self.pads_kv], mode="constant"), g.const([0, -1, w, p.heads, p.head_dim])])
        x = g.op("Reshape", [g.op("Transpose", [x], perm=[0, 1, 3, 2, 4]), g.const([0, -1, w * p.head_dim])])
        x = g.op("Gather", [x, self.window_rows], axis=1)  # (B, nb, heads, 3, w * d)
        return g.op("Reshape", [x, g.const([-1, p.heads, 3 * w, p.head_dim])])

    def local_attention(self, q: str, k: str, v: str) -> str:
        """Sliding-window attention: blockwise for long inputs, one band-masked pass for short ones."""
        g = self.g
        return g.op("If", [self.short], then_branch=g.branch("short", lambda: self.local_dense(q, k, v)),
                    else_branch=g.branch("blockwise", lambda: self.local_blockwise(q, k, v)))

    def local_dense(self, q: str, k: str, v: str) -> str:
        """Up to 3w tokens, every query attends to the whole sequence under a (B, 1, L, L) band + padding
        bias: no more keys per query than a block's 3w window, without the padding to whole blocks and
        the window gathers (measured: a third less local-layer time at 32 x 128). L x L stays <= 3w x 3w.
        The bias is rebuilt inside each layer's branch (at most 3w x 3w values, microseconds) so that
        long inputs, which never take this branch, never build it."""
        g, p = self.g, self.p
        positions = g.op("Range", [g.const(0), g.op("Squeeze", [self.length, g.const([0])]), g.const(1)])
        distance = g.op("Abs", [g.op("Sub", [g.op("Unsqueeze", [positions, g.const([1])]),
                                             g.op("Unsqueeze", [positions, g.const([0])])])])  # (L, L)
        band = g.op("Where", [g.op("Greater", [distance, g.const(p.window)]), g.const(MASKED, np.float32),
                              g.const(0.0, np.float32)])
        bias = g.op("Add", [band, self.key_bias_dense])  # (B, 1, L, L)
        return self.masked_attention(q, k, v, bias)

    def masked_attention(self, q: str, k: str, v: str, mask: str) -> str:
        """Attention under an additive (N, 1, Lq, Lk) mask. From opset 23 the standard Attention op: ORT's
        CPU kernel runs a float mask in its tiled pass, where MultiHeadAttention with a bias runs unfused
        QK^T, softmax, AV (same result to the bit; the int8 gte 0.96x the latency at 1x128, 0.86x at 1x2048,
        2 threads). ORT 1.32's CUDA Attention is unfused, so the CUDA variants get MultiHeadAttention back
        (quantize.attention.attention_for_cuda)."""
        g, p = self.g, self.p
        scale = 1.0 / math.sqrt(p.head_dim)
        if self.opset >= 23:
            return g.op("Attention", [q, k, v, mask], q_num_heads=p.heads, kv_num_heads=p.heads, scale=scale)
        return g.op("MultiHeadAttention", [q, k, v, "", "", mask], domain="com.microsoft", num_heads=p.heads,
                    scale=scale)

    def local_blockwise(self, q: str, k: str, v: str) -> str:
        """Blocks of w queries attend to their 3w-key window under the band + padding bias."""
        g, p = self.g, self.p
        q = g.op("Reshape", [g.op("Pad", [q, self.pads_q], mode="constant"), g.const([-1, p.window, p.hidden])])
        out = self.masked_attention(q, self.local_windows(k), self.local_windows(v), self.local_bias)  # (B*nb, w, D)
        return g.slice(g.op("Reshape", [out, self.back_shape]), 0, self.length, 1)  # (B, L, D)

    # -- the model ---------------------------------------------------------------------------------
    def encoder(self) -> str:
        g, p = self.g, self.p
        g.scope = "embeddings/"
        x = g.op("Gather", [g.weight("tok_embeddings", p.embeddings), "input_ids"])
        x = self.norm(x, p.embed_norm, "norm")
        for index, layer in enumerate(p.layers):
            g.scope = f"layers.{index}.{layer.kind}/"
            h = x if layer.attn_norm is None else self.norm(x, layer.attn_norm, "attn_norm")
            q, k, v = self.fused_linear(h, [layer.q, layer.k, layer.v], "Wqkv")
            q, k = self.rotary(q, layer.kind), self.rotary(k, layer.kind)
            attn = self.global_attention(q, k, v) if layer.kind == "global" else self.local_attention(q, k, v)
            x = g.op("Add", [x, self.linear(attn, layer.out, "Wo")])
            h = self.norm(x, layer.mlp_norm, "mlp_norm")
            up, gate = self.fused_linear(h, [layer.mlp_in, layer.mlp_gate], "Wi")
            gated = g.op("Mul", [self.act(up, p.activation), gate])
            x = g.op("Add", [x, self.linear(gated, layer.mlp_out, "Wo_mlp")])
        g.scope = "final/"
        return self.norm(x, p.final_norm, "final_norm")

    def classifier(self, hidden: str) -> str:
        g, head = self.g, self.p.head
        g.scope = "head/"
        if head["pooling"] == "cls":
            pooled = g.op("Gather", [hidden, g.const(0)], axis=1)
        else:  # mean over real tokens, as ModernBertForSequenceClassification does
            weights = g.op("Unsqueeze", [self.mask, g.const([2])])
            total = g.op("ReduceSum", [g.op("Mul", [hidden, weights]), g.const([1])], keepdims=0)
            count = g.op("ReduceSum", [self.mask, g.const([1])], keepdims=1)
            pooled = g.op("Div", [total, count])
        x = self.norm(self.act(self.linear(pooled, head["dense"], "dense"), head["activation"]), head["norm"], "norm")
        return self.linear(x, head["classifier"], "classifier")

    def model(self, task: str):
        helper, g = self.g.helper, self.g
        from onnx import TensorProto

        self.prepare()
        result = self.encoder()
        if task == "rerank":
            result = self.classifier(result)
        output = TASK_OUTPUTS[task]
        g.nodes.append(helper.make_node("Identity", [result], [output], name="output"))
        inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in INPUT_NAMES]
        dims = (
            ["batch", self.p.head["classifier"].weight_t.shape[1]]
            if task == "rerank"
            else ["batch", "sequence", self.p.hidden]
        )
        outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, dims)]
        graph = helper.make_graph(g.nodes, "modernbert", inputs, outputs, initializer=g.initializers)
        opsets = [helper.make_opsetid("", self.opset), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="gte-onnx")
        model.ir_version = min(model.ir_version, 10)  # readable by ORT releases older than onnx 1.23
        return model


# --------------------------------------------------------------------------------------------------
# Public API: numpy parts in, ONNX graph out. The torch export (export/modernbert.py) and the torch-free
# converter (convert/) differ only in how they read the weights into Parts.


def check_task(task: str) -> None:
    if task not in TASK_OUTPUTS:
        raise ModernBertExportError(f"task must be one of {sorted(TASK_OUTPUTS)}, not {task!r}")


def check_opset(opset: int | None) -> int:
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < MIN_OPSET:
        raise ModernBertExportError(f"opset {opset} is too old: LayerNormalization needs opset {MIN_OPSET}")
    return opset


def build_graph(parts: Parts, task: str, opset: int | None = None):
    """(ModelProto, summary) of the windowed-attention graph, un-optimised (node names carry their layer
    scope, e.g. "layers.1.local/...", which the structural test relies on)."""
    check_task(task)
    opset = check_opset(opset)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise missing_dependency("onnx", "cpu", "Writing the ModernBERT graph") from None
    kinds = [layer.kind for layer in parts.layers]
    summary = {
        "window": parts.window,
        "global_layers": [i for i, kind in enumerate(kinds) if kind == "global"],
        "local_layers": [i for i, kind in enumerate(kinds) if kind == "local"],
    }
    return _Writer(parts, opset).model(task), summary


def write_graph(parts: Parts, task: str, onnx_path: Path, opset: int | None = None) -> dict[str, Any]:
    """Write the windowed-attention graph at onnx_path, optimised offline by ORT; return what the manifest
    records about it."""
    model, summary = build_graph(parts, task, opset)
    opset = int(model.opset_import[0].version)
    ops = save_optimized(model, Path(onnx_path))
    window = summary["window"]
    return {
        "inputs": list(INPUT_NAMES),
        "output": TASK_OUTPUTS[task],
        "opset": opset,
        "attention": (
            f"local layers: {window}-token query blocks over 3-block key windows (band |q-k| <= {window}, "
            f"O(L*window)), one band-masked pass up to {3 * window} tokens; global layers: MultiHeadAttention "
            "flash path, the key padding folded into an extra head dimension when the batch has any"
        ),
        "recipe": {
            "graph": "gte-onnx windowed modernbert",
            "local_block": window,
            "optimization": "onnxruntime extended, offline",
            # What the saved graph holds: tests derive the expected attention / Gelu / LayerNorm counts
            # from the config, so an onnxruntime that stops fusing (or unfuses) is caught.
            "op_counts": ops,
        },
        "global_layers": summary["global_layers"],
        "local_layers": summary["local_layers"],
        "ops": ops,
    }

