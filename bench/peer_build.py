"""Building the bench's peers before the timing: all missing ones in one worker process, cached."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from gte_onnx.progress import Progress
from .config import BenchConfig
from .contenders import Contender, folder_bytes
from .pool import WorkerError, WorkerProcess


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
