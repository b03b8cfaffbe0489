"""The manifest's speed ranking per execution provider: measuring it, ranking benchmark rows, recording it.

The runtime picks, per provider, the first variant of `manifest.speed_ranking[provider]` that passes its
fidelity gate, so the ranking is measured on that provider, not guessed from a variant's name. Three callers
share this one implementation: the first load of a hub id (gte_onnx.pipeline), `gte-onnx quantize --rank`
and `gte-onnx bench --record` (which ranks its own benchmark rows with rank_rows).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gte_onnx.defaults import CPU
from gte_onnx.errors import InvalidInputError
from gte_onnx.folder.manifest import Manifest

# Shapes that stand for typical embedding traffic: one query, a batch of passages, long passages.
RANK_SHAPES = ("1x128", "32x128", "8x512")
# The first load's quick ranking: one mid-size batch (seconds, where RANK_SHAPES take a minute at full size).
FIRST_LOAD_SHAPES = ("8x128",)


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean, the fair average of times across shapes that differ by orders of magnitude."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0 or np.any(arr <= 0):
        raise InvalidInputError(f"geometric mean needs positive values, got {arr.tolist()}")
    return float(np.exp(np.mean(np.log(arr))))


def rank_rows(rows: Sequence[Mapping[str, Any]], provider: str) -> list[str]:
    """ONNX variant names on `provider` from benchmark rows, fastest first.

    Speed is the geometric mean over shapes of the median latency (shapes differ by orders of magnitude,
    so an arithmetic mean would rank by the largest shape alone). A variant with any failed shape is left
    out: the runtime should not auto-pick a variant that could not run a measured input.
    """
    times: dict[str, dict[str, float]] = {}
    failed: set[str] = set()
    for row in rows:
        if row.get("kind") != "onnx" or row.get("provider") != provider or row.get("mode") != "shape":
            continue
        if row.get("twin_of"):
            continue  # a second worker of a variant already ranked (--twins)
        name = row["variant"]
        if row.get("error") is not None or not row.get("median_s"):
            failed.add(name)
            continue
        times.setdefault(name, {})[row["shape"]] = float(row["median_s"])
    candidates = {name: by_shape for name, by_shape in times.items() if name not in failed}
    if not candidates:
        return []
    common = set.intersection(*(set(by_shape) for by_shape in candidates.values()))
    if not common:
        return []
    score = {name: geometric_mean([by_shape[s] for s in sorted(common)]) for name, by_shape in candidates.items()}
    return sorted(score, key=lambda name: (score[name], name))


def record_ranking(folder: str | Path, ranking: Mapping[str, Sequence[str]]) -> Manifest:
    """Write the measured rankings into the folder's manifest (other providers' rankings are kept).

    The manifest is re-read right before writing so that a concurrent change (a new variant) is not lost.
    """
    if not any(ranking.values()):
        raise InvalidInputError("nothing to record: no variant was measured successfully on any provider")
    manifest = Manifest.load(folder)
    merged = {k: tuple(v) for k, v in manifest.speed_ranking.items()}
    for provider, names in ranking.items():
        if not names:
            continue
        unknown = [n for n in names if n not in manifest.variants]
        if unknown:
            raise InvalidInputError(f"cannot record variants {unknown}: they are not in {folder}'s manifest")
        missing = [n for n, v in manifest.variants.items()
                   if n not in names and (not v.providers or provider in v.providers)]
        if missing:
            print(f"note: the recorded {provider} ranking leaves out {missing} (not measured or failed); "
                  "variant='auto' will not pick them", file=sys.stderr)
        merged[provider] = tuple(names)
    updated = manifest.replace(speed_ranking=merged)
    updated.save(folder)
    return updated


def _parse_shape(shape: str) -> tuple[int, int]:
    try:
        batch, length = (int(x) for x in shape.lower().split("x"))
    except ValueError:
        raise InvalidInputError(f"shape {shape!r} is not BATCHxLENGTH, e.g. 8x128") from None
    if batch < 1 or length < 1:
        raise InvalidInputError(f"shape {shape!r}: batch and length must be >= 1")
    return batch, length


def rank_variants(
    folder: str | Path,
    provider: str = CPU,
    threads: int | None = None,
    shapes: Sequence[str] = RANK_SHAPES,
    variants: Sequence[str] | None = None,
    record: bool = False,
    repeats: int = 3,
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Measure the folder's gated variants on `provider` and return their names, fastest first; `record`
    writes the ranking into the manifest's speed_ranking.

    Each variant runs through the runtime's own session (its CPU route included), in this process: the
    median of `repeats` interleaved runs per shape after one warm-up, ranked by the geometric mean over
    shapes. Variants that fail their gate are not measured, since variant="auto" never picks them.
    """
    from gte_onnx.inference.session import OnnxModel

    started = time.perf_counter()
    folder = Path(folder)
    manifest = Manifest.load(folder)
    names = [n for n, v in manifest.variants.items()
             if (variants is None or n in variants) and v.passes_gate() and (not v.providers or provider in v.providers)]
    if variants is not None:
        unknown = sorted(set(variants) - set(manifest.variants))
        if unknown:
            raise InvalidInputError(f"no variant(s) {unknown} in {folder}; it has {sorted(manifest.variants)}")
    with warnings.catch_warnings():  # "fp16 is slow on the CPU": measuring that is the point here
        warnings.filterwarnings("ignore", message=".*fp16 is slow", category=RuntimeWarning)
        models = {n: OnnxModel(folder, manifest, variant=n, providers=[provider], threads=threads, verify=False)
                  for n in names}
    rng = np.random.default_rng(0)
    medians: dict[str, list[float]] = {n: [] for n in names}
    for shape in shapes:
        batch, length = _parse_shape(shape)
        ids = rng.integers(1000, 5000, size=(batch, length)).astype(np.int64)
        feeds = {n: m.feed(ids, np.ones_like(ids)) for n, m in models.items()}
        for n, m in models.items():  # warm-up
            m.run(feeds[n])
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(repeats):
            for n, m in models.items():
                tick = time.perf_counter()
                m.run(feeds[n])
                times[n].append(time.perf_counter() - tick)
        for n in names:
            medians[n].append(float(np.median(times[n])))
    score = {n: geometric_mean(medians[n]) for n in names}
    ranking = sorted(names, key=lambda n: (score[n], n))
    if record and ranking:
        record_ranking(folder, {provider: ranking})
    if log is not None:
        figures = ", ".join(f"{n} {score[n] * 1e3:.0f} ms" for n in ranking)
        log(f"{provider} speed at {', '.join(shapes)}, fastest first: {figures} "
            f"({time.perf_counter() - started:.1f} s)")
    return ranking
