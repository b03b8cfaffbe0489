"""PyTorch reference outputs over the probe set, saved in one .npz file.

The file holds the texts (or query/document pairs), their token ids, the outputs (raw pooled embeddings,
before any L2 normalisation, or rerank logits) and provenance. It is read without pickle: strings and
provenance are stored as UTF-8 JSON in uint8 arrays, token ids as one flat array plus offsets.

torch, transformers and sentence-transformers are imported only inside the functions that run the model,
so `Reference.load` (used by the torch-free parity report) needs numpy alone.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from gte_onnx.errors import GteOnnxError, missing_dependency

from .probes import build_probe_set

FORMAT = "gte-onnx-reference/1"
# Padded tokens per PyTorch batch: keeps the memory of one batch bounded on a 2-core laptop.
TORCH_BATCH_TOKENS = 8192
TORCH_MAX_BATCH = 16


class ReferenceFileError(GteOnnxError, ValueError):
    """A reference .npz file is missing, unreadable or not in this tool's format."""

    code = "reference_file_error"


@dataclass
class Reference:
    task: str  # "embedding" | "rerank"
    groups: list[str]
    token_ids: list[np.ndarray]
    outputs: np.ndarray  # embeddings (n, dim) float32, or logits (n,) / (n, labels)
    provenance: dict[str, Any]
    texts: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    query_index: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.pairs) if self.task == "rerank" else len(self.texts)

    # ---- file I/O ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        strings = {
            "texts": self.texts,
            "pairs": [list(p) for p in self.pairs],
            "groups": self.groups,
            "query_index": self.query_index,
        }
        lengths = np.array([len(t) for t in self.token_ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.concatenate(self.token_ids).astype(np.int64) if self.token_ids else np.zeros(0, np.int64)
        key = "logits" if self.task == "rerank" else "embeddings"
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp,
            format=_json_bytes(FORMAT),
            task=_json_bytes(self.task),
            strings=_json_bytes(strings),
            provenance=_json_bytes(self.provenance),
            token_ids=flat,
            token_offsets=offsets,
            **{key: np.asarray(self.outputs, dtype=np.float32)},
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Reference":
        path = Path(path)
        if not path.is_file():
            raise ReferenceFileError(f"reference file {path} does not exist; make one with `gte-onnx reference`")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled object arrays), OSError
            raise ReferenceFileError(f"cannot read {path} as a reference .npz: {exc}") from None
        missing = [k for k in ("format", "task", "strings", "provenance", "token_ids", "token_offsets")
                   if k not in arrays]
        if missing:
            raise ReferenceFileError(f"{path} is not a gte-onnx reference file (missing {', '.join(missing)})")
        fmt = _from_json_bytes(arrays["format"], path)
        if fmt != FORMAT:
            raise ReferenceFileError(f"{path} has format {fmt!r}; this gte-onnx reads {FORMAT!r}")
        task = _from_json_bytes(arrays["task"], path)
        key = "logits" if task == "rerank" else "embeddings"
        if key not in arrays:
            raise ReferenceFileError(f"{path}: a {task} reference must hold {key!r}")
        strings = _from_json_bytes(arrays["strings"], path)
        offsets = arrays["token_offsets"]
        flat = arrays["token_ids"]
        token_ids = [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
        ref = cls(
            task=task,
            groups=list(strings.get("groups", [])),
            token_ids=token_ids,
            outputs=arrays[key],
            provenance=_from_json_bytes(arrays["provenance"], path),
            texts=list(strings.get("texts", [])),
            pairs=[tuple(p) for p in strings.get("pairs", [])],  # type: ignore[misc]
            query_index=list(strings.get("query_index", [])),
        )
        n = ref.size
        if n == 0 or len(ref.outputs) != n or len(ref.token_ids) != n or len(ref.groups) != n:
            raise ReferenceFileError(
                f"{path} is inconsistent: {n} inputs, {len(ref.outputs)} outputs, {len(ref.token_ids)} "
                f"token id rows, {len(ref.groups)} group labels"
            )
        if not np.all(np.isfinite(ref.outputs)):
            raise ReferenceFileError(f"{path}: the reference outputs hold NaN or inf")
        return ref


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def _from_json_bytes(array: np.ndarray, path: Path) -> Any:
    try:
        return json.loads(array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReferenceFileError(f"{path}: a metadata field is not valid JSON: {exc}") from None


# ---- running PyTorch ------------------------------------------------------------------------------------
def _imports():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise missing_dependency("torch and transformers", "parity", "Computing PyTorch reference outputs") from None
    return torch


def _batches(lengths: Sequence[int]) -> list[list[int]]:
    """Indices sorted by length, grouped so that a batch's padded size stays under TORCH_BATCH_TOKENS."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max([lengths[j] for j in current] + [lengths[i]])
        if current and (longest * (len(current) + 1) > TORCH_BATCH_TOKENS or len(current) >= TORCH_MAX_BATCH):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _has_sentence_transformers_files(folder: Path) -> bool:
    return (folder / "modules.json").is_file()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for dist in ("torch", "transformers", "sentence-transformers", "tokenizers", "gte-onnx"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def compute_reference(
    model: str,
    out: str | os.PathLike | None = None,
    random_weights: bool = False,
    seed: int = 0,
    config_overrides: dict[str, Any] | None = None,
    task: str | None = None,
    extra_texts: list[str] | None = None,
    long: bool = False,
    backend: str = "auto",
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> Reference:
    """Run PyTorch over the probe set and return (and with `out`, save) the reference.

    backend: "sentence-transformers" (needs the model folder's modules.json and real weights),
    "transformers", or "auto" (sentence-transformers where it applies).
    """
    torch = _imports()
    from gte_onnx.export.checkpoint import load_checkpoint, locate, read_max_length, read_pooling, saved_provenance

    if threads:
        torch.set_num_threads(int(threads))
    folder, model_id, revision = locate(model, None, need_weights=not random_weights)
    use_st = backend == "sentence-transformers" or (
        backend == "auto" and not random_weights and task != "rerank" and _has_sentence_transformers_files(folder)
    )
    if backend not in ("auto", "sentence-transformers", "transformers"):
        raise ValueError(f"backend must be auto, sentence-transformers or transformers, got {backend!r}")
    if use_st and random_weights:
        raise ValueError("the sentence-transformers backend needs real weights; use --backend transformers")

    started = time.perf_counter()
    if use_st:
        runner, info = _sentence_transformers_runner(torch, folder, model_id, revision)
    else:
        ckpt = load_checkpoint(model, random_weights, seed, config_overrides, task)
        runner, info = _transformers_runner(torch, ckpt, read_pooling, read_max_length)
    task = info["task"]
    probes = build_probe_set(folder / "tokenizer.json", info["max_length"], task, long, extra_texts)
    items: list = probes.pairs if task == "rerank" else probes.texts
    log(f"running {info['backend']} over {len(items)} probe inputs")
    token_ids, outputs = runner(items)
    # A checkpoint saved by `export --random-weights --save-checkpoint` holds seeded random weights: its
    # note says so, and the reference made from it says the same as the folder exported with it.
    note = {} if random_weights else saved_provenance(folder)
    provenance = {
        "model": str(model),
        "model_id": info.get("model_id", str(model)),
        "revision": info.get("revision"),
        "random_weights": bool(random_weights or note.get("random_weights")),
        "seed": seed if random_weights else note.get("seed"),
        "config_overrides": dict(config_overrides or note.get("config_overrides") or {}),
        "task": task,
        "backend": info["backend"],
        "architecture": info["architecture"],
        "dtype": "float32",
        "pooling": info.get("pooling", "none"),
        "normalized": False,  # outputs are raw pooled vectors; the runtime's default is below
        "normalize_default": info.get("normalize_default", False),
        "max_length": info["max_length"],
        "long_probes": bool(long),
        "user_texts": len(extra_texts or []),
        "versions": _versions(),
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ref = Reference(
        task=task,
        groups=probes.groups,
        token_ids=token_ids,
        outputs=outputs,
        provenance=provenance,
        texts=probes.texts,
        pairs=probes.pairs,
        query_index=probes.query_index,
    )
    if out is not None:
        ref.save(out)
        log(f"wrote {out} ({len(items)} inputs, {sum(len(t) for t in token_ids)} tokens, {provenance['seconds']} s)")
    return ref


def _run_batches(items: Sequence, lengths: list[int], run_batch) -> tuple[list[np.ndarray], np.ndarray]:
    token_ids: list[np.ndarray | None] = [None] * len(items)
    outputs: list[np.ndarray | None] = [None] * len(items)
    for batch in _batches(lengths):
        ids, out = run_batch([items[i] for i in batch])
        for j, i in enumerate(batch):
            token_ids[i] = ids[j]
            outputs[i] = out[j]
    return token_ids, np.stack(outputs).astype(np.float32)  # type: ignore[arg-type]


def _unpadded(input_ids, attention_mask) -> list[np.ndarray]:
    ids = input_ids.cpu().numpy()
    mask = attention_mask.cpu().numpy().astype(bool)
    return [row[m].astype(np.int64) for row, m in zip(ids, mask)]


def _transformers_runner(torch, ckpt, read_pooling, read_max_length):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ckpt.folder)
    max_length = read_max_length(ckpt.folder, ckpt.config)
    pooling, normalize_default, _ = read_pooling(ckpt.folder, ckpt.task, ckpt.config)
    model = ckpt.model
    accepts_token_types = "token_type_ids" in model.forward.__code__.co_varnames

    def encode(batch):
        if ckpt.task == "rerank":
            queries, docs = [q for q, _ in batch], [d for _, d in batch]
            return tokenizer(queries, docs, padding=True, truncation="only_second", max_length=max_length,
                             return_tensors="pt")
        return tokenizer(list(batch), padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    def run_batch(batch):
        enc = encode(batch)
        feed = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if accepts_token_types and "token_type_ids" in enc:
            feed["token_type_ids"] = enc["token_type_ids"]
        with torch.inference_mode():
            out = model(**feed)
        if ckpt.task == "rerank":
            logits = out.logits.float()
            result = logits[:, 0] if logits.shape[1] == 1 else logits
        else:
            hidden = out.last_hidden_state.float()
            if pooling == "cls":
                result = hidden[:, 0]
            else:
                mask = enc["attention_mask"].unsqueeze(-1).float()
                result = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return _unpadded(enc["input_ids"], enc["attention_mask"]), result.cpu().numpy()

    def runner(items):
        lengths = [len(ids) for ids in _lengths_of(tokenizer, items, ckpt.task, max_length)]
        return _run_batches(items, lengths, run_batch)

    info = {
        "task": ckpt.task,
        "backend": "transformers",
        "model_id": ckpt.model_id,
        "revision": ckpt.revision,
        "architecture": type(model).__name__,
        "pooling": pooling if ckpt.task == "embedding" else "none",
        "normalize_default": normalize_default,
        "max_length": max_length,
    }
    return runner, info


def _lengths_of(tokenizer, items, task, max_length):
    if task == "rerank":
        return tokenizer([q for q, _ in items], [d for _, d in items], truncation="only_second",
                         max_length=max_length)["input_ids"]
    return tokenizer(list(items), truncation=True, max_length=max_length)["input_ids"]


def _sentence_transformers_runner(torch, folder: Path, model_id: str, revision: str | None):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise missing_dependency("sentence-transformers", "parity", "The sentence-transformers reference") from None
    from gte_onnx.export.checkpoint import read_max_length, read_pooling

    st = SentenceTransformer(str(folder), device="cpu", trust_remote_code=False)
    auto_model = st[0].auto_model
    # The export caps the length the same way (ST's max_seq_length, else the tokenizer's, else positions).
    max_length = read_max_length(folder, auto_model.config)
    st.max_seq_length = max_length
    pooling, normalize_default, _ = read_pooling(folder, "embedding", auto_model.config)
    modules = [m for m in st if type(m).__name__ != "Normalize"]  # raw pooled vectors, as the runtime's
    preprocess = getattr(st, "preprocess", None) or st.tokenize

    def run_batch(batch):
        features = preprocess(list(batch))
        with torch.inference_mode():
            for module in modules:
                features = module(features)
        emb = features["sentence_embedding"].float().cpu().numpy()
        return _unpadded(features["input_ids"], features["attention_mask"]), emb

    def runner(items):
        lengths = [len(ids) for ids in st.tokenizer(list(items), truncation=True, max_length=max_length)["input_ids"]]
        return _run_batches(items, lengths, run_batch)

    from gte_onnx.export.checkpoint import saved_provenance

    source = saved_provenance(folder)
    info = {
        "task": "embedding",
        "backend": "sentence-transformers",
        # A checkpoint saved by `gte-onnx export --save-checkpoint` knows the hub id it came from.
        "model_id": source.get("model_id") or model_id,
        "revision": source.get("revision") or revision,
        "architecture": type(auto_model).__name__,
        "pooling": pooling,
        "normalize_default": normalize_default,
        "max_length": max_length,
    }
    return runner, info

