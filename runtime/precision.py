"""Quantized output vectors: float32, int8, uint8, binary and ubinary, as sentence-transformers makes them.

    from gte_onnx.precision import calibrate, quantize

    ranges = calibrate(model.encode(sample_texts))            # per-dimension min/max of a sample
    codes = quantize(model.encode(texts), "int8", ranges)     # (n, dim) int8

The semantics are sentence-transformers' `quantize_embeddings` (sentence_transformers.util.quantization):

- binary: the signs packed 8 to a byte, `np.packbits(v > 0, axis=-1) - 128` as int8 (dim/8 bytes);
  ubinary: the same bits as uint8. Two vectors' Hamming distance is their dissimilarity.
- uint8: per dimension d, 255 buckets of width step_d = (max_d - min_d) / 255 starting at min_d:
  `clip(floor((v - min) / step), 0, 255)` (a value outside the calibrated range lands in the end bucket;
  a dimension whose range is a single value has step 1); int8 is the same bucket minus 128.

The ranges are data, not a function of the batch: sentence-transformers calibrates on the batch itself when
it is given no ranges, so the same text gets another vector next to other texts. Here int8/uint8 never do
that: they need ranges, given by the caller (`calibrate` of a representative sample, or
`Embedder.calibrate_ranges(texts)`), or recorded in the model folder by `gte-onnx calibrate --record`;
without either they raise InvalidInputError. The ranges travel with the vectors (`Embeddings.ranges`,
written beside a corpus), so queries embedded later are quantized the same way.

Vectors are normalised (or not) before they are quantized; ranges record which, and vectors of the other
kind are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from gte_onnx.errors import PrecisionError

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
RANGES_FORMAT = "gte-onnx-ranges/1"
# Where a model folder records its ranges: the manifest's `extra` mapping (optional; older folders lack it).
MANIFEST_KEY = "embedding_ranges"

_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}


def check_precision(precision: object) -> str:
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return str(precision)


def needs_ranges(precision: str) -> bool:
    return check_precision(precision) in ("int8", "uint8")


def output_dtype(precision: str) -> np.dtype:
    """The numpy dtype of `precision`'s vectors."""
    return np.dtype(_DTYPES[check_precision(precision)])


def vector_width(precision: str, dim: int) -> int:
    """Elements per vector: dim, or dim/8 (rounded up) packed bytes for binary and ubinary."""
    return (dim + 7) // 8 if check_precision(precision).endswith("binary") else dim


def bytes_per_vector(precision: str, dim: int) -> int:
    return vector_width(precision, dim) * output_dtype(precision).itemsize


@dataclass(frozen=True)
class CalibrationRanges:
    """Per-dimension minimum and maximum of a sample of vectors: the int8/uint8 buckets.

    `samples` is the number of vectors they were taken from, `normalized` whether those vectors were
    L2-normalised (vectors of the other kind are refused), `source` a free note of what the sample was.
    The values are float32 (kept as Python floats so the JSON round trip is exact).
    """

    minimum: tuple[float, ...]
    maximum: tuple[float, ...]
    samples: int
    normalized: bool = True
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.minimum) != len(self.maximum) or not self.minimum:
            raise PrecisionError(
                f"ranges need one minimum and one maximum per dimension; got {len(self.minimum)} minima "
                f"and {len(self.maximum)} maxima"
            )
        low, high = self.arrays()
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise PrecisionError("ranges hold NaN or infinite values")
        bad = np.flatnonzero(low > high)
        if bad.size:
            raise PrecisionError(f"ranges: minimum > maximum in dimension {int(bad[0])} ({bad.size} in all)")

    @property
    def dim(self) -> int:
        return len(self.minimum)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(minimum, maximum) as float32 arrays."""
        return np.asarray(self.minimum, dtype=np.float32), np.asarray(self.maximum, dtype=np.float32)

    def as_sentence_transformers(self) -> np.ndarray:
        """The (2, dim) float32 array sentence-transformers' quantize_embeddings takes as `ranges`."""
        return np.vstack(self.arrays())

    def digest(self) -> str:
        """sha256 of the values (not the note): equal digests quantize identically."""
        payload = json.dumps([self.minimum, self.maximum, self.normalized]).encode()
        return hashlib.sha256(payload).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"format": RANGES_FORMAT, "dim": self.dim, "samples": self.samples, "normalized": self.normalized,
                "source": self.source, "minimum": list(self.minimum), "maximum": list(self.maximum)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str, where: str = "ranges") -> "CalibrationRanges":
        """From `to_json`'s mapping (or its JSON text); a malformed one is a PrecisionError naming `where`."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise PrecisionError(f"{where} is not JSON ({exc})") from None
        if not isinstance(data, Mapping):
            raise PrecisionError(f"{where} must be a JSON object, got {type(data).__name__}")
        if data.get("format") != RANGES_FORMAT:
            raise PrecisionError(f"{where}: format must be {RANGES_FORMAT!r}, got {data.get('format')!r}")
        values = {}
        for key in ("minimum", "maximum"):
            seq = data.get(key)
            if not isinstance(seq, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in seq
            ):
                raise PrecisionError(f"{where}: {key} must be a list of numbers")
            values[key] = tuple(float(np.float32(x)) for x in seq)
        dim, samples = data.get("dim"), data.get("samples", 0)
        if dim is not None and dim != len(values["minimum"]):
            raise PrecisionError(f"{where}: dim is {dim} but {len(values['minimum'])} minima are given")
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise PrecisionError(f"{where}: samples must be a non-negative integer, got {samples!r}")
        normalized, source = data.get("normalized", True), data.get("source", "")
        if not isinstance(normalized, bool) or not isinstance(source, str):
            raise PrecisionError(f"{where}: normalized must be true or false and source a string")
        return cls(values["minimum"], values["maximum"], samples, normalized, source)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(json.dumps(self.to_json()) + "\n", encoding="utf-8")
        os.replace(temp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationRanges":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PrecisionError(f"cannot read ranges file {path} ({getattr(exc, 'strerror', None) or exc})") from None
        return cls.from_json(text, where=str(path))


def recorded_ranges(manifest, folder: object = "the model folder") -> CalibrationRanges | None:
    """The ranges a model folder's manifest records (`gte-onnx calibrate --record`), or None."""
    data = manifest.extra.get(MANIFEST_KEY)
    if data is None:
        return None
    return CalibrationRanges.from_json(data, where=f"{folder}/gte-onnx.json extra.{MANIFEST_KEY}")


def _float_matrix(vectors: Any, what: str) -> np.ndarray:
    arr = np.asarray(vectors)
    if arr.dtype.kind not in "f":
        raise PrecisionError(f"{what} must be float vectors, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PrecisionError(f"{what} must be a non-empty (n, dim) array, got shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise PrecisionError(f"{what} hold NaN or infinite values (row {int(np.flatnonzero(~finite)[0])})")
    return arr


def _is_normalized(arr: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(arr.astype(np.float64), axis=1), 1.0, atol=1e-3))


def calibrate(vectors: Any, normalized: bool | None = None, source: str = "") -> CalibrationRanges:
    """Ranges from a sample of float vectors (n, dim): per-dimension min and max.

    Calibrate on text like what you will embed (a thousand texts or more), not on the set you will
    evaluate on. `normalized` defaults to whether every vector has unit length.
    """
    arr = _float_matrix(vectors, "calibration vectors")
    if normalized is None:
        normalized = _is_normalized(arr)
    return CalibrationRanges(tuple(arr.min(axis=0).tolist()), tuple(arr.max(axis=0).tolist()), int(arr.shape[0]),
                             bool(normalized), source)


def _steps(ranges: CalibrationRanges) -> tuple[np.ndarray, np.ndarray]:
    low, high = ranges.arrays()
    steps = (high - low) / np.float32(255)
    return low, np.where(steps == 0, np.float32(1), steps).astype(np.float32)


def quantize(vectors: Any, precision: str, ranges: CalibrationRanges | None = None,
             normalized: bool | None = None) -> np.ndarray:
    """float vectors (n, dim) or (dim,) -> `precision`'s vectors (see the module docstring).

    int8/uint8 need `ranges` of the same width; `normalized` (whether the vectors are unit length; checked
    from the vectors when None) must match the ranges'. NaN or infinite values are refused.
    """
    precision = check_precision(precision)
    arr = np.asarray(vectors)
    single = arr.ndim == 1
    arr = _float_matrix(arr[None, :] if single else arr, "vectors")
    out = _quantize_matrix(arr, precision, ranges, normalized)
    return out[0] if single else out


def _quantize_matrix(arr: np.ndarray, precision: str, ranges: CalibrationRanges | None,
                     normalized: bool | None) -> np.ndarray:
    if precision == "float32":
        return arr
    if precision == "ubinary":
        return np.packbits(arr > 0, axis=-1)
    if precision == "binary":
        return (np.packbits(arr > 0, axis=-1) ^ np.uint8(0x80)).view(np.int8)  # == packbits - 128
    if ranges is None:
        raise PrecisionError(
            f"precision {precision!r} needs calibration ranges, and none were given or recorded in the model "
            "folder: pass ranges=Embedder.calibrate_ranges(sample_texts) (or gte_onnx.precision.calibrate(vectors)), "
            "or record them once with `gte-onnx calibrate MODEL --file SAMPLE.txt --record`"
        )
    if not isinstance(ranges, CalibrationRanges):
        raise PrecisionError(f"ranges must be CalibrationRanges, got {type(ranges).__name__}")
    if ranges.dim != arr.shape[1]:
        raise PrecisionError(f"the ranges have {ranges.dim} dimensions but the vectors have {arr.shape[1]}")
    if normalized is None:
        normalized = _is_normalized(arr)
    if bool(normalized) != ranges.normalized:
        kind = "normalised" if ranges.normalized else "unnormalised"
        raise PrecisionError(
            f"the ranges were calibrated on {kind} vectors but these vectors are "
            f"{'normalised' if normalized else 'unnormalised'}; calibrate on vectors of the same kind"
        )
    low, steps = _steps(ranges)
    buckets = np.clip(np.floor((arr - low) / steps), 0, 255)
    if precision == "uint8":
        return buckets.astype(np.uint8)
    return (buckets - 128).astype(np.int8)


def dequantize(codes: Any, precision: str, ranges: CalibrationRanges) -> np.ndarray:
    """int8/uint8 codes -> float32 vectors at each bucket's start (sentence-transformers' rescoring inverse)."""
    precision = check_precision(precision)
    if precision not in ("int8", "uint8"):
        raise PrecisionError(f"dequantize takes int8 or uint8 codes, not {precision!r}")
    arr = np.asarray(codes)
    if arr.dtype != output_dtype(precision):
        raise PrecisionError(f"{precision} codes must have dtype {output_dtype(precision)}, got {arr.dtype}")
    if arr.shape[-1] != ranges.dim:
        raise PrecisionError(f"the ranges have {ranges.dim} dimensions but the codes have {arr.shape[-1]}")
    low, steps = _steps(ranges)
    buckets = arr.astype(np.float64) + (128 if precision == "int8" else 0)
    return (buckets * steps + low).astype(np.float32)


def hamming_similarity(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """-(Hamming distance) between packed binary/ubinary vectors (q, b) x (d, b) -> (q, d) int32."""
    q = np.unpackbits(np.atleast_2d(queries).view(np.uint8), axis=-1).astype(np.float32)
    d = np.unpackbits(np.atleast_2d(documents).view(np.uint8), axis=-1).astype(np.float32)
    differing = q.sum(axis=1)[:, None] + d.sum(axis=1)[None, :] - 2 * (q @ d.T)  # exact: integers < 2**24
    return -np.rint(differing).astype(np.int32)


__all__ = ["PRECISIONS", "CalibrationRanges", "PrecisionError", "calibrate", "quantize", "dequantize",
           "hamming_similarity", "output_dtype", "vector_width", "bytes_per_vector", "check_precision",
           "needs_ranges"]
