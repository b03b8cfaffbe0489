"""The PyTorch baselines: fp32 (sdpa attention) and bf16 autocast, on the same inputs as the ONNX rows.

This is the only module of gte_onnx.bench that touches torch, and only inside TorchBackend.load(), which
runs in a worker process of its own; resolving the spec (which model to build) is torch-free.

The model is built by the exporter's own loader (gte_onnx.export.checkpoint), so `--torch auto` rebuilds
exactly what the folder was exported from: the manifest's source records the model id, whether the
weights were random, the seed and any config overrides.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelFolderError, missing_dependency
from gte_onnx.folder.manifest import Manifest

TORCH_DTYPES = ("fp32", "bf16")


def resolve_torch_spec(arg: str, manifest: Manifest) -> dict[str, Any]:
    """Turn --torch's argument into a JSON-able build spec.

    "auto"            the model the manifest's source names (random weights with its seed if so);
    "random:<model>"  seeded random weights on <model>'s config (a hub id with shipped config, or a folder);
    anything else     a hub id or a local checkpoint folder with real weights.
    """
    arg = (arg or "").strip()
    if not arg:
        raise InvalidInputError("--torch needs a model: 'auto', a hub id, a checkpoint folder or 'random:<model>'")
    source = dict(manifest.source or {})
    source_id = source.get("model_id") or source.get("model")
    overrides = dict(source.get("config_overrides") or {})
    if arg == "auto":
        if not source_id:
            raise ModelFolderError(
                "--torch auto: the manifest's source does not name the model it was exported from; "
                "pass the model explicitly (--torch HUB_ID, --torch FOLDER or --torch random:HUB_ID)"
            )
        random_weights = bool(source.get("random_weights", False))
        return {
            "model": str(source_id),
            "random_weights": random_weights,
            "seed": int(source.get("seed") or 0) if random_weights else None,
            "config_overrides": overrides,
            "task": manifest.task,
        }
    if arg.startswith("random:"):
        model = arg[len("random:"):].strip()
        if not model:
            raise InvalidInputError("--torch random:<model> needs a model after 'random:'")
        same = model == source_id and bool(source.get("random_weights"))
        return {
            "model": model,
            "random_weights": True,
            # The same seed and overrides as the export when it is the same model, so the weights match.
            "seed": int(source.get("seed") or 0) if same else 0,
            "config_overrides": overrides if same else {},
            "task": manifest.task,
        }
    return {"model": arg, "random_weights": False, "seed": None, "config_overrides": {}, "task": manifest.task}


def describe_spec(spec: Mapping[str, Any]) -> str:
    if spec.get("random_weights"):
        return f"random:{spec['model']} (seed {spec.get('seed')})"
    return str(spec["model"])


class TorchBackend:
    """A PyTorch model in one worker process, timed on the same token ids as the ONNX sessions."""

    def __init__(self, spec: Mapping[str, Any], dtype: str, threads: int | None, folder: str | Path):
        if dtype not in TORCH_DTYPES:
            raise InvalidInputError(f"torch dtype must be one of {TORCH_DTYPES}, got {dtype!r}")
        self.spec = dict(spec)
        self.dtype = dtype
        self.threads = threads
        self.folder = Path(folder)  # the ONNX folder: its tokenizer and manifest serve the corpus mode
        self.model = None
        self._torch = None
        self._corpus_tools = None  # (manifest, tokenizer), built once outside the timed region

    def load(self) -> dict[str, Any]:
        try:
            import torch
        except ImportError:
            raise missing_dependency("torch", "export", "The PyTorch baseline (--torch)") from None
        try:
            from ..export.checkpoint import load_checkpoint
        except ImportError as exc:
            raise missing_dependency("transformers", "export", f"The PyTorch baseline (--torch) ({exc})") from None
        self._torch = torch
        if self.threads:
            torch.set_num_threads(int(self.threads))
        checkpoint = load_checkpoint(
            self.spec["model"],
            random_weights=bool(self.spec.get("random_weights")),
            seed=int(self.spec.get("seed") or 0),
            config_overrides=self.spec.get("config_overrides") or None,
            task=self.spec.get("task"),
        )
        self.model = checkpoint.model.eval()
        attn = getattr(self.model.config, "_attn_implementation", None)
        return {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "attn_implementation": attn,
            "dtype": self.dtype,
            "model": describe_spec(self.spec),
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
        }

    def prepare(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> dict[str, Any]:
        torch = self._torch
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        if attention_mask is None:
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return {"input_ids": ids, "attention_mask": torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64))}

    def _forward(self, feed: Mapping[str, Any]):
        torch = self._torch
        with torch.inference_mode():
            if self.dtype == "bf16":
                with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                    out = self.model(**feed)
            else:
                out = self.model(**feed)
        # Embedding models return last_hidden_state, rerank models logits; either is the first item.
        return out[0]

    def hidden(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        return self._forward(self.prepare(input_ids, attention_mask)).float().numpy()

    def run(self, feed: Mapping[str, Any]) -> float:
        start = time.perf_counter()
        self._forward(feed)
        return time.perf_counter() - start

    def run_corpus(self, texts: Sequence[str], batch_size: int) -> dict[str, Any]:
        """Embed texts the way Embedder.encode does (same tokenizer, same token-budget batches, same
        pooling), with PyTorch doing the forward passes: only the engine differs from the ONNX row."""
        from gte_onnx.defaults import MAX_BATCH_TOKENS
        from gte_onnx.inference.batching import pad_batch, plan_batches
        from gte_onnx.inference.pooling import l2_normalize, pool
        from gte_onnx.inference.tokenize import TextTokenizer

        if self._corpus_tools is None:
            manifest = Manifest.load(self.folder)
            if manifest.task != "embedding":
                raise InvalidInputError("the corpus mode embeds documents: it needs an embedding model folder")
            self._corpus_tools = manifest, TextTokenizer.from_folder(
                self.folder, manifest.max_length, manifest.tokenizer.get("pad_token_id"))
        manifest, tokenizer = self._corpus_tools
        torch = self._torch
        start = time.perf_counter()
        encoded = tokenizer.encode(list(texts), "end")
        out = np.zeros((len(encoded.ids), manifest.dim), dtype=np.float32)
        for rows in plan_batches(encoded.lengths, batch_size, MAX_BATCH_TOKENS):
            ids, mask = pad_batch([encoded.ids[i] for i in rows], tokenizer.pad_token_id)
            hidden = self._forward({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)})
            vectors = pool(manifest.pooling, hidden.float().numpy(), mask)
            out[list(rows)] = l2_normalize(vectors) if manifest.normalize else vectors
        seconds = time.perf_counter() - start
        from .corpus import check_corpus_vectors

        def alone(text: str) -> np.ndarray:
            ids = np.asarray([tokenizer.encode([text], "end").ids[0]], dtype=np.int64)
            vector = pool(manifest.pooling, self.hidden(ids), np.ones_like(ids))
            return (l2_normalize(vector) if manifest.normalize else vector)[0]

        return {
            "seconds": seconds,
            "texts": len(encoded.ids),
            "tokens": int(sum(encoded.lengths)),
            "truncated": len(encoded.truncated),
            "check": check_corpus_vectors(out, list(texts), alone),
        }
