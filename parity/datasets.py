"""Loaders for the evaluation text shipped in parity/data (STS-B, CISI); see data/SOURCES.md.

Each loader also accepts a path (a file or a folder holding the usual file names) so users can point
`--data PATH` at their own copy. Malformed files raise DataFormatError naming the file and line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gte_onnx.errors import GteOnnxError

DATA_DIR = Path(__file__).resolve().parent / "data"
STS_SPLITS = ("test", "dev")
CISI_FILES = ("CISI.ALL", "CISI.QRY", "CISI.REL")


class DataFormatError(GteOnnxError, ValueError):
    """An evaluation data file is missing or does not have the expected format."""

    code = "data_format_error"


# ---- STS-B --------------------------------------------------------------------------------------------
def _sts_file(split: str, path: str | os.PathLike | None) -> Path:
    if path is None:
        if split not in STS_SPLITS:
            raise ValueError(f"STS-B split must be one of {STS_SPLITS}, got {split!r}")
        return DATA_DIR / "stsbenchmark" / f"sts-{split}.csv"
    p = Path(path)
    if p.is_dir():
        for candidate in (p / f"sts-{split}.csv", p / "stsbenchmark" / f"sts-{split}.csv"):
            if candidate.is_file():
                return candidate
        raise DataFormatError(f"{p} holds no sts-{split}.csv (looked in it and in stsbenchmark/)")
    return p


def load_sts_b(
    split: str = "test", path: str | os.PathLike | None = None
) -> tuple[list[str], list[str], np.ndarray]:
    """(sentences1, sentences2, gold scores 0-5 as float64) of an STS-B split.

    Format: tab-separated genre, file, years, id, score, sentence1, sentence2; some rows carry extra
    trailing fields (sources), which are ignored.
    """
    file = _sts_file(split, path)
    if not file.is_file():
        raise DataFormatError(f"STS-B file {file} does not exist")
    s1: list[str] = []
    s2: list[str] = []
    gold: list[float] = []
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{file} is not UTF-8 text: {exc}") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 7:
            raise DataFormatError(
                f"{file}:{lineno}: expected at least 7 tab-separated fields "
                f"(genre, file, years, id, score, sentence1, sentence2), got {len(fields)}"
            )
        try:
            score = float(fields[4])
        except ValueError:
            raise DataFormatError(f"{file}:{lineno}: score {fields[4]!r} is not a number") from None
        if not 0.0 <= score <= 5.0:
            raise DataFormatError(f"{file}:{lineno}: score {score} is outside 0-5")
        a, b = fields[5].strip(), fields[6].strip()
        if not a or not b:
            raise DataFormatError(f"{file}:{lineno}: empty sentence")
        s1.append(a)
        s2.append(b)
        gold.append(score)
    if not gold:
        raise DataFormatError(f"{file} holds no STS pairs")
    return s1, s2, np.asarray(gold, dtype=np.float64)


# ---- CISI ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrievalSet:
    documents: dict[str, str]  # doc id -> title + abstract
    queries: dict[str, str]  # query id -> text (judged queries only)
    qrels: dict[str, set[str]]  # query id -> relevant doc ids


_FIELD = re.compile(r"^\.([A-Z])(?:\s+(.*))?$")


def _parse_smart(file: Path) -> dict[str, dict[str, str]]:
    """Parse the SMART format (.I id, then .T/.A/.W/.X/... sections) into id -> {letter: text}."""
    records: dict[str, dict[str, str]] = {}
    current: dict[str, list[str]] | None = None
    section: str | None = None
    try:
        lines = file.read_text(encoding="utf-8", errors="strict").splitlines()
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{file} is not UTF-8 text: {exc}") from None
    for lineno, line in enumerate(lines, start=1):
        match = _FIELD.match(line.rstrip())
        if match:
            letter, rest = match.group(1), (match.group(2) or "").strip()
            if letter == "I":
                if not rest:
                    raise DataFormatError(f"{file}:{lineno}: '.I' without a record id")
                if rest in records:
                    raise DataFormatError(f"{file}:{lineno}: record id {rest} appears twice")
                current = {}
                records[rest] = current  # type: ignore[assignment]
                section = None
                continue
            if current is None:
                raise DataFormatError(f"{file}:{lineno}: field .{letter} before the first .I line")
            section = letter
            current.setdefault(section, [])
            if rest:
                current[section].append(rest)
            continue
        if current is None:
            if line.strip():
                raise DataFormatError(f"{file}:{lineno}: text before the first .I line")
            continue
        if section is not None:
            current[section].append(line.strip())
    return {
        rid: {k: " ".join(x for x in v if x) for k, v in fields.items()}  # type: ignore[union-attr]
        for rid, fields in records.items()
    }


def _cisi_files(path: str | os.PathLike | None) -> dict[str, Path]:
    folder = DATA_DIR / "cisi" if path is None else Path(path)
    if not folder.is_dir():
        raise DataFormatError(f"CISI path {folder} is not a folder (expected CISI.ALL, CISI.QRY, CISI.REL)")
    if not (folder / "CISI.ALL").is_file() and (folder / "cisi").is_dir():
        folder = folder / "cisi"
    files = {name: folder / name for name in CISI_FILES}
    missing = [name for name, p in files.items() if not p.is_file()]
    if missing:
        raise DataFormatError(f"CISI folder {folder} lacks {', '.join(missing)}")
    return files


def load_cisi(path: str | os.PathLike | None = None) -> RetrievalSet:
    """Documents (title + abstract), the judged queries (76 in CISI) and their relevant documents."""
    files = _cisi_files(path)
    docs_raw = _parse_smart(files["CISI.ALL"])
    queries_raw = _parse_smart(files["CISI.QRY"])
    documents: dict[str, str] = {}
    for doc_id, fields in docs_raw.items():
        text = ". ".join(x for x in (fields.get("T", ""), fields.get("W", "")) if x)
        if not text:
            raise DataFormatError(f"{files['CISI.ALL']}: document {doc_id} has neither title nor abstract")
        documents[doc_id] = text
    if not documents:
        raise DataFormatError(f"{files['CISI.ALL']} holds no documents")

    qrels: dict[str, set[str]] = {}
    rel_file = files["CISI.REL"]
    for lineno, line in enumerate(rel_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 2 or not fields[0].isdigit() or not fields[1].isdigit():
            raise DataFormatError(f"{rel_file}:{lineno}: expected 'query_id doc_id ...', got {line!r}")
        qid, did = fields[0], fields[1]
        if did not in documents:
            raise DataFormatError(f"{rel_file}:{lineno}: document {did} is not in CISI.ALL")
        qrels.setdefault(qid, set()).add(did)

    # The query text is the .W section; only judged queries are kept (unjudged ones score 0 by definition).
    queries: dict[str, str] = {}
    for qid in qrels:
        fields = queries_raw.get(qid)
        if fields is None:
            raise DataFormatError(f"{rel_file}: query {qid} is judged but not in CISI.QRY")
        text = fields.get("W", "").strip()
        if not text:
            raise DataFormatError(f"{files['CISI.QRY']}: query {qid} has no .W text")
        queries[qid] = text
    return RetrievalSet(documents=documents, queries=queries, qrels=qrels)
