"""The phases of a run before the timing: building the peers, and --fidelity's probe measurement."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from gte_onnx.folder.manifest import Manifest
from gte_onnx.progress import Progress
from .config import TORCH_FP32, BenchConfig
from .contenders import Contender, folder_bytes
from .pool import WorkerError, WorkerProcess
from .shapes import tokenizer_path

# --fidelity: the figures kept per contender (names of gte_onnx.parity.figures.embedding_figures).
FIDELITY_FIGURES = ("max_abs_diff", "centred_cosine_mean", "centred_cosine_min", "cosine_mean")


def build_peers(contenders: Sequence[Contender], config: BenchConfig, progress: Progress) -> None:
    """Build the peers missing from the cache, all in one worker process (torch lives there only, and
    the checkpoint is loaded once); a peer that fails to build gets its error, the others go on."""
    peers = [c for c in contenders if c.kind == "peer"]
    if not peers:
        return
    first = peers[0].spec
    cache = Path(first["cache"])
    missing = [c.name for c in peers if not (cache / c.name / "peer.json").is_file()]
    built: dict[str, dict] = {c.name: {"cached": True} for c in peers if c.name not in missing}
    if missing:
        progress.note(f"building peers {', '.join(missing)} (once; cached in {cache})")
        worker = None
        try:
            worker = WorkerProcess("build-peers", {
                "kind": "peer_build", "peers": missing, "cache": str(cache), "torch": first["torch"],
                "folder": first["folder"], "spinning": config.spinning,
                "calibration_texts": config.peers_calibration}, config.threads)
            built.update(worker.request("load", config.call_timeout_s)["info"]["built"])
        except WorkerError as exc:
            built.update({name: {"error": str(exc)} for name in missing})
        finally:
            if worker is not None:
                worker.close()
    for contender in peers:
        contender.meta["build"] = built.get(contender.name, {})
        if "error" in contender.meta["build"]:
            contender.error = f"building peer {contender.name} failed: {contender.meta['build']['error']}"
        record = cache / contender.name / "peer.json"
        recorded = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        # A hub peer's folder holds the imported copy; its record has the transformers.js file's size.
        contender.meta["file_bytes"] = recorded.get("file_bytes") or folder_bytes(cache / contender.name)
        if recorded.get("recipe"):
            contender.meta["recipe"] = {"peer": recorded["recipe"]}


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
