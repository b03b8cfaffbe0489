"""A reference forward pass vs the ONNX graph on probe inputs, before the manifest is written (optimum's
per-output checks). The reference is PyTorch in `gte-onnx export` and the numpy forward pass of
convert/reference.py in the torch-free converter: both run through `validate_graph`.

Every non-pad token (or the logits) must agree within `atol` at each probe length, and a text run alone
must equal the same text inside a padded batch of mixed lengths. A breach raises ExportValidationError
naming the output, the length and the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from gte_onnx.errors import GteOnnxError

DEFAULT_LENGTHS = (5, 63, 64, 65, 127, 128, 129, 255, 256, 257, 600, 2048)
# The torch-free gate: every edge of a 64-token half window (block edges of the windowed graph) and the
# band-masked/blockwise switch at 192 tokens; the padded batch adds a 300-token row.
WINDOW_EDGE_LENGTHS = (1, 63, 64, 65, 127, 128, 129, 191, 192, 193, 255, 256, 257)
BATCH_LENGTHS = (5, 129, 64, 300, 17)
DEFAULT_ATOL = 1e-4


class ExportValidationError(GteOnnxError, AssertionError):
    """The exported graph disagrees with its reference forward pass beyond the tolerance."""

    code = "export_validation_failed"

    def __init__(self, output: str, case: str, max_diff: float, atol: float, reference: str = "the reference"):
        self.output, self.case, self.max_diff, self.atol = output, case, max_diff, atol
        self.reference = reference
        super().__init__(f"output {output!r} at {case}: max |diff| {max_diff:.3g} from {reference} exceeds {atol:g}")


@dataclass
class Probe:
    ids: np.ndarray  # (B, L) int64, right padded
    mask: np.ndarray  # (B, L) int64
    case: str


def probe_ids(length: int, vocab_size: int, specials: Sequence[int], cls_id: int, sep_id: int, seed: int) -> np.ndarray:
    """[CLS] random ordinary tokens [SEP], exactly `length` ids."""
    rng = np.random.default_rng(seed)
    body = rng.integers(0, vocab_size, size=max(length - 2, 0))
    special = np.isin(body, np.asarray(list(specials)))
    body[special] = (body[special] + 7) % max(min(specials), 1)  # keep probe tokens ordinary
    ids = np.concatenate([[cls_id], body, [sep_id]]) if length >= 2 else np.asarray([cls_id])
    return ids[:length].astype(np.int64)


def make_probes(lengths: Sequence[int], batch_lengths: Sequence[int], vocab_size: int, specials, cls_id, sep_id, pad_id):
    singles = []
    for n, length in enumerate(lengths):
        ids = probe_ids(length, vocab_size, specials, cls_id, sep_id, seed=1000 + n)
        singles.append(Probe(ids[None, :], np.ones((1, length), dtype=np.int64), f"length {length}"))
    rows = [probe_ids(length, vocab_size, specials, cls_id, sep_id, seed=2000 + n) for n, length in enumerate(batch_lengths)]
    width = max(batch_lengths)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    batch = Probe(ids, mask, f"padded batch of lengths {list(batch_lengths)}")
    return singles, batch, rows


def compare(output: str, case: str, ref: np.ndarray, got: np.ndarray, mask: np.ndarray | None, atol: float,
            reference: str = "the reference") -> float:
    if ref.shape != got.shape:
        raise ExportValidationError(output, f"{case} (shape {got.shape} vs {ref.shape})", float("inf"), atol, reference)
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    if mask is not None:  # only real tokens count; pad positions are undefined by design
        diff = diff[mask.astype(bool)]
    worst = float(np.nanmax(diff)) if diff.size else 0.0
    if not np.isfinite(got[mask.astype(bool)] if mask is not None else got).all():
        worst = float("inf")
    if worst > atol:
        raise ExportValidationError(output, case, worst, atol, reference)
    return worst


@dataclass(frozen=True)
class ProbeSpec:
    """What the probe inputs are made of: the model's vocabulary and special tokens."""

    max_length: int
    vocab_size: int
    special_ids: Sequence[int]
    cls_id: int
    sep_id: int
    pad_id: int


def validate_graph(
    reference: Callable[[Probe], np.ndarray],
    session,
    task: str,
    input_names: Sequence[str],
    output: str,
    spec: ProbeSpec,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    atol: float = DEFAULT_ATOL,
    reference_name: str = "the reference",
) -> dict[str, Any]:
    """Raise ExportValidationError on the first breach; return the max |diff| of every case otherwise.
    `reference(probe)` gives the expected output of a (B, L) probe (token type ids, where the graph has
    them, are zeros on both sides)."""
    lengths = sorted({min(int(n), spec.max_length) for n in lengths})
    batch_lengths = [min(n, spec.max_length) for n in BATCH_LENGTHS]
    singles, batch, rows = make_probes(lengths, batch_lengths, spec.vocab_size, spec.special_ids, spec.cls_id,
                                       spec.sep_id, spec.pad_id)
    token_type = "token_type_ids" in input_names

    def run_onnx(probe: Probe) -> np.ndarray:
        feed = {"input_ids": probe.ids, "attention_mask": probe.mask}
        if token_type:
            feed["token_type_ids"] = np.zeros_like(probe.ids)
        return session.run([output], {k: v for k, v in feed.items() if k in input_names})[0]

    per_token = task != "rerank"
    report: dict[str, Any] = {"atol": atol, "lengths": {}, "output": output}
    for probe in singles:
        report["lengths"][str(probe.ids.shape[1])] = compare(
            output, probe.case, reference(probe), run_onnx(probe), probe.mask if per_token else None, atol,
            reference_name,
        )
    alone = [run_onnx(Probe(row[None, :], np.ones((1, len(row)), dtype=np.int64), ""))[0] for row in rows]
    got = run_onnx(batch)
    report["padded_batch_vs_reference"] = compare(output, batch.case, reference(batch), got,
                                                  batch.mask if per_token else None, atol, reference_name)
    worst = 0.0
    for i, single in enumerate(alone):
        in_batch = got[i, : len(rows[i])] if per_token else got[i]
        worst = max(worst, compare(output, f"row {i} alone vs in {batch.case}", single, in_batch, None, atol,
                                   "the same text alone"))
    report["alone_vs_batch"] = worst
    report["max_abs_diff"] = max([*report["lengths"].values(), report["padded_batch_vs_reference"], worst])
    return report
