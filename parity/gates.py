"""Fidelity gates: per variant kind, the thresholds its measured figures must meet.

A gate is a mapping figure-name -> limit. Whether the limit is a floor or a ceiling is a property of the
figure (cosine: higher is better; max |diff|, drops: lower is better), kept in FIGURES, so overrides
given on the command line as KEY=VALUE need no operator.

The quantize step records `check_gate(...)` in the manifest as variant.fidelity["passed"]; the runtime's
`variant="auto"` only picks variants whose recorded verdict is True.

Figures (all computed by gte_onnx.parity.report against a reference, PyTorch or the fp32 ONNX model):
  embedding models
    cosine_min / cosine_p1 / cosine_mean   row cosine to the reference embeddings
    centred_cosine_min / centred_cosine_mean   the same after subtracting the reference's mean vector
    max_abs_diff                           largest elementwise |diff| of the raw (unnormalised) embeddings
    relative_error                         max_abs_diff / std of the reference values (scale-free)
    topk_overlap                           mean top-10 overlap of probe-vs-probe rankings (centred)
    score_spearman                         mean per-query Spearman of those similarity scores (centred)
    token_mismatches                       inputs whose runtime token ids differ from the reference's
    sts_drop                               STS-B Spearman x100, fp32 minus variant (points)
    cisi_ndcg_drop / cisi_mrr_drop         CISI nDCG@10 / MRR@10 x100, fp32 minus variant (points)
  rerank models
    logit_max_abs_diff, logit_relative_error, logit_spearman, rerank_topk_overlap
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping

from gte_onnx.errors import VariantError

# figure -> True when higher is better (limit is a floor), False when lower is better (a ceiling).
FIGURES: dict[str, bool] = {
    "cosine_min": True,
    "cosine_p1": True,
    "cosine_mean": True,
    "centred_cosine_min": True,
    "centred_cosine_mean": True,
    "max_abs_diff": False,
    "relative_error": False,
    "topk_overlap": True,
    "score_spearman": True,
    "sts_drop": False,
    "cisi_ndcg_drop": False,
    "cisi_mrr_drop": False,
    "logit_max_abs_diff": False,
    "logit_relative_error": False,
    "logit_spearman": True,
    "rerank_topk_overlap": True,
    # inputs whose runtime token ids differ from the reference's: any is a failure of every gate
    "token_mismatches": False,
}

KINDS = ("fp32", "fp16", "bf16", "int8", "q4", "q4f16")

# fp32 against PyTorch: max |diff| <= 1e-4, the export's own validation limit. Low-precision kinds are judged
# by scale-free figures (cosines, rank agreement); the data-set drops are what each recipe is built to meet
# (int8: STS-B <= 0.3, CISI nDCG@10 <= 0.5 points; q4: <= 1 point each).
DEFAULT_GATES: dict[str, dict[str, float]] = {
    "fp32": {
        "cosine_min": 0.9999,
        "centred_cosine_min": 0.999,
        "max_abs_diff": 1e-4,
        "topk_overlap": 0.99,
    },
    "fp16": {
        "cosine_min": 0.999,
        "centred_cosine_mean": 0.995,
        "centred_cosine_min": 0.98,
        "topk_overlap": 0.9,
        "score_spearman": 0.98,
        "sts_drop": 0.1,
        "cisi_ndcg_drop": 0.2,
    },
    "int8": {
        "cosine_mean": 0.985,
        "cosine_p1": 0.97,
        "centred_cosine_mean": 0.95,
        "topk_overlap": 0.7,
        "score_spearman": 0.9,
        "sts_drop": 0.3,
        "cisi_ndcg_drop": 0.5,
    },
    "q4": {
        "cosine_mean": 0.98,
        "cosine_p1": 0.95,
        "centred_cosine_mean": 0.9,
        "topk_overlap": 0.6,
        "score_spearman": 0.85,
        "sts_drop": 1.0,
        "cisi_ndcg_drop": 1.0,
    },
}
DEFAULT_GATES["bf16"] = dict(DEFAULT_GATES["fp16"], cosine_min=0.998, centred_cosine_mean=0.99)
DEFAULT_GATES["q4f16"] = dict(DEFAULT_GATES["q4"])

# Rerank models output one logit per pair: judge the logit error relative to the logits' spread and
# whether the ranking of documents per query survives.
RERANK_GATES: dict[str, dict[str, float]] = {
    "fp32": {"logit_max_abs_diff": 1e-4, "logit_spearman": 0.9999, "rerank_topk_overlap": 1.0},
    "fp16": {"logit_relative_error": 0.05, "logit_spearman": 0.995, "rerank_topk_overlap": 0.9},
    "bf16": {"logit_relative_error": 0.1, "logit_spearman": 0.99, "rerank_topk_overlap": 0.9},
    "int8": {"logit_relative_error": 0.25, "logit_spearman": 0.97, "rerank_topk_overlap": 0.8},
    "q4": {"logit_relative_error": 0.35, "logit_spearman": 0.95, "rerank_topk_overlap": 0.7},
}
RERANK_GATES["q4f16"] = dict(RERANK_GATES["q4"])
for _table in (DEFAULT_GATES, RERANK_GATES):
    for _gate in _table.values():
        _gate["token_mismatches"] = 0


@dataclass(frozen=True)
class GateResult:
    passed: bool
    failures: list[str] = field(default_factory=list)
    # figure -> limit actually applied, and the figures the gate names but that were not measured.
    thresholds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "thresholds": dict(self.thresholds),
            "skipped": list(self.skipped),
        }


def gate_kind(variant_name: str) -> str:
    """The gate kind of a variant name: 'model_int8_static' -> 'int8', 'q4f16' -> 'q4f16', ...

    Raises VariantError (a ValueError) for a name that says nothing about its precision; pass the kind explicitly then.
    """
    name = variant_name.lower()
    # Order matters: q4f16 before q4 and fp16; int4/nbits read as q4.
    patterns = [
        ("q4f16", r"q4f16|q4_fp16|int4f16"),
        ("q4", r"q4|int4|nbits|4bit"),
        ("int8", r"int8|uint8|qint8|quint8|i8|u8|8bit|qdq"),
        ("bf16", r"bf16|bfloat16"),
        ("fp16", r"fp16|float16|f16|half"),
        ("fp32", r"fp32|float32|f32|^model$|^default$|^base$"),
    ]
    for kind, pattern in patterns:
        if re.search(pattern, name):
            return kind
    raise VariantError(
        f"cannot tell the precision of variant {variant_name!r}; name it after one of {KINDS} "
        "or pass the gate kind explicitly"
    )


def parse_overrides(pairs: list[str] | None) -> dict[str, float | None]:
    """`["cosine_min=0.99", "sts_drop=off"]` -> {"cosine_min": 0.99, "sts_drop": None} (None disables)."""
    out: dict[str, float | None] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"gate override {pair!r} is not KEY=VALUE (e.g. cosine_min=0.99 or sts_drop=off)")
        if key not in FIGURES:
            raise ValueError(f"unknown gate figure {key!r}; known figures: {', '.join(sorted(FIGURES))}")
        if value.lower() in ("off", "none", "disable", "disabled"):
            out[key] = None
            continue
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"gate override {pair!r}: {value!r} is not a number (or 'off')") from None
        if not math.isfinite(number):
            raise ValueError(f"gate override {pair!r}: the limit must be finite")
        out[key] = number
    return out


def thresholds_for(
    kind: str, overrides: Mapping[str, float | None] | None = None, task: str = "embedding"
) -> dict[str, float]:
    table = RERANK_GATES if task == "rerank" else DEFAULT_GATES
    if task not in ("embedding", "rerank"):
        raise ValueError(f"task must be 'embedding' or 'rerank', got {task!r}")
    if kind not in table:
        raise ValueError(f"no default gate for variant kind {kind!r}; known kinds: {', '.join(table)}")
    limits: dict[str, float] = dict(table[kind])
    for key, value in (overrides or {}).items():
        if key not in FIGURES:
            raise ValueError(f"unknown gate figure {key!r}; known figures: {', '.join(sorted(FIGURES))}")
        if value is None:
            limits.pop(key, None)
        else:
            limits[key] = float(value)
    return limits


def check_gate(
    kind: str,
    figures: Mapping[str, float | None],
    overrides: Mapping[str, float | None] | None = None,
    task: str = "embedding",
) -> GateResult:
    """Check measured figures against the gate of `kind` (with overrides; None disables a figure).

    Figures the gate names but that were not measured (e.g. STS-B drop without --data) are listed in
    `skipped`, not failed. A NaN figure fails: it means the variant produced something unusable. A gate
    that could check nothing at all fails too, so that an empty measurement never reads as a pass.
    """
    limits = thresholds_for(kind, overrides, task)
    failures: list[str] = []
    skipped: list[str] = []
    checked = 0
    for key, limit in limits.items():
        value = figures.get(key)
        if value is None:
            skipped.append(key)
            continue
        checked += 1
        value = float(value)
        higher_is_better = FIGURES[key]
        if math.isnan(value):
            failures.append(f"{key} is NaN")
        elif higher_is_better and value < limit:
            failures.append(f"{key} {value:.6g} < {limit:.6g}")
        elif not higher_is_better and value > limit:
            failures.append(f"{key} {value:.6g} > {limit:.6g}")
    if checked == 0:
        failures.append(f"no figure of the {kind} gate was measured (gate names: {', '.join(limits) or 'none'})")
    return GateResult(passed=not failures, failures=failures, thresholds=limits, skipped=skipped)
