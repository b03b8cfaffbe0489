"""PyTorch vs ONNX on probe inputs, before the manifest is written (optimum's per-output checks).

Every non-pad token (or the logits) must agree within `atol` at each probe length, and a text run alone
must equal the same text inside a padded batch of mixed lengths. A breach raises ExportValidationError
naming the output, the length and the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from gte_onnx.errors import GteOnnxError

DEFAULT_LENGTHS = (5, 63, 64, 65, 127, 128, 129, 255, 256, 257, 600, 2048)
BATCH_LENGTHS = (5, 129, 64, 300, 17)
DEFAULT_ATOL = 1e-4


class ExportValidationError(GteOnnxError, AssertionError):
    """The exported graph disagrees with PyTorch beyond the tolerance."""

    code = "export_validation_failed"

    def __init__(self, output: str, case: str, max_diff: float, atol: float):
        self.output, self.case, self.max_diff, self.atol = output, case, max_diff, atol
        super().__init__(f"output {output!r} at {case}: max |diff| {max_diff:.3g} exceeds {atol:g}")


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


def _torch_outputs(model, task: str, probe: Probe, token_type: bool) -> np.ndarray:
    import torch

    kwargs: dict[str, Any] = {
        "input_ids": torch.from_numpy(probe.ids),
        "attention_mask": torch.from_numpy(probe.mask),
    }
    if token_type:
        kwargs["token_type_ids"] = torch.zeros_like(kwargs["input_ids"])
    with torch.inference_mode():
        out = model(**kwargs)
    tensor = out.logits if task == "rerank" else out.last_hidden_state
    return tensor.float().numpy()


def _compare(output: str, case: str, ref: np.ndarray, got: np.ndarray, mask: np.ndarray | None, atol: float) -> float:
    if ref.shape != got.shape:
        raise ExportValidationError(output, f"{case} (shape {got.shape} vs {ref.shape})", float("inf"), atol)
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    if mask is not None:  # only real tokens count; pad positions are undefined by design
        diff = diff[mask.astype(bool)]
    worst = float(np.nanmax(diff)) if diff.size else 0.0
    if not np.isfinite(got[mask.astype(bool)] if mask is not None else got).all():
        worst = float("inf")
    if worst > atol:
        raise ExportValidationError(output, case, worst, atol)
    return worst


def validate_export(
    torch_model,
    session,
    task: str,
    input_names: Sequence[str],
    output: str,
    max_length: int,
    vocab_size: int,
    special_ids: Sequence[int],
    cls_id: int,
    sep_id: int,
    pad_id: int,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    atol: float = DEFAULT_ATOL,
) -> dict[str, Any]:
    """Raise ExportValidationError on the first breach; return the max |diff| of every case otherwise."""
    lengths = sorted({min(int(n), max_length) for n in lengths})
    batch_lengths = [min(n, max_length) for n in BATCH_LENGTHS]
    singles, batch, rows = make_probes(lengths, batch_lengths, vocab_size, special_ids, cls_id, sep_id, pad_id)
    token_type = "token_type_ids" in input_names

    def run_onnx(probe: Probe) -> np.ndarray:
        feed = {"input_ids": probe.ids, "attention_mask": probe.mask}
        if token_type:
            feed["token_type_ids"] = np.zeros_like(probe.ids)
        return session.run([output], {k: v for k, v in feed.items() if k in input_names})[0]

    per_token = task != "rerank"
    report: dict[str, Any] = {"atol": atol, "lengths": {}, "output": output}
    alone: list[np.ndarray] = []
    for probe in singles:
        ref = _torch_outputs(torch_model, task, probe, token_type)
        got = run_onnx(probe)
        report["lengths"][str(probe.ids.shape[1])] = _compare(
            output, probe.case, ref, got, probe.mask if per_token else None, atol
        )
    for row in rows:
        probe = Probe(row[None, :], np.ones((1, len(row)), dtype=np.int64), "")
        alone.append(run_onnx(probe)[0])
    ref = _torch_outputs(torch_model, task, batch, token_type)
    got = run_onnx(batch)
    report["padded_batch_vs_torch"] = _compare(output, batch.case, ref, got, batch.mask if per_token else None, atol)
    worst = 0.0
    for i, single in enumerate(alone):
        in_batch = got[i, : len(rows[i])] if per_token else got[i]
        worst = max(worst, _compare(output, f"row {i} alone vs in {batch.case}", single, in_batch, None, atol))
    report["alone_vs_batch"] = worst
    report["max_abs_diff"] = max([*report["lengths"].values(), report["padded_batch_vs_torch"], worst])
    return report
