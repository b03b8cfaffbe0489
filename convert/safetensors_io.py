"""Safetensors weights read with numpy alone (the format is an 8-byte header size, a JSON header and raw
little-endian tensor bytes), single files and sharded checkpoints (model.safetensors.index.json).

Pickle weights (pytorch_model.bin) are never read: unpickling can run code. Float tensors come back as
float32 (fp16 widened, bf16 shifted into the top half of a float32), others in their own dtype. A file
that is truncated or whose header does not describe its bytes raises CheckpointFormatError naming the file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .checkpoint_meta import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# No real header comes near this: it guards against reading gigabytes of garbage as JSON.
MAX_HEADER_BYTES = 100_000_000
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened by hand below
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


class CheckpointFormatError(CheckpointError):
    """A weight file that is not valid safetensors (truncated, bad header, tensors outside the file), or
    a checkpoint whose weights are missing or shaped unlike its config."""

    code = "checkpoint_format_error"


def _header(path: Path, size: int, handle) -> tuple[dict, int]:
    raw = handle.read(8)
    if len(raw) < 8:
        raise CheckpointFormatError(f"{path}: {size} bytes, too short for a safetensors header")
    length = struct.unpack("<Q", raw)[0]
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise CheckpointFormatError(f"{path}: header claims {length} bytes but the file holds {size}: truncated "
                                    "or not a safetensors file")
    try:
        header = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"{path}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: the safetensors header is not a JSON object")
    return header, 8 + length


def _check_entry(path: Path, name: str, entry, data_bytes: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise CheckpointFormatError(f"{path}: tensor {name!r} has no dtype/shape/data_offsets in the header")
    if entry["dtype"] not in _DTYPES:
        raise CheckpointFormatError(f"{path}: tensor {name!r} has dtype {entry['dtype']!r}, which is not supported "
                                    f"(supported: {', '.join(_DTYPES)})")
    dtype = _DTYPES[entry["dtype"]]
    shape = tuple(int(d) for d in entry["shape"])
    start, end = (int(x) for x in entry["data_offsets"])
    expected = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if end > data_bytes:
        raise CheckpointFormatError(f"{path}: tensor {name!r} ends at byte {end} of a {data_bytes}-byte data "
                                    "section: the file is truncated")
    if not 0 <= start <= end or end - start != expected:
        raise CheckpointFormatError(f"{path}: tensor {name!r} spans {end - start} bytes but {entry['dtype']} "
                                    f"{list(shape)} needs {expected}")
    return dtype, shape, start, end


def _as_float32(array: np.ndarray, dtype_name: str) -> np.ndarray:
    if dtype_name == "BF16":  # bf16 is the top 16 bits of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    if dtype_name in ("F16", "F64"):
        return array.astype(np.float32)
    return array


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """{tensor name: array} of one safetensors file; floats as float32. The file is memory-mapped, so
    float32 tensors are read lazily by the OS; converted ones are copies."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header, data_start = _header(path, size, handle)
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    data_bytes = size - data_start
    entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
    if not entries:
        return {}
    mapped = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_bytes,)) if data_bytes else None
    tensors = {}
    for name, entry in entries.items():
        dtype, shape, start, end = _check_entry(path, name, entry, data_bytes)
        raw = mapped[start:end] if mapped is not None else np.zeros(0, np.uint8)
        tensors[name] = _as_float32(raw.view(dtype).reshape(shape), entry["dtype"])
    return tensors


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: the shards its index names, else model.safetensors,
    else the folder's only *.safetensors file."""
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointFormatError(f"{index}: not a safetensors index (no weight_map: {exc})") from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointFormatError(f"{index} names shards that are not in {folder}: {missing}")
        return [folder / s for s in shards]
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found
    if found:
        raise CheckpointFormatError(f"{folder} holds several *.safetensors files {[p.name for p in found]} but no "
                                    f"{INDEX_FILE} saying how they belong together")
    pickles = sorted(p.name for p in folder.glob("pytorch_model*.bin"))
    hint = (f"; it holds pickle weights {pickles}, which are never read (they can run code): convert them to "
            "safetensors" if pickles else "")
    raise CheckpointFormatError(f"{folder} has no safetensors weights{hint}")


def read_checkpoint(folder: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint folder (all shards), by name."""
    tensors: dict[str, np.ndarray] = {}
    for path in weight_files(folder):
        for name, array in read_safetensors(path).items():
            if name in tensors:
                raise CheckpointFormatError(f"tensor {name!r} appears in more than one shard (again in {path})")
            tensors[name] = array
    return tensors
