"""Per-input-channel scales that move quantization difficulty between a linear layer's input and weight.

A linear layer y = x W is unchanged when x is divided by a per-channel vector s and W's rows are
multiplied by it: y = (x / s) (diag(s) W). Transformers have a few input channels with much larger
magnitudes than the rest; with one activation scale per tensor those channels squeeze every other channel
into a handful of int8 levels, so the activations, not the weights, are where int8 loses
(docs/quantization.md).

- int8 (SmoothQuant, Xiao et al. 2023): s_j = max|x_j|^alpha / max|W_j|^(1-alpha), alpha 0.5.
- q4 (activation-aware, after AWQ, Lin et al. 2024): s_j = mean|x_j|^alpha, alpha picked per layer group
  from a grid by the output error of the 4-bit weights on calibration activations.

Statistics come from the fp32 model run on real text (calibration feeds). The division by s is a Mul
inserted before the layers that share the input, folded into the producing LayerNorm's scale when that
LayerNorm feeds nothing else (ModernBERT's pre-norm layers), so it usually costs nothing at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from . import graph
from .graph import WeightUse
from gte_onnx.defaults import CPU

_EPS = 1e-5


def input_groups(model, uses: Sequence[WeightUse]) -> dict[str, list[WeightUse]]:
    """Selected linear layers grouped by the tensor they read (q, k and v share one input)."""
    by_node = {node.name: node for node in model.graph.node}
    groups: dict[str, list[WeightUse]] = {}
    for use in uses:
        groups.setdefault(by_node[use.node].input[0], []).append(use)
    return groups


def real_token_activations(
    model, tensors: Sequence[str], feeds: Iterable[dict[str, np.ndarray]]
) -> Iterator[dict[str, np.ndarray]]:
    """Per feed, each tensor of `model` as (real tokens, channels) float32 rows: the fp32 model is run with
    the tensors as extra outputs, and padding positions are left out (they are not text)."""
    import onnxruntime as ort

    onnx = graph.import_onnx()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in present:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=[CPU])
    for feed in feeds:
        valid = feed["attention_mask"].reshape(-1).astype(bool)
        batch = {}
        for name, value in zip(tensors, session.run(list(tensors), feed)):
            rows = value.reshape(-1, value.shape[-1])
            batch[name] = rows[valid] if rows.shape[0] == valid.shape[0] else rows
        yield batch


def channel_statistics(
    model, tensors: Sequence[str], feeds: Iterable[dict[str, np.ndarray]], sample_rows: int = 2048
) -> dict[str, dict[str, np.ndarray]]:
    """Per input channel max|x| and mean|x| of each tensor over the feeds' real tokens, plus a sample of
    rows (tokens) for searching scales."""
    rng = np.random.default_rng(0)
    stats: dict[str, dict] = {n: {"max": None, "sum": None, "count": 0, "rows": []} for n in tensors}
    for batch in real_token_activations(model, tensors, feeds):
        for name, rows in batch.items():
            x = np.abs(rows)
            s = stats[name]
            s["max"] = x.max(axis=0) if s["max"] is None else np.maximum(s["max"], x.max(axis=0))
            s["sum"] = x.sum(axis=0) if s["sum"] is None else s["sum"] + x.sum(axis=0)
            s["count"] += x.shape[0]
            s["rows"].append(rows[rng.choice(len(rows), size=min(len(rows), 256), replace=False)])
    out = {}
    for name, s in stats.items():
        if s["count"] == 0:
            raise ValueError("no calibration tokens were seen")
        rows = np.concatenate(s["rows"])
        out[name] = {"max": s["max"], "mean": s["sum"] / s["count"],
                     "rows": rows[rng.permutation(len(rows))[:sample_rows]]}
    return out


def smoothquant_scales(x_absmax: np.ndarray, weights: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    w_absmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    s = np.power(np.maximum(x_absmax, _EPS), alpha) / np.power(np.maximum(w_absmax, _EPS), 1 - alpha)
    return _tidy(s)


def awq_scales(
    x_absmean: np.ndarray, x_rows: np.ndarray, weights: Sequence[np.ndarray],
    fake_quantize: Callable[[np.ndarray], np.ndarray], grid: Sequence[float] = tuple(np.linspace(0, 1, 11)),
) -> tuple[np.ndarray, float]:
    """The s = mean|x|^alpha (alpha from `grid`) that minimises || x W - (x/s) Q(diag(s) W) || summed over
    the group's weights; alpha 0 (s = 1) is plain round-to-nearest, so the search never does worse."""
    x = x_rows.astype(np.float32)
    reference = [x @ w for w in weights]
    best, best_alpha, best_err = np.ones_like(x_absmean), 0.0, np.inf
    for alpha in grid:
        s = _tidy(np.power(np.maximum(x_absmean, _EPS), alpha))
        xs = x / s
        err = sum(float(np.sum((xs @ fake_quantize(w * s[:, None]) - ref) ** 2)) for w, ref in zip(weights, reference))
        if err < best_err:
            best, best_alpha, best_err = s, float(alpha), err
    return best, best_alpha


def _tidy(s: np.ndarray) -> np.ndarray:
    """Normalise around 1 (geometric mean) so neither side drifts in magnitude; no zeros or infinities."""
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    s = s / np.exp(np.mean(np.log(s)))
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def fake_quantize_4bit(w: np.ndarray, block_size: int, symmetric: bool = False) -> np.ndarray:
    """Round-to-nearest 4-bit blocks along the input dimension, as MatMulNBits stores them (dequantized)."""
    k, n = w.shape
    pad = (-k) % block_size
    wp = np.pad(w, ((0, pad), (0, 0))).reshape(-1, block_size, n)
    if symmetric:
        scale = np.abs(wp).max(axis=1, keepdims=True) / 7.0
        scale = np.where(scale == 0, 1.0, scale)
        deq = np.clip(np.rint(wp / scale), -8, 7) * scale
    else:
        lo = np.minimum(wp.min(axis=1, keepdims=True), 0.0)
        hi = np.maximum(wp.max(axis=1, keepdims=True), 0.0)
        scale = (hi - lo) / 15.0
        scale = np.where(scale == 0, 1.0, scale)
        zero = np.clip(np.rint(-lo / scale), 0, 15)
        deq = (np.clip(np.rint(wp / scale) + zero, 0, 15) - zero) * scale
    return deq.reshape(-1, n)[:k].astype(np.float32)


def apply_input_scales(model, tensor: str, uses: Sequence[WeightUse], s: np.ndarray) -> str:
    """Rewrite the graph so the group's layers read tensor / s and hold diag(s) W. Returns "folded" when
    the division went into a LayerNorm's scale (free at run time) or "mul" when a Mul node was added."""
    onnx = graph.import_onnx()
    from onnx import numpy_helper

    inits = graph.initializers(model)
    for use in uses:
        w = numpy_helper.to_array(inits[use.weight])
        inits[use.weight].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), use.weight))
    users = graph.consumers(model)
    producer = next((n for n in model.graph.node if tensor in n.output), None)
    group_nodes = {use.node for use in uses}
    if (producer is not None and producer.op_type == "LayerNormalization"
            and all(n.name in group_nodes for n in users[tensor])
            and len(users[producer.input[1]]) == 1 and producer.input[1] in inits
            and (len(producer.input) < 3 or not producer.input[2] or len(users[producer.input[2]]) == 1)):
        gamma = numpy_helper.to_array(inits[producer.input[1]])
        inits[producer.input[1]].CopyFrom(numpy_helper.from_array((gamma / s).astype(np.float32), producer.input[1]))
        if len(producer.input) > 2 and producer.input[2] in inits:
            beta = numpy_helper.to_array(inits[producer.input[2]])
            inits[producer.input[2]].CopyFrom(numpy_helper.from_array((beta / s).astype(np.float32), producer.input[2]))
        return "folded"
    scaled, inverse = tensor + "_smoothed", tensor + "_inverse_channel_scale"
    model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inverse))
    mul = onnx.helper.make_node("Mul", [tensor, inverse], [scaled], name=tensor + "_smooth")
    for node in model.graph.node:
        if node.name in group_nodes:
            node.input[0] = scaled
    position = next(i for i, n in enumerate(model.graph.node) if n.name in group_nodes)
    model.graph.node.insert(position, mul)
    return "mul"


def smooth_for_int8(model, uses: Sequence[WeightUse], feeds, alpha: float) -> dict:
    """SmoothQuant the selected layers in place; returns the recipe entry."""
    from onnx import numpy_helper

    groups = input_groups(model, uses)
    stats = channel_statistics(model, list(groups), feeds, sample_rows=1)
    inits = graph.initializers(model)
    how = {"folded": 0, "mul": 0}
    for tensor, group in groups.items():
        weights = [numpy_helper.to_array(inits[u.weight]) for u in group]
        how[apply_input_scales(model, tensor, group, smoothquant_scales(stats[tensor]["max"], weights, alpha))] += 1
    return {"method": "SmoothQuant (per-input-channel scales from real-text activation maxima)", "alpha": alpha,
            "groups": len(groups), "folded_into_layernorm": how["folded"], "mul_nodes_added": how["mul"]}


def awq_for_q4(model, uses: Sequence[WeightUse], feeds, block_size: int, symmetric: bool) -> dict:
    """Activation-aware scales for 4-bit weights, searched per input group; returns the recipe entry."""
    from onnx import numpy_helper

    groups = input_groups(model, uses)
    stats = channel_statistics(model, list(groups), feeds, sample_rows=512)
    inits = graph.initializers(model)
    alphas, how = [], {"folded": 0, "mul": 0}

    def fake(w):
        return fake_quantize_4bit(w, block_size, symmetric)

    for tensor, group in groups.items():
        weights = [numpy_helper.to_array(inits[u.weight]) for u in group]
        s, alpha = awq_scales(stats[tensor]["mean"], stats[tensor]["rows"], weights, fake)
        alphas.append(alpha)
        if alpha > 0:
            how[apply_input_scales(model, tensor, group, s)] += 1
    return {"method": "activation-aware scales (AWQ-style grid search on real-text activations)",
            "alphas": alphas, "groups": len(groups), "folded_into_layernorm": how["folded"],
            "mul_nodes_added": how["mul"]}
