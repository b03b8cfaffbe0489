"""The worker process: one per measured variant (or PyTorch baseline), driven over a JSON-lines pipe.

Why a process per variant: peak RSS is a per-process figure, and a variant's session, arena and caches must
not be counted against another. All workers stay alive for the whole run so the parent can interleave
their repeats (A/B/A/B...) without reloading; only one of them computes at any time.

Run as `python -m gte_onnx.bench.worker`. The first line on stdin is the spec, then one command per line;
every command gets exactly one JSON line back on the protocol pipe. Anything a library prints goes to
stderr (the parent keeps it in a log file), because fd 1 is redirected there before any import.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .config import ORT_SPINNING_CONFIG
from .rss import current_rss_bytes, peak_rss_bytes, reset_peak_rss
from gte_onnx.defaults import CPU




class VariantBackend:
    """A variant's session exactly as the runtime builds it (gte_onnx.inference.session.OnnxModel), plus the bench's
    thread-spinning setting."""

    def __init__(self, folder: str, variant: str, provider: str, threads: int | None, mode: str = "shapes",
                 spinning: str = "stop"):
        self.folder, self.variant, self.provider, self.threads = folder, variant, provider, threads
        self.mode = mode
        self.session_config = ORT_SPINNING_CONFIG[spinning]
        self.model = None
        self.embedder = None

    def load(self) -> dict[str, Any]:
        import onnxruntime

        if self.mode == "corpus":
            from ..embedder import Embedder

            self.embedder = Embedder(self.folder, variant=self.variant, providers=[self.provider],
                                     threads=self.threads, session_config=self.session_config)
            provider, threads, variant = self.embedder.provider, self.embedder.threads, self.embedder.variant
        else:
            from gte_onnx.folder.manifest import Manifest
            from gte_onnx.inference.session import OnnxModel

            manifest = Manifest.load(self.folder)
            self.model = OnnxModel(self.folder, manifest, self.variant, [self.provider], self.threads,
                                   session_config=self.session_config)
            provider, threads, variant = self.model.provider, self.model.threads, self.model.variant.name
        return {"provider": provider, "threads": threads, "variant": variant,
                "onnxruntime": onnxruntime.__version__, "session_config": dict(self.session_config)}

    def prepare(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return self.model.feed(input_ids, np.ones_like(input_ids) if attention_mask is None else attention_mask)

    def hidden(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(self.model.run(self.prepare(input_ids, attention_mask)), dtype=np.float32)

    def run(self, feed: Mapping[str, np.ndarray]) -> float:
        start = time.perf_counter()
        self.model.run(feed)
        return time.perf_counter() - start

    def run_corpus(self, texts: Sequence[str], batch_size: int) -> dict[str, Any]:
        """End to end through Embedder.encode: tokenization, batching, session, pooling."""
        if self.embedder is None:
            raise RuntimeError("this worker was loaded for shapes, not for the corpus mode")
        start = time.perf_counter()
        out = self.embedder.encode(list(texts), batch_size=batch_size, show_progress=False)
        seconds = time.perf_counter() - start
        from .corpus import check_corpus_vectors

        check = check_corpus_vectors(out, list(texts),
                                     lambda t: self.embedder.encode([t], batch_size=1, show_progress=False)[0])
        return {
            "seconds": seconds,
            "texts": int(out.shape[0]),
            "tokens": int(sum(min(n, self.embedder.max_length) for n in out.token_counts)),
            "truncated": len(out.truncated),
            "check": check,
        }


def import_library(spec: Mapping[str, Any]) -> float:
    """Import the backend's engine up front and time it: a cold start's cost apart from the model's."""
    start = time.perf_counter()
    if spec.get("kind") in ("torch", "peer_build"):
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            pass  # TorchBackend.load() raises the error with the install hint
    elif spec.get("kind") == "peer" and spec.get("engine") == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            pass  # PeerBackend.load() raises the error with the install hint
    elif spec.get("kind") == "peer" and spec.get("engine") == "llama.cpp":
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            pass  # LlamaCppBackend.load() raises the error with the install hint
    else:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            pass  # OnnxModel raises the error with the install hint
    return time.perf_counter() - start


def make_backend(spec: Mapping[str, Any]):
    kind = spec.get("kind")
    if kind == "onnx":
        return VariantBackend(spec["folder"], spec["variant"], spec["provider"], spec.get("threads"),
                           spec.get("mode", "shapes"), spec.get("spinning", "stop"))
    if kind == "torch":
        from .torch_baseline import TorchBackend

        return TorchBackend(spec["torch"], spec["dtype"], spec.get("threads"), spec["folder"])
    if kind == "peer" and spec.get("engine") == "llama.cpp":
        from .llamacpp_peer import LlamaCppBackend

        return LlamaCppBackend(spec)
    if kind == "peer" and spec.get("engine") == "gte-onnx":
        # A hub peer: the imported transformers.js file on our runtime, exactly as a user loads it.
        return VariantBackend(spec["hub_folder"], spec["variant"], CPU, spec.get("threads"),
                           "shapes", spec.get("spinning", "stop"))
    if kind in ("peer", "peer_build"):
        from .peer_backends import PeerBackend, PeerBuilder

        return PeerBackend(spec) if kind == "peer" else PeerBuilder(spec)
    raise ValueError(f"unknown worker kind {kind!r}")


class WorkerLoop:
    def __init__(self, spec: Mapping[str, Any]):
        self.spec = dict(spec)
        self.backend = make_backend(spec)
        self.inputs: dict[str, Any] = {}
        self.corpus: list[str] = []

    def _pool(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, H) unnormalised vectors: the backend's own pooling (llama.cpp) or the folder's over its
        last hidden state."""
        from gte_onnx.folder.manifest import Manifest
        from gte_onnx.inference.pooling import pool

        if getattr(self.backend, "pooled_natively", False):
            return np.asarray(self.backend.pooled(ids, mask), dtype=np.float64)
        pooling = Manifest.load(self.spec["folder"]).pooling
        return pool(pooling, self.backend.hidden(ids, mask), mask).astype(np.float64)

    def pooled(self, texts_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """The model folder's pooling of each probe input, one input at a time (no padding involved),
        unnormalised: what --fidelity compares against PyTorch fp32."""
        out = []
        for ids in texts_ids:
            row = np.asarray([ids], dtype=np.int64)
            out.append(self._pool(row, np.ones_like(row))[0].tolist())
        return out

    def pooled_batches(self, batches: Sequence[Sequence[Sequence[int]]]) -> list[list[float]]:
        """Each batch of inputs right-padded with the folder's pad id and run as one call with its mask
        (a mixed-length batch, as a corpus or data-set evaluation runs); the vectors in input order."""
        from gte_onnx.folder.manifest import Manifest

        pad = int(Manifest.load(self.spec["folder"]).tokenizer.get("pad_token_id") or 0)
        out: list[list[float]] = []
        for rows in batches:
            width = max(len(r) for r in rows)
            ids = np.full((len(rows), width), pad, dtype=np.int64)
            mask = np.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, : len(r)], mask[i, : len(r)] = r, 1
            out.extend(self._pool(ids, mask).tolist())
        return out

    def handle(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        if op == "load":
            start = time.perf_counter()
            info = self.backend.load()
            return {"load_s": time.perf_counter() - start, "rss_bytes": current_rss_bytes(), "info": info}
        if op == "set_input":
            ids = np.asarray(cmd["ids"], dtype=np.int64)
            self.inputs = {cmd["key"]: self.backend.prepare(ids)}  # one shape at a time: free the last
            return {}
        if op == "run":
            return {"seconds": self.backend.run(self.inputs[cmd["key"]])}
        if op == "pooled":
            return {"vectors": self.pooled(cmd["ids"])}
        if op == "pooled_batches":
            return {"vectors": self.pooled_batches(cmd["batches"])}
        if op == "reset_peak":
            return {"supported": reset_peak_rss()}
        if op == "peak":
            return {"peak_rss_bytes": peak_rss_bytes(), "rss_bytes": current_rss_bytes()}
        if op == "set_corpus":
            self.inputs = {}
            self.corpus = list(cmd["texts"])
            return {}
        if op == "run_corpus":
            return self.backend.run_corpus(self.corpus, int(cmd.get("batch_size", 32)))
        raise ValueError(f"unknown command {op!r}")


def main() -> int:
    # The protocol owns the real stdout; everything printed by libraries goes to stderr instead.
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(payload: dict[str, Any]) -> None:
        protocol.write(json.dumps(payload) + "\n")
        protocol.flush()

    try:
        spec = json.loads(sys.stdin.readline())
        loop = WorkerLoop(spec)
        import_s = import_library(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which names the worker
        reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    reply({"ok": True, "pid": os.getpid(), "import_s": import_s})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            reply({"ok": True})
            return 0
        try:
            reply({"ok": True, **loop.handle(cmd)})
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
