"""BERT config.json + safetensors tensors -> BertParts (BertModel for embeddings,
BertForSequenceClassification for reranking), key names with or without the "bert." prefix."""

from __future__ import annotations

import numpy as np

from .bert_graph import BertLayer, BertParts
from .checkpoint_meta import config_value
from .modernbert_graph import ModernBertExportError
from .safetensors_io import CheckpointFormatError
from .weights import Weights

# transformers' BertConfig defaults for the fields read here
DEFAULTS = {"layer_norm_eps": 1e-12, "hidden_act": "gelu", "position_embedding_type": "absolute",
            "type_vocab_size": 2}
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


class BertConfigError(ModernBertExportError):
    """A BERT config outside what the op-by-op writer supports."""

    code = "bert_export_unsupported"


def setting(config: dict, key: str):
    return config_value(config, key, DEFAULTS.get(key))


def _layer(w: Weights, index: int, hidden: int, inter: int) -> BertLayer:
    p = f"encoder.layer.{index}."
    square = (hidden, hidden)
    return BertLayer(
        q=w.linear(p + "attention.self.query", square, True).as_linear(),
        k=w.linear(p + "attention.self.key", square, True).as_linear(),
        v=w.linear(p + "attention.self.value", square, True).as_linear(),
        out=w.linear(p + "attention.output.dense", square, True).as_linear(),
        attn_norm=w.norm(p + "attention.output.LayerNorm", hidden, True),
        mlp_in=w.linear(p + "intermediate.dense", (inter, hidden), True).as_linear(),
        mlp_out=w.linear(p + "output.dense", (hidden, inter), True).as_linear(),
        mlp_norm=w.norm(p + "output.LayerNorm", hidden, True),
    )


def _check(config: dict) -> tuple[int, int, int]:
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        inter = int(config["intermediate_size"])
        int(config["num_hidden_layers"])
    except KeyError as exc:
        raise BertConfigError(f"config.json has no {exc.args[0]!r}") from None
    if hidden % heads:
        raise BertConfigError(f"hidden_size {hidden} is not a multiple of {heads} heads")
    kind = setting(config, "position_embedding_type")
    if kind != "absolute":
        raise BertConfigError(f"position_embedding_type {kind!r} is not supported (absolute)")
    act = setting(config, "hidden_act")
    if act not in ACTIVATIONS:
        raise BertConfigError(f"hidden_act {act!r} is not supported (supported: {sorted(ACTIVATIONS)})")
    return hidden, heads, inter


def bert_parts(config: dict, tensors: dict[str, np.ndarray], task: str, where: str = "the checkpoint") -> BertParts:
    hidden, heads, inter = _check(config)
    w = Weights(tensors, where, base_key="embeddings.word_embeddings.weight")
    word = w.base("embeddings.word_embeddings.weight")
    position = w.base("embeddings.position_embeddings.weight")
    for name, table in (("word_embeddings", word), ("position_embeddings", position)):
        if table.ndim != 2 or table.shape[1] != hidden:
            raise CheckpointFormatError(f"{where}: embeddings.{name}.weight has shape {list(table.shape)}, expected "
                                        f"[rows, {hidden}]")
    token_type = None
    if int(setting(config, "type_vocab_size")) > 0 and w.has("embeddings.token_type_embeddings.weight"):
        token_type = np.ascontiguousarray(w.base("embeddings.token_type_embeddings.weight"), dtype=np.float32)
    parts = BertParts(
        hidden=hidden,
        heads=heads,
        head_dim=hidden // heads,
        eps=float(setting(config, "layer_norm_eps")),
        activation=ACTIVATIONS[setting(config, "hidden_act")],
        word=np.ascontiguousarray(word, dtype=np.float32),
        position=np.ascontiguousarray(position, dtype=np.float32),
        token_type=token_type,
        embed_norm=w.norm("embeddings.LayerNorm", hidden, True),
        layers=[_layer(w, i, hidden, inter) for i in range(int(config["num_hidden_layers"]))],
    )
    if task == "rerank":
        classifier = w.raw("classifier.weight")
        if classifier.ndim != 2 or classifier.shape[1] != hidden:
            raise CheckpointFormatError(f"{where}: classifier.weight has shape {list(classifier.shape)}, expected "
                                        f"[num_labels, {hidden}]")
        parts.head = {
            "pooler": w.linear("pooler.dense", (hidden, hidden), True).as_linear(),
            "classifier": w.linear("classifier", (classifier.shape[0], hidden), True).as_linear(),
        }
    return parts
