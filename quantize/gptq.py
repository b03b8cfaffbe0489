"""GPTQ rounding for MatMulNBits weights (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers"), in numpy, and the MatMulNBits writer for the integer codes.

Round-to-nearest (RTN) rounds every weight on its own. GPTQ rounds the input rows of a linear layer
y = x W (W is K x N, x's K channels are the rows) one at a time and spreads each row's rounding error over
the rows not yet rounded, weighted by the inverse Hessian H = X^T X of the layer's input activations on real
text, so the layer's *output* error || X W - X Q || is what is minimised, not the weight error. Groups: a
block of `block_size` rows gets its scale and zero point (MatMulNBits stores one per block and column)
when its first row comes up, from the weights as they are then (error feedback included). The lazy-batch
update of the paper (128 rows at a time) keeps the work in matrix products.

The codes are written into MatMulNBits directly (`matmul_nbits_node`), with the layout of the ORT contrib
op: B uint8 (N, n_blocks, blob) with the lower-indexed value in the low nibble, scales (N * n_blocks),
zero points packed two per byte (4-bit) per column. Dequantized weight: (code - zero point) * scale.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from . import graph
from .graph import WeightUse


def grid(w: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) per column of `w` (rows: one block), as ORT's round-to-nearest picks them:
    asymmetric over [min(w, 0), max(w, 0)]; symmetric with zero point 2^(bits-1) and the max |w| mapped to
    -2^(bits-1) (ORT's convention: the sign of the larger end, so that end is exact)."""
    top = (1 << bits) - 1
    if symmetric:
        half = 1 << (bits - 1)
        hi, lo = w.max(axis=0), w.min(axis=0)
        peak = np.where(np.abs(hi) > np.abs(lo), hi, lo)
        scale = peak / -float(half)
        zero = np.full(w.shape[1], half, dtype=np.float64)
        scale = np.where(scale == 0, 1.0, scale)
        return _as_stored(scale), zero
    lo = np.minimum(w.min(axis=0), 0.0)
    hi = np.maximum(w.max(axis=0), 0.0)
    scale = (hi - lo) / top
    zero = np.where(scale == 0, (top + 1) // 2, np.clip(np.rint(-lo / np.where(scale == 0, 1, scale)), 0, top))
    scale = np.where(scale == 0, 1.0, scale)
    return _as_stored(scale), zero


def _as_stored(scale: np.ndarray) -> np.ndarray:
    """Scales rounded to float32 as MatMulNBits stores them, so codes are chosen for the stored scale."""
    return scale.astype(np.float32).astype(np.float64)


def _codes(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(np.rint(w / scale) + zero, 0, (1 << bits) - 1)


def rtn(weight: np.ndarray, bits: int, block_size: int, symmetric: bool = False):
    """Round to nearest: (codes uint8 (K, N), scales (n_blocks, N), zero points uint8 (n_blocks, N))."""
    w = np.asarray(weight, dtype=np.float64)
    k, n = w.shape
    blocks = -(-k // block_size)
    codes = np.zeros((k, n), dtype=np.uint8)
    scales = np.zeros((blocks, n))
    zeros = np.zeros((blocks, n), dtype=np.uint8)
    for b in range(blocks):
        part = w[b * block_size:(b + 1) * block_size]
        s, z = grid(part, bits, symmetric)
        codes[b * block_size:(b + 1) * block_size] = _codes(part, s, z, bits)
        scales[b], zeros[b] = s, z
    return codes, scales.astype(np.float32), zeros


def dequantize(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, block_size: int) -> np.ndarray:
    k = codes.shape[0]
    s = np.repeat(scales, block_size, axis=0)[:k]
    z = np.repeat(zeros.astype(np.float32), block_size, axis=0)[:k]
    return ((codes.astype(np.float32) - z) * s).astype(np.float32)


def gptq(
    weight: np.ndarray, hessian: np.ndarray, bits: int, block_size: int, symmetric: bool = False,
    damp: float = 0.01, lazy: int = 128, act_order: bool = False,
):
    """GPTQ codes for `weight` (K, N) given the input Hessian X^T X (K, K); same returns as `rtn`.

    act_order: round the inputs in order of decreasing activation energy (diag H), with every block's
    scale and zero point fixed beforehand from the original weights ("static groups")."""
    w = np.array(weight, dtype=np.float64)
    k, n = w.shape
    h = np.array(hessian, dtype=np.float64)
    # Inputs never active on the calibration text: no information, so no error feedback through them
    # (their weights are kept and rounded to nearest, not zeroed as in the paper: real text may use them).
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    blocks = -(-k // block_size)
    codes = np.zeros((k, n), dtype=np.uint8)
    scales = np.zeros((blocks, n))
    zeros = np.zeros((blocks, n), dtype=np.uint8)
    order = np.arange(k)
    if act_order:
        for b in range(blocks):
            scales[b], zeros[b] = grid(w[b * block_size:(b + 1) * block_size], bits, symmetric)
        order = np.argsort(-np.diag(h), kind="stable")
        w, h = w[order], h[np.ix_(order, order)]
    # Upper Cholesky factor of H^-1: row i holds the update weights of the rows after i.
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    lazy = max(lazy - lazy % block_size, block_size)
    s = z = None
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1 = w[i1:i2].copy()
        err1 = np.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            row = order[i1 + i]
            if act_order:
                s, z = scales[row // block_size], zeros[row // block_size].astype(np.float64)
            elif row % block_size == 0:
                b = row // block_size
                s, z = grid(w1[i:i + block_size], bits, symmetric)
                scales[b], zeros[b] = s, z
            c = _codes(w1[i], s, z, bits)
            codes[row] = c
            q = (c - z) * s
            e = (w1[i] - q) / h1[i, i]
            w1[i + 1:] -= np.outer(h1[i, i + 1:], e)
            err1[i] = e
        w[i2:] -= hinv[i1:i2, i2:].T @ err1
    return codes, scales.astype(np.float32), zeros


def pack(codes: np.ndarray, zeros: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(B uint8 (N, n_blocks, blob), zero points uint8) in MatMulNBits' layout."""
    k, n = codes.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), dtype=np.uint8)
    padded[:k] = codes
    per_column = padded.T.reshape(n, blocks, block_size)
    if bits == 8:
        return per_column.copy(), zeros.T.copy().reshape(-1)
    if bits != 4:
        raise ValueError(f"only 4- and 8-bit codes are packed here, not {bits}")
    b = (per_column[..., 0::2] & 0xF) | ((per_column[..., 1::2] & 0xF) << 4)
    zp = zeros.T  # (N, blocks)
    if blocks % 2:
        zp = np.concatenate([zp, np.full((n, 1), 8, dtype=np.uint8)], axis=1)  # as ORT pads
    zp_packed = (zp[:, 0::2] & 0xF) | ((zp[:, 1::2] & 0xF) << 4)
    return b.astype(np.uint8), zp_packed.astype(np.uint8).reshape(-1)


def matmul_nbits_node(
    model, use: WeightUse, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int,
    block_size: int, symmetric: bool, accuracy_level: int,
) -> None:
    """Replace the MatMul `use` by MatMulNBits holding `codes`, in place. Symmetric: no zero points stored
    (the op's default, 2^(bits-1), is what `grid` uses)."""
    onnx = graph.import_onnx()
    from onnx import helper, numpy_helper

    k, n = codes.shape
    b, zp = pack(codes, zeros, bits, block_size)
    inits = graph.initializers(model)
    node = next(nd for nd in model.graph.node if nd.name == use.node)
    base = use.weight
    new = [numpy_helper.from_array(b, f"{base}_Q{bits}"),
           numpy_helper.from_array(np.ascontiguousarray(scales.T).reshape(-1).astype(np.float32), f"{base}_scales")]
    inputs = [node.input[0], new[0].name, new[1].name]
    if not symmetric:
        new.append(numpy_helper.from_array(zp, f"{base}_zero_points"))
        inputs.append(new[2].name)
    model.graph.initializer.extend(new)
    replacement = helper.make_node(
        "MatMulNBits", inputs, list(node.output), name=node.name + f"_Q{bits}", domain="com.microsoft",
        K=k, N=n, bits=bits, block_size=block_size, accuracy_level=accuracy_level,
    )
    position = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    model.graph.node.insert(position, replacement)
    if not any(use.weight in nd.input for nd in model.graph.node):
        model.graph.initializer.remove(inits[use.weight])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))


def input_hessians(model, tensors: Sequence[str], feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """X^T X / tokens (float64, K x K) of each tensor over the feeds' real tokens (padding left out)."""
    from .smooth import real_token_activations

    sums: dict[str, np.ndarray] = {}
    count = 0
    for batch in real_token_activations(model, tensors, feeds):
        for name, rows in batch.items():
            x = rows.astype(np.float64)
            sums[name] = sums.get(name, 0) + x.T @ x
        count += len(next(iter(batch.values()))) if batch else 0
    if count == 0:
        raise ValueError("no calibration tokens were seen")
    return {name: h / count for name, h in sums.items()}


def gptq_matmul_nbits(
    model, uses: Sequence[WeightUse], feeds, bits: int, block_size: int, symmetric: bool,
    accuracy_level: int, damp: float = 0.01, eight_bit: Sequence[WeightUse] = (),
    block_sizes: dict[str, int] | None = None, act_order: bool = False,
) -> dict:
    """MatMulNBits with GPTQ-rounded codes for `uses` (`bits`) and `eight_bit` (8 bits, symmetric), in
    place; one pass over the feeds collects every Hessian. `block_sizes`: node name -> block size where it
    differs from `block_size`. Returns the recipe entry."""
    from onnx import numpy_helper

    from .smooth import input_groups

    sizes = block_sizes or {}
    plan = {u.node: (bits, symmetric) for u in uses}
    plan.update({u.node: (8, True) for u in eight_bit})
    everything = list(uses) + [u for u in eight_bit if u not in uses]
    groups = input_groups(model, everything)
    hessians = input_hessians(model, list(groups), feeds)
    inits = graph.initializers(model)
    gain = []
    for tensor, group in groups.items():
        h = hessians[tensor]
        for use in group:
            b, sym = plan[use.node]
            size = sizes.get(use.node, block_size)
            w = numpy_helper.to_array(inits[use.weight]).astype(np.float32)
            codes, scales, zeros = gptq(w, h, b, size, sym, damp, act_order=act_order)
            if b == bits:
                gain.append(_relative_gain(w, h, (codes, scales, zeros), b, size, sym))
            matmul_nbits_node(model, use, codes, scales, zeros, b, size, sym, accuracy_level)
    return {"method": "GPTQ (Hessian of real-text inputs, error feedback, groups = blocks)",
            "damp": damp, "act_order": act_order, "layers": len(everything),
            f"{bits}_bit_output_error_vs_round_to_nearest": round(float(np.mean(gain)), 4) if gain else None}


def output_error(w: np.ndarray, h: np.ndarray, deq: np.ndarray) -> float:
    """|| X (W - Q) ||^2 / tokens, from the Hessian: trace(D^T H D)."""
    d = (w - deq).astype(np.float64)
    return float(np.sum(d * (h @ d)))


def _relative_gain(w, h, result, bits, block_size, symmetric) -> float:
    """GPTQ's layer output error as a fraction of round-to-nearest's (below 1: GPTQ helps)."""
    ref = output_error(w, h, dequantize(*rtn(w, bits, block_size, symmetric), block_size))
    got = output_error(w, h, dequantize(*result, block_size))
    return got / ref if ref > 0 else 1.0
