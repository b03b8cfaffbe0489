"""BERT family -> ONNX, written op by op from numpy weights (no tracing, no torch).

Embeddings: word + absolute position + token type rows, then LayerNorm. Each encoder layer: q, k, v
MatMuls into com.microsoft MultiHeadAttention (one kernel on CPU and CUDA) with the key padding as a
(B, 1, L, L) additive bias built once for all layers, the output projection, residual + LayerNorm, the
MLP (MatMul, GELU, MatMul) and residual + LayerNorm. ORT's extended optimisations fuse the residual
LayerNorms and GELU at build time (graph_optimize). Each linear layer stays its own MatMul with its weight
as an initializer, so the quantize recipes find attention projections, MLP up and MLP down by shape.

Tasks: "embedding" returns last_hidden_state; "rerank" adds the pooler (dense + tanh on the first token)
and the classifier, and returns logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gte_onnx.errors import missing_dependency

from .graph_optimize import save_optimized
from .modernbert_graph import MASKED, TASK_OUTPUTS, Linear, Norm, _LayerWriter, check_task

DEFAULT_OPSET = 17  # LayerNormalization; GELU as Erf, which ORT fuses
MIN_OPSET = 17


@dataclass
class BertLayer:
    q: Linear
    k: Linear
    v: Linear
    out: Linear
    attn_norm: Norm  # LayerNorm after the attention residual
    mlp_in: Linear
    mlp_out: Linear
    mlp_norm: Norm  # LayerNorm after the MLP residual


@dataclass
class BertParts:
    hidden: int
    heads: int
    head_dim: int
    eps: float
    activation: str  # "gelu" | "gelu_tanh" | "relu"
    word: np.ndarray  # (vocab, hidden)
    position: np.ndarray  # (max_positions, hidden)
    token_type: np.ndarray | None  # (type_vocab, hidden); None: the graph has no token_type_ids input
    embed_norm: Norm
    layers: list[BertLayer]
    head: dict[str, Any] = field(default_factory=dict)  # rerank: pooler, classifier

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"] + (["token_type_ids"] if self.token_type is not None else [])


class _BertWriter(_LayerWriter):
    p: BertParts

    def act(self, x: str) -> str:
        g, kind = self.g, self.p.activation
        if kind == "relu":
            return g.op("Relu", [x])
        if kind == "gelu":  # 0.5 x (1 + erf(x / sqrt 2)): ORT fuses this pattern into Gelu
            erf = g.op("Erf", [g.op("Div", [x, g.const(math.sqrt(2.0), np.float32)])])
            return g.op("Mul", [g.op("Mul", [x, g.op("Add", [erf, g.const(1.0, np.float32)])]),
                                g.const(0.5, np.float32)])
        cube = g.op("Mul", [g.op("Mul", [x, x]), x])  # tanh approximation
        inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [cube, g.const(0.044715, np.float32)])]),
                             g.const(math.sqrt(2.0 / math.pi), np.float32)])
        return g.op("Mul", [g.op("Mul", [x, g.op("Add", [g.op("Tanh", [inner]), g.const(1.0, np.float32)])]),
                            g.const(0.5, np.float32)])

    def embeddings(self) -> str:
        g, p = self.g, self.p
        g.scope = "embeddings/"
        length = g.op("Squeeze", [g.slice(g.op("Shape", ["input_ids"]), 1, 2, 0), g.const([0])])
        positions = g.op("Range", [g.const(0), length, g.const(1)])
        x = g.op("Add", [g.op("Gather", [g.weight("word_embeddings", p.word), "input_ids"]),
                         g.op("Gather", [g.weight("position_embeddings", p.position), positions])])
        if p.token_type is not None:
            x = g.op("Add", [x, g.op("Gather", [g.weight("token_type_embeddings", p.token_type), "token_type_ids"])])
        return self.norm(x, p.embed_norm, "LayerNorm")

    def key_bias(self) -> str:
        """(B, 1, L, L): 0 for a real key, MASKED for padding; the kernel wants a query dimension."""
        g = self.g
        g.scope = "attention_mask/"
        offset = g.op("Mul", [g.op("Sub", [g.const(1.0, np.float32), g.op("Cast", ["attention_mask"], to=1)]),
                              g.const(MASKED, np.float32)])
        shape = g.op("Shape", ["attention_mask"])
        full = g.op("Concat", [g.slice(shape, 0, 1, 0), g.const([1]), g.slice(shape, 1, 2, 0),
                               g.slice(shape, 1, 2, 0)], axis=0)
        return g.op("Expand", [g.op("Unsqueeze", [offset, g.const([1, 2])]), full])

    def layer(self, x: str, layer: BertLayer, bias: str) -> str:
        g, p = self.g, self.p
        q, k, v = (self.linear(x, lin, name) for lin, name in ((layer.q, "query"), (layer.k, "key"), (layer.v, "value")))
        attn = g.op("MultiHeadAttention", [q, k, v, "", "", bias], domain="com.microsoft", num_heads=p.heads,
                    scale=1.0 / math.sqrt(p.head_dim))
        x = self.norm(g.op("Add", [self.linear(attn, layer.out, "attention_output"), x]), layer.attn_norm,
                      "attention_LayerNorm")
        h = self.linear(self.act(self.linear(x, layer.mlp_in, "intermediate")), layer.mlp_out, "output")
        return self.norm(g.op("Add", [h, x]), layer.mlp_norm, "output_LayerNorm")

    def classifier(self, hidden: str) -> str:
        g, head = self.g, self.p.head
        g.scope = "head/"
        # (B, 1, D): kept 3-D so ORT does not fuse MatMul + Add + Tanh into FusedGemm, a CPU-only op
        first = g.op("Gather", [hidden, g.const([0])], axis=1)
        pooled = g.op("Tanh", [self.linear(first, head["pooler"], "pooler")])
        return g.op("Squeeze", [self.linear(pooled, head["classifier"], "classifier"), g.const([1])])

    def model(self, task: str):
        from onnx import TensorProto

        helper, g, p = self.g.helper, self.g, self.p
        x = self.embeddings()
        bias = self.key_bias()
        for index, layer in enumerate(p.layers):
            g.scope = f"layers.{index}/"
            x = self.layer(x, layer, bias)
        if task == "rerank":
            x = self.classifier(x)
        output = TASK_OUTPUTS[task]
        g.nodes.append(helper.make_node("Identity", [x], [output], name="output"))
        inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in p.input_names]
        dims = (["batch", p.head["classifier"].weight_t.shape[1]] if task == "rerank"
                else ["batch", "sequence", p.hidden])
        graph = helper.make_graph(g.nodes, "bert", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, dims)],
                                  initializer=g.initializers)
        opsets = [helper.make_opsetid("", self.opset), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="gte-onnx")
        model.ir_version = min(model.ir_version, 10)
        return model


def build_bert_graph(parts: BertParts, task: str, opset: int | None = None):
    """The un-optimised ModelProto of a BERT-family encoder (task "embedding") or classifier ("rerank")."""
    check_task(task)
    opset = DEFAULT_OPSET if opset is None else max(int(opset), MIN_OPSET)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise missing_dependency("onnx", "cpu", "Writing the BERT graph") from None
    return _BertWriter(parts, opset).model(task)


def write_bert_graph(parts: BertParts, task: str, onnx_path: Path, opset: int | None = None) -> dict[str, Any]:
    """Write the graph at onnx_path, optimised offline by ORT; return what the manifest records about it."""
    model = build_bert_graph(parts, task, opset)
    ops = save_optimized(model, Path(onnx_path))
    return {
        "inputs": parts.input_names,
        "output": TASK_OUTPUTS[task],
        "opset": int(model.opset_import[0].version),
        "attention": "MultiHeadAttention over all keys, the key padding as an additive bias",
        "recipe": {"graph": "gte-onnx op-by-op bert", "optimization": "onnxruntime extended, offline"},
        "ops": ops,
    }
