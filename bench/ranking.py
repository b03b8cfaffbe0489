"""Speed ranking per execution provider, and writing it into the manifest for `variant="auto"`.

The runtime picks, per provider, the first variant of `manifest.speed_ranking[provider]` that passes its
fidelity gate, so the ranking must be measured on that provider, not guessed from the variant's name.

Pure bookkeeping on measured rows: measuring them is rank.py's rank_variants (it runs a bench).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..manifest import Manifest
from .measure import geometric_mean

# Shapes that stand for typical embedding traffic: one query, a batch of passages, long passages.
RANK_SHAPES = ("1x128", "32x128", "8x512")


def rank_rows(rows: Sequence[Mapping[str, Any]], provider: str) -> list[str]:
    """ONNX variant names on `provider`, fastest first.

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
