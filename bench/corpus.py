"""The corpus mode's texts: the CISI documents shipped with gte_onnx.parity, or the user's own file.

Unlike the BxL shapes, a corpus is real mixed-length text and goes through Embedder.encode end to end
(tokenization, length sorting, token-budget batches, session, pooling), so its figure is what a user
embedding their own documents would see.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InvalidInputError

CISI = "cisi"


def load_cisi_documents() -> list[str]:
    """The 1,460 CISI documents (title + abstract), in document-id order."""
    try:
        from ..parity.datasets import load_cisi
    except ImportError:
        raise InvalidInputError(
            "the CISI corpus ships with gte_onnx.parity, which is not installed here; "
            "pass --corpus FILE (one document per line, or JSON lines with a 'text' field)"
        ) from None
    documents = load_cisi().documents
    return [documents[k] for k in sorted(documents, key=lambda k: int(k) if k.isdigit() else k)]


def load_corpus_file(path: str | Path) -> list[str]:
    """One document per non-empty line; a .jsonl file holds objects with a 'text' field (or strings)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"corpus file {path} does not exist (use --corpus cisi or a text file)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"corpus file {path} is not UTF-8 text: {exc}") from None
    texts: list[str] = []
    as_json = path.suffix.lower() in (".jsonl", ".ndjson")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not as_json:
            texts.append(line.strip())
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"{path}:{lineno}: expected a string or an object with a non-empty 'text'")
        texts.append(text)
    if not texts:
        raise InvalidInputError(f"corpus file {path} holds no text")
    return texts


def load_corpus(spec: str, limit: int | None = None) -> tuple[str, list[str]]:
    """(name for the table, texts). `limit` keeps the first N documents."""
    if limit is not None and limit < 1:
        raise InvalidInputError(f"--corpus-limit must be at least 1, got {limit}")
    if spec.strip().lower() == CISI:
        name, texts = CISI, load_cisi_documents()
    else:
        name, texts = Path(spec).name, load_corpus_file(spec)
    if limit is not None and limit < len(texts):
        texts = texts[:limit]
        name = f"{name}[:{limit}]"
    return name, texts


# The corpus mode's vector check: a time is reported only for vectors that are finite and that equal,
# within this cosine, the same documents embedded one at a time (no padding) by the same engine.
CHECK_DOCUMENTS = 8
CHECK_COSINE = 0.999


def check_corpus_vectors(vectors, texts, embed_alone, n: int = CHECK_DOCUMENTS) -> dict:
    """{"valid", "nonfinite_rows", "cosine_min_vs_alone", "why"}; embed_alone(text) -> one vector."""
    import numpy as np

    vectors = np.asarray(vectors, dtype=np.float64)
    bad = int(np.sum(~np.all(np.isfinite(vectors), axis=1)))
    sample = sorted(set(np.linspace(0, len(texts) - 1, min(n, len(texts))).astype(int).tolist()))
    alone = np.stack([np.asarray(embed_alone(texts[i]), dtype=np.float64) for i in sample])
    a = vectors[sample]
    cos = np.sum(a * alone, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(alone, axis=1), 1e-30)
    worst = float(np.min(np.where(np.isfinite(cos), cos, -1.0)))
    why = []
    if bad:
        why.append(f"{bad} of {len(vectors)} vectors are not finite")
    if worst < CHECK_COSINE:
        why.append(f"a batched vector has cosine {worst:.4f} with the same document alone (< {CHECK_COSINE})")
    return {"valid": not why, "nonfinite_rows": bad, "cosine_min_vs_alone": worst, "why": "; ".join(why)}
