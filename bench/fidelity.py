"""`gte-onnx bench --fidelity`: every contender's vectors on the parity probe set against PyTorch fp32, one
text at a time and inside mixed-length padded batches (a contender that turns NaN or moves when padded is marked)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from gte_onnx.folder.manifest import Manifest
from gte_onnx.progress import Progress
from .config import TORCH_FP32
from .contenders import Contender
from .pool import WorkerError, WorkerProcess
from .shapes import tokenizer_path

# --fidelity: the figures kept per contender (names of gte_onnx.parity.figures.embedding_figures).
FIDELITY_FIGURES = ("max_abs_diff", "centred_cosine_mean", "centred_cosine_min", "cosine_mean")


# Padded-batch check: probe inputs of at most this many tokens, dealt into mixed-length batches of this size.
PADDED_MAX_LENGTH = 512
PADDED_BATCH = 8
# A contender "moves when padded" when a vector of a padded batch has a cosine below this with the same
# input's vector alone (or any non-finite value: "NaN"). 1e-3 is far above float rounding and below what
# any quantization scheme here changes between two runs of the same input.
PADDED_COSINE_TOLERANCE = 0.999


def padded_batches(probe: Sequence[Sequence[int]]) -> tuple[list[int], list[list[list[int]]]]:
    """(probe indices, batches): the probes of at most PADDED_MAX_LENGTH tokens sorted by length and dealt
    round-robin into batches of PADDED_BATCH, so each batch spans short to long inputs (real padding)."""
    chosen = sorted((i for i, ids in enumerate(probe) if len(ids) <= PADDED_MAX_LENGTH), key=lambda i: len(probe[i]))
    groups = max(1, -(-len(chosen) // PADDED_BATCH))
    dealt = [chosen[g::groups] for g in range(groups)]
    dealt = [d for d in dealt if d]
    return [i for d in dealt for i in d], [[list(probe[i]) for i in d] for d in dealt]


def padded_figures(alone: np.ndarray, batched: np.ndarray) -> dict[str, object]:
    """The same inputs alone and inside padded batches: non-finite rows, the largest change, the lowest
    cosine, and the verdict "ok" / "moves" / "NaN"."""
    alone, batched = np.asarray(alone, dtype=np.float64), np.asarray(batched, dtype=np.float64)
    bad = ~np.all(np.isfinite(batched), axis=1) | ~np.all(np.isfinite(alone), axis=1)
    good = ~bad
    figures: dict[str, object] = {"padded_rows": int(len(batched)), "padded_nonfinite_rows": int(bad.sum())}
    if good.any():
        a, b = alone[good], batched[good]
        cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        figures["padded_max_abs_diff"] = float(np.max(np.abs(a - b)))
        figures["padded_cosine_min"] = float(cos.min())
    if bad.any():
        figures["padded"] = "NaN"
    elif figures.get("padded_cosine_min", 1.0) < PADDED_COSINE_TOLERANCE:
        figures["padded"] = "moves"
    else:
        figures["padded"] = "ok"
    return figures


def measure_fidelity(contenders: Sequence[Contender], live: Sequence[Contender],
                     workers: Mapping[str, WorkerProcess], probe_ids: list[list[int]],
                     timeout: float, progress: Progress) -> None:
    """Every live contender's pooled outputs on the probe inputs against PyTorch fp32's, one input at a
    time; then the same inputs inside mixed-length padded batches, against its own one-at-a-time vectors
    (NaN rows, a vector that moves) and against PyTorch's."""
    from ..parity.figures import embedding_figures

    reference = next((c for c in live if c.name == TORCH_FP32), None)
    if reference is None:
        for contender in contenders:
            contender.measured_fidelity = {"error": "no PyTorch fp32 reference (it failed to load)"}
        return
    ref = np.asarray(workers[reference.key].request("pooled", timeout, ids=probe_ids)["vectors"])
    order, batches = padded_batches(probe_ids)
    for contender in live:
        progress.note(f"fidelity {contender.key}")
        worker = workers[contender.key]
        try:
            got = ref if contender is reference else np.asarray(worker.request("pooled", timeout, ids=probe_ids)["vectors"])
            measured: dict[str, object] = {"reference": True} if contender is reference else {}
            if contender is not reference:
                figures = embedding_figures(ref, got)
                measured.update({k: figures[k] for k in FIDELITY_FIGURES if k in figures})
            batched = np.asarray(worker.request("pooled_batches", timeout, batches=batches)["vectors"])
            measured.update(padded_figures(got[order], batched))
            if contender is not reference and np.all(np.isfinite(batched)):
                measured["padded_centred_cosine_mean"] = embedding_figures(ref[order], batched)["centred_cosine_mean"]
            contender.measured_fidelity = measured
        except (WorkerError, ValueError) as exc:
            contender.measured_fidelity = {"error": str(exc)}


def probe_ids(folder: Path, manifest: Manifest) -> list[list[int]]:
    """Token ids of the parity probe texts (short, code, numbers, other languages, CISI, window edges,
    one long text), truncated to the model's max length."""
    from ..parity.probes import build_probe_set
    from gte_onnx.inference.tokenize import TextTokenizer

    texts = build_probe_set(tokenizer_path(folder, manifest.tokenizer), manifest.max_length).texts
    tokenizer = TextTokenizer.from_folder(folder, manifest.max_length, manifest.tokenizer.get("pad_token_id"))
    return [list(map(int, ids)) for ids in tokenizer.encode(list(texts), "end").ids]
