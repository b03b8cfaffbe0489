"""The output of a corpus run: a folder of Parquet shards plus the run's manifest.

    OUTPUT/_gte-onnx-corpus.json   model, variant, sha256, settings, input, vectors (precision, ranges);
                                   rows when complete
    OUTPUT/_gte-onnx-ranges.json   the int8/uint8 calibration ranges, to quantize queries the same way
    OUTPUT/part-00000.parquet ...  columns id, vector (fixed-size list of float32, or of int8/uint8 for the
                                   quantized precisions), token_count, truncated

Shard k holds documents k*shard_size .. (k+1)*shard_size-1 of the input, in input order. It is written to a
hidden temporary name and renamed when complete, so a shard file that exists is whole: a rerun skips it, and
a half-written temporary (a crash, Ctrl-C) is deleted and redone. Readers (pyarrow.dataset, pandas, Spark,
DuckDB) ignore hidden files, so the folder reads as one dataset at any time.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from gte_onnx.errors import InvalidInputError, ResumeMismatchError, missing_dependency

RUN_MANIFEST_NAME = "_gte-onnx-corpus.json"  # "_": Parquet dataset readers skip it
MANIFEST_FORMAT = "gte-onnx-corpus/1"
RANGES_NAME = "_gte-onnx-ranges.json"
# Settings added after the first runs were written: a run recorded without them had these values.
LEGACY_OPTIONS = {"precision": "float32", "ranges_sha256": None}
_SHARD = re.compile(r"^part-(\d{5,})\.parquet$")


def import_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (the submodule is what writes shards)
    except ImportError:
        raise missing_dependency("pyarrow", "corpus", "writing a corpus to Parquet") from None
    return pyarrow


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _arrow_type(precision: str):
    pa = import_pyarrow()
    from gte_onnx.precision import output_dtype

    return pa.from_numpy_dtype(output_dtype(precision))


def output_schema(dim: int, string_ids: bool, precision: str = "float32"):
    """id, vector (a fixed-size list of the precision's dtype: dim floats or int8/uint8, dim/8 packed bytes for
    binary/ubinary), token_count, truncated."""
    pa = import_pyarrow()
    from gte_onnx.precision import vector_width

    return pa.schema([
        ("id", pa.string() if string_ids else pa.int64()),
        ("vector", pa.list_(_arrow_type(precision), vector_width(precision, dim))),
        ("token_count", pa.int32()),
        ("truncated", pa.bool_()),
    ])


def chunk_table(schema, ids: list, vectors: np.ndarray, token_counts: np.ndarray, truncated: np.ndarray):
    """One chunk as an Arrow table of the output schema (the vectors are not copied row by row)."""
    pa = import_pyarrow()
    value_type = schema.field("vector").type.value_type
    flat = pa.array(np.ascontiguousarray(vectors, dtype=value_type.to_pandas_dtype()).reshape(-1), type=value_type)
    columns = [
        pa.array(ids, type=schema.field("id").type),
        pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        pa.array(np.asarray(token_counts, dtype=np.int32), type=pa.int32()),
        pa.array(np.asarray(truncated, dtype=bool), type=pa.bool_()),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


class ShardWriter:
    """Writes one shard chunk by chunk (one row group each) under a temporary name; `commit` renames it."""

    def __init__(self, folder: Path, index: int, schema):
        import_pyarrow()
        import pyarrow.parquet as pq

        self.final = folder / shard_name(index)
        self.temp = folder / f".{shard_name(index)}.tmp"
        self.rows = 0
        self._writer = pq.ParquetWriter(self.temp, schema, compression="zstd")

    def write(self, table) -> None:
        self._writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> None:
        self._writer.close()
        with open(self.temp, "rb") as fh:
            os.fsync(fh.fileno())  # the rename must not reach the disk before the data
        os.replace(self.temp, self.final)

    def abort(self) -> None:
        self._writer.close()
        self.temp.unlink(missing_ok=True)


def complete_shards(folder: Path) -> dict[int, Path]:
    """Shards already written (renamed into place); stale temporaries of an interrupted run are deleted."""
    found: dict[int, Path] = {}
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        if path.name.startswith(".part-") and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
            continue
        match = _SHARD.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def shard_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


class OutputLock:
    """Holds OUTPUT/.lock for the run (an OS lock, released when the process ends however it ends), so a second
    run into the same folder is refused instead of racing the first one's shards."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self._file = open(folder / ".lock", "a+")
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, one run at a time is up to the user
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise InvalidInputError(f"another embed-corpus run is writing to {folder}; wait for it or stop it") from None

    def release(self) -> None:
        self._file.close()


# ---- the run's manifest -------------------------------------------------------------------------------
def differing_settings(recorded: dict, wanted: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings whose values differ (keys on either side)."""
    names = []
    for key in sorted(set(recorded) | set(wanted)):
        a, b = recorded.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += differing_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key} (this output: {a!r}, now: {b!r})")
    return names


def open_run(folder: Path, identity: dict) -> dict:
    """Create the output folder and its manifest, or check that it holds a run with the same identity."""
    path = folder / RUN_MANIFEST_NAME
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"{path} is not a readable corpus manifest ({exc}); use another output") from None
        run = dict(recorded.get("run", {}))
        run["options"] = {**LEGACY_OPTIONS, **run.get("options", {})}
        differ = differing_settings(run, identity)
        if differ:
            raise ResumeMismatchError(
                f"{folder} holds a run with other settings, so it cannot be resumed: " + "; ".join(differ)
                + ". Rerun with the recorded settings, or write to a new output folder."
            )
        return recorded
    if folder.exists() and any(_SHARD.match(p.name) for p in folder.iterdir()):
        raise ResumeMismatchError(f"{folder} holds Parquet shards but no {RUN_MANIFEST_NAME}; use a new output folder")
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format": MANIFEST_FORMAT, "run": identity, "complete": False}
    write_manifest(folder, record)
    return record


def write_ranges(folder: Path, ranges) -> None:
    """The int8/uint8 ranges beside the shards, readable with gte_onnx.precision.CalibrationRanges.load."""
    ranges.save(folder / RANGES_NAME)


def write_manifest(folder: Path, record: dict) -> None:
    path = folder / RUN_MANIFEST_NAME
    temp = folder / f".{RUN_MANIFEST_NAME}.tmp"
    temp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temp, path)
