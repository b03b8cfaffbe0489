"""The phases of a run before the timing: building the peers, and --fidelity's probe measurement."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..manifest import Manifest
from ..progress import Progress
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
        contender.meta["file_bytes"] = folder_bytes(cache / contender.name)


def measure_fidelity(contenders: Sequence[Contender], live: Sequence[Contender],
                     workers: Mapping[str, WorkerProcess], probe_ids: list[list[int]],
                     timeout: float, progress: Progress) -> None:
    """Every live contender's pooled outputs on the probe inputs against PyTorch fp32's."""
    from ..parity.figures import embedding_figures

    reference = next((c for c in live if c.name == TORCH_FP32), None)
    if reference is None:
        for contender in contenders:
            contender.measured_fidelity = {"error": "no PyTorch fp32 reference (it failed to load)"}
        return
    import numpy as np

    ref = np.asarray(workers[reference.key].request("pooled", timeout, ids=probe_ids)["vectors"])
    for contender in live:
        if contender is reference:
            continue
        progress.note(f"fidelity {contender.key}")
        try:
            got = np.asarray(workers[contender.key].request("pooled", timeout, ids=probe_ids)["vectors"])
            figures = embedding_figures(ref, got)
            contender.measured_fidelity = {k: figures[k] for k in FIDELITY_FIGURES if k in figures}
        except (WorkerError, ValueError) as exc:
            contender.measured_fidelity = {"error": str(exc)}
    reference.measured_fidelity = {"reference": True}


def probe_ids(folder: Path, manifest: Manifest) -> list[list[int]]:
    """Token ids of the parity probe texts (short, code, numbers, other languages, CISI, window edges,
    one long text), truncated to the model's max length."""
    from ..parity.probes import build_probe_set
    from ..tokenize import TextTokenizer

    texts = build_probe_set(tokenizer_path(folder, manifest.tokenizer), manifest.max_length).texts
    tokenizer = TextTokenizer.from_folder(folder, manifest.max_length, manifest.tokenizer.get("pad_token_id"))
    return [list(map(int, ids)) for ids in tokenizer.encode(list(texts), "end").ids]
