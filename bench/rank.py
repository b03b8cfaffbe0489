"""`rank_variants(folder)`: measure a folder's variants on one provider and return them fastest first.

For the quantize step, which adds variants and then wants the speed ranking `variant="auto"` reads.
Kept apart from ranking.py (pure bookkeeping on rows, imported by the runner) so the two do not import
each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .ranking import RANK_SHAPES, record_ranking
from .runner import BenchConfig, run_bench
from .shapes import parse_shapes


def rank_variants(
    folder: str | Path,
    provider: str = "CPUExecutionProvider",
    threads: int | None = None,
    shapes: Sequence[str] = RANK_SHAPES,
    variants: Sequence[str] | None = None,
    short: bool = True,
    record: bool = False,
    progress: bool = False,
) -> list[str]:
    """Measure the folder's variants on one provider and return their names, fastest first.

    For the quantize step: `rank_variants(folder)` after adding variants, or `record=True` to also write
    the result into the manifest's speed_ranking. Each variant runs in its own process, interleaved.
    """
    config = BenchConfig(
        folder=Path(folder),
        variants=list(variants) if variants else None,
        providers=[provider],
        shapes=parse_shapes(list(shapes)),
        threads=threads,
        short=short,
        progress=progress,
    )
    result = run_bench(config)
    provider_name = result["settings"]["providers"][0]
    ranking = result["ranking"].get(provider_name, [])
    if record:
        record_ranking(folder, {provider_name: ranking})
    return ranking
