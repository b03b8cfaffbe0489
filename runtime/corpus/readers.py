"""Corpus files -> (id, text) records: JSON lines, CSV/TSV, Parquet or plain text (one document a line).

One parser serves both engines: the local job reads the file as a stream, the Ray job hands the same
function the file's bytes, so ids and texts are the same whichever engine ran.

Ids: the value of `id_field` as a string when given; otherwise the document's line number (text, JSON lines)
or data-row number (CSV, TSV, Parquet), counting from 1, as an int. Blank lines are not documents but keep
their numbers. With `title_field`, a non-empty title is joined with the text as `title + title_separator +
text` (a single space by default, as BEIR does); a missing or empty title leaves the text alone.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from gte_onnx.errors import CorpusFormatError, missing_dependency

FORMATS = ("jsonl", "csv", "tsv", "parquet", "text")
_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv",
              ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".text": "text"}


@dataclass(frozen=True)
class CorpusFormat:
    """How to read a corpus file into (id, text) records."""

    format: str = "text"
    text_field: str = "text"
    id_field: str | None = None
    title_field: str | None = None
    title_separator: str = " "

    def settings(self) -> dict:
        return {"format": self.format, "text_field": self.text_field, "id_field": self.id_field,
                "title_field": self.title_field, "title_separator": self.title_separator}


def detect_format(path: str | Path, explicit: str | None = None) -> str:
    if explicit:
        if explicit not in FORMATS:
            raise CorpusFormatError(f"--format must be one of {FORMATS}, got {explicit!r}")
        return explicit
    suffixes = [s.lower() for s in Path(path).suffixes]
    for suffix in reversed(suffixes):
        if suffix in _BY_SUFFIX:
            return _BY_SUFFIX[suffix]
    return "text"


def iter_records(stream: BinaryIO, spec: CorpusFormat, name: str) -> Iterator[tuple[object, str]]:
    """(id, text) of every document in a binary stream, in file order."""
    if spec.format == "text":
        return _text_records(stream, name)
    if spec.format == "jsonl":
        return _jsonl_records(stream, spec, name)
    if spec.format in ("csv", "tsv"):
        return _csv_records(stream, spec, name)
    return _parquet_records(stream, spec, name)


def read_corpus(path: str | Path, spec: CorpusFormat) -> Iterator[tuple[object, str]]:
    """Stream a corpus file's records; the file is opened lazily and closed when the iterator ends."""
    path = Path(path)
    if not path.is_file():
        raise CorpusFormatError(f"corpus file {path} does not exist")
    with open(path, "rb") as stream:
        yield from iter_records(stream, spec, str(path))


def count_records(path: str | Path, spec: CorpusFormat) -> int:
    """How many documents the file holds (a cheap pass: no tokenizing), for the progress bar's ETA."""
    if spec.format == "parquet":
        with open(path, "rb") as stream:
            return _parquet_file(stream, str(path)).metadata.num_rows
    if spec.format in ("text", "jsonl"):
        with open(path, "rb") as stream:
            return sum(1 for line in stream if line.strip())
    return sum(1 for _ in read_corpus(path, spec))


def _decode(raw: bytes, name: str, lineno: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusFormatError(f"{name}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    text = text[:-1] if text.endswith("\n") else text
    text = text[:-1] if text.endswith("\r") else text
    return text.lstrip("\ufeff") if lineno == 1 else text


def _lines(stream: BinaryIO, name: str) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; only '\\n' (or '\\r\\n') ends a line."""
    for lineno, raw in enumerate(stream, start=1):
        line = _decode(raw, name, lineno)
        if line.strip():
            yield lineno, line


def _text_records(stream: BinaryIO, name: str) -> Iterator[tuple[object, str]]:
    for lineno, line in _lines(stream, name):
        yield lineno, line


def _field_text(record: dict, spec: CorpusFormat, where: str) -> str:
    if spec.text_field not in record:
        fields = ", ".join(map(str, list(record)[:12]))
        raise CorpusFormatError(f"{where}: no field {spec.text_field!r} (fields: {fields}); pass --text-field")
    text = record[spec.text_field]
    if not isinstance(text, str):
        raise CorpusFormatError(f"{where}: field {spec.text_field!r} is {type(text).__name__}, not text")
    title = record.get(spec.title_field) if spec.title_field else None
    if title is not None and not isinstance(title, str):
        raise CorpusFormatError(f"{where}: field {spec.title_field!r} is {type(title).__name__}, not text")
    return f"{title.strip()}{spec.title_separator}{text}" if title and title.strip() else text


def _field_id(record: dict, spec: CorpusFormat, number: int, where: str) -> object:
    if spec.id_field is None:
        return number
    value = record.get(spec.id_field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise CorpusFormatError(f"{where}: no value for the id field {spec.id_field!r}")
    return str(value)


def _jsonl_records(stream: BinaryIO, spec: CorpusFormat, name: str) -> Iterator[tuple[object, str]]:
    for lineno, line in _lines(stream, name):
        where = f"{name}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusFormatError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise CorpusFormatError(f"{where}: a JSON line must be an object, got {type(record).__name__}")
        yield _field_id(record, spec, lineno, where), _field_text(record, spec, where)


def _csv_records(stream: BinaryIO, spec: CorpusFormat, name: str) -> Iterator[tuple[object, str]]:
    csv.field_size_limit(sys.maxsize)  # documents can be long; the default limit is 128 KiB
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.DictReader(text, delimiter="\t" if spec.format == "tsv" else ",")
    try:
        for row_number, row in enumerate(reader, start=1):
            where = f"{name}: row {row_number} (line {reader.line_num})"
            yield _field_id(row, spec, row_number, where), _field_text(row, spec, where)
    except UnicodeDecodeError as exc:
        raise CorpusFormatError(f"{name}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise CorpusFormatError(f"{name}: line {reader.line_num}: malformed CSV ({exc})") from None
    finally:
        text.detach()


def _parquet_file(stream: BinaryIO, name: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise missing_dependency("pyarrow", "corpus", "reading Parquet corpora") from None
    try:
        return pq.ParquetFile(stream)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends for a file that is not Parquet
        raise CorpusFormatError(f"{name}: not a Parquet file ({exc})") from None


def _parquet_records(stream: BinaryIO, spec: CorpusFormat, name: str) -> Iterator[tuple[object, str]]:
    file = _parquet_file(stream, name)
    present = set(file.schema_arrow.names)
    wanted = [f for f in (spec.text_field, spec.id_field, spec.title_field) if f and f in present]
    if spec.text_field not in present:
        raise CorpusFormatError(
            f"{name}: no column {spec.text_field!r} (columns: {', '.join(sorted(present))}); pass --text-field"
        )
    row_number = 0
    for batch in file.iter_batches(batch_size=4096, columns=wanted):
        for row in batch.to_pylist():
            row_number += 1
            where = f"{name}: row {row_number}"
            yield _field_id(row, spec, row_number, where), _field_text(row, spec, where)
