"""The parity report: each variant of a model folder against a reference, figures, gates, table, JSON.

Runs on the torch-free runtime (gte_onnx.Embedder / Reranker). The figure functions are pure numpy so
the quantize step can call them with the fp32 ONNX outputs as its reference.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

# Re-exported: the quantize step imports data_figures and evaluate_variant from here.
from .figures import (  # noqa: F401
    DATA_SETS,
    data_drops,
    data_figures,
    embedding_figures,
    rerank_figures,
    resolve_data,
    token_mismatches,
)
from .gates import GateResult, check_gate, gate_kind
from .reference import Reference


# ---- one variant ----------------------------------------------------------------------------------------
@dataclass
class VariantReport:
    name: str
    kind: str
    figures: dict[str, float]
    gate: GateResult
    seconds: float
    data: dict[str, float] = field(default_factory=dict)  # the variant's own task scores
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "figures": {k: _json_number(v) for k, v in self.figures.items()},
            "data": {k: _json_number(v) for k, v in self.data.items()},
            "gate": self.gate.to_json(),
            "seconds": round(self.seconds, 2),
            "notes": list(self.notes),
        }


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _open_runtime(folder: Path, task: str, variant: str, threads: int | None, providers):
    from gte_onnx.embedder import Embedder
    from gte_onnx.reranker import Reranker

    cls = Reranker if task == "rerank" else Embedder
    with warnings.catch_warnings():  # "fp16 is slow on the CPU": measuring it is the point here
        warnings.filterwarnings("ignore", message=".*fp16 is slow", category=RuntimeWarning)
        return cls(folder, variant=variant, threads=threads, providers=providers)


def probe_outputs(model, task: str, texts, pairs) -> tuple[np.ndarray, list[np.ndarray]]:
    """Raw outputs (unnormalised embeddings, or logits) of an Embedder/Reranker on a probe set, with the
    token ids it used; shared by the parity report and the quantize step's fp32 baseline."""
    from gte_onnx.inference.tokenize import TruncationWarning

    with warnings.catch_warnings():
        # The probe set holds one over-long input on purpose; its truncation is checked via the token ids.
        warnings.simplefilter("ignore", TruncationWarning)
        if task == "rerank":
            out = model.predict(pairs, show_progress=False)
            ids = model.tokenizer.encode_pairs(pairs).ids
        else:
            out = model.encode(texts, normalize=False, show_progress=False)
            ids = model.tokenizer.encode(texts).ids
    return np.asarray(out), ids


def evaluate_variant(
    folder: str | Path,
    variant: str,
    reference: Reference,
    data: Sequence[str] = (),
    fp32_data: Mapping[str, float] | None = None,
    overrides: Mapping[str, float | None] | None = None,
    kind: str | None = None,
    threads: int | None = None,
    providers=None,
    max_queries: int | None = None,
) -> VariantReport:
    """Figures and gate verdict of one variant. `fp32_data`: the fp32 variant's data scores, for drops."""
    started = time.perf_counter()
    folder = Path(folder)
    kind = kind or gate_kind(variant)
    model = _open_runtime(folder, reference.task, variant, threads, providers)
    notes: list[str] = []
    extra_failures: list[str] = []
    outputs, ids = probe_outputs(model, reference.task, reference.texts, reference.pairs)
    mismatched = token_mismatches(reference.token_ids, ids)
    if mismatched:
        notes.append(
            f"token ids differ from the reference for {len(mismatched)} input(s), first: "
            f"#{mismatched[0]} ({reference.groups[mismatched[0]]})"
        )
    try:
        if reference.task == "rerank":
            figures = rerank_figures(reference.outputs, outputs, reference.query_index)
        else:
            figures = embedding_figures(reference.outputs, outputs)
    except ValueError as exc:  # another model's reference: the widths differ
        figures = {}
        extra_failures.append(f"outputs do not match the reference's shape: {exc}")
    figures["token_mismatches"] = float(len(mismatched))

    own_data: dict[str, float] = {}
    if data and reference.task == "rerank":
        notes.append("data sets (STS-B, CISI) score embedding models; skipped for a reranker")
    elif data:
        def embed(texts: list[str]) -> np.ndarray:
            return model.encode(texts, normalize=True, show_progress=False)

        with warnings.catch_warnings():
            from gte_onnx.inference.tokenize import TruncationWarning

            warnings.simplefilter("ignore", TruncationWarning)  # CISI abstracts can exceed BERT's 256
            own_data = data_figures(embed, data, max_queries)
        # Drops need fp32's scores: given by the caller, or this variant's own when it is fp32.
        baseline = fp32_data if fp32_data is not None else (own_data if variant == "fp32" else None)
        if baseline is None:
            notes.append("no fp32 scores to compare with: data drops not measured")
        else:
            figures.update(data_drops(own_data, baseline))

    gate = check_gate(kind, figures, overrides, reference.task)
    if extra_failures:
        gate = GateResult(False, extra_failures + gate.failures, gate.thresholds, gate.skipped)
    return VariantReport(variant, kind, figures, gate, time.perf_counter() - started, own_data, notes)


# ---- the whole folder -----------------------------------------------------------------------------------
@dataclass
class ParityReport:
    folder: str
    task: str
    reference: dict[str, Any]
    variants: dict[str, VariantReport]
    warnings: list[str]

    @property
    def passed(self) -> bool:
        return all(v.gate.passed for v in self.variants.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "task": self.task,
            "passed": self.passed,
            "reference": self.reference,
            "warnings": self.warnings,
            "variants": {name: v.to_json() for name, v in self.variants.items()},
        }


def provenance_warnings(manifest, reference: Reference) -> list[str]:
    """Differences between the folder's source and the reference's that make a comparison suspect."""
    out = []
    prov, source = reference.provenance, dict(manifest.source)
    if manifest.task != reference.task:
        out.append(f"the folder is a {manifest.task!r} model but the reference is {reference.task!r}")
    for key in ("random_weights", "seed", "config_overrides"):
        if key in source and key in prov and (source[key] or None) != (prov[key] or None):
            out.append(f"{key}: folder {source[key]!r} vs reference {prov[key]!r}")
    mid, rid = source.get("model_id"), prov.get("model_id")
    if mid and rid and Path(str(mid)).name != Path(str(rid)).name:
        out.append(f"model: folder {mid!r} vs reference {rid!r}")
    if prov.get("max_length") not in (None, manifest.max_length):
        out.append(f"max_length: folder {manifest.max_length} vs reference {prov['max_length']}")
    if reference.task == "embedding" and prov.get("pooling") not in (None, manifest.pooling):
        out.append(f"pooling: folder {manifest.pooling!r} vs reference {prov['pooling']!r}")
    return out


def run_parity(
    folder: str | Path,
    reference: Reference,
    variants: Sequence[str] | None = None,
    data: Sequence[str] = (),
    overrides: Mapping[str, float | None] | None = None,
    threads: int | None = None,
    providers=None,
    max_queries: int | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> ParityReport:
    from gte_onnx.errors import ModelFolderError, VariantError
    from gte_onnx.folder.manifest import Manifest

    manifest = Manifest.load(folder)
    if manifest.task != reference.task:
        raise ModelFolderError(
            f"{folder} holds a {manifest.task!r} model but the reference was made for a {reference.task!r} model"
        )
    names = list(variants) if variants else list(manifest.variants)
    unknown = [v for v in names if v not in manifest.variants]
    if unknown:
        raise VariantError(f"variant(s) {unknown} are not in {folder}; it has {sorted(manifest.variants)}")
    # Data drops are measured against the folder's fp32 model, so it runs first (even when not listed).
    order = list(names)
    if data and reference.task == "embedding" and "fp32" in manifest.variants:
        order = ["fp32"] + [n for n in names if n != "fp32"]
    fp32_data: dict[str, float] | None = None
    reports: dict[str, VariantReport] = {}
    for name in order:
        log(f"measuring {name}")
        report = evaluate_variant(
            folder, name, reference, data, fp32_data, overrides, threads=threads, providers=providers,
            max_queries=max_queries,
        )
        if name == "fp32":
            fp32_data = report.data
        reports[name] = report
    return ParityReport(
        folder=str(folder),
        task=reference.task,
        reference=reference.provenance,
        variants={n: reports[n] for n in names},
        warnings=provenance_warnings(manifest, reference),
    )


# ---- terminal table ---------------------------------------------------------------------------------------
ROWS_EMBEDDING = [
    ("cosine min", "cosine_min", "{:.6f}"),
    ("cosine p1", "cosine_p1", "{:.6f}"),
    ("cosine mean", "cosine_mean", "{:.6f}"),
    ("centred cos min", "centred_cosine_min", "{:.5f}"),
    ("centred cos mean", "centred_cosine_mean", "{:.5f}"),
    ("max |diff|", "max_abs_diff", "{:.2e}"),
    ("rel. error", "relative_error", "{:.2e}"),
    ("top-10 overlap", "topk_overlap", "{:.3f}"),
    ("score Spearman", "score_spearman", "{:.4f}"),
    ("token mismatches", "token_mismatches", "{:.0f}"),
]
ROWS_RERANK = [
    ("logit max |diff|", "logit_max_abs_diff", "{:.2e}"),
    ("logit rel. error", "logit_relative_error", "{:.2e}"),
    ("logit Spearman", "logit_spearman", "{:.5f}"),
    ("top-3 overlap", "rerank_topk_overlap", "{:.3f}"),
    ("top-1 agreement", "rerank_top1_agreement", "{:.3f}"),
    ("token mismatches", "token_mismatches", "{:.0f}"),
]
ROWS_DATA = [
    ("STS-B Spearman", "sts_spearman", "sts_drop"),
    ("CISI nDCG@10", "cisi_ndcg@10", "cisi_ndcg_drop"),
    ("CISI MRR@10", "cisi_mrr@10", "cisi_mrr_drop"),
]


def format_table(report: ParityReport) -> str:
    names = list(report.variants)
    rows: list[list[str]] = [["", *names], ["gate kind", *(report.variants[n].kind for n in names)]]
    spec = ROWS_RERANK if report.task == "rerank" else ROWS_EMBEDDING
    for label, key, fmt in spec:
        cells = [_fmt(report.variants[n].figures.get(key), fmt, _fails(report.variants[n], key)) for n in names]
        rows.append([label, *cells])
    fp32 = report.variants.get("fp32")
    for label, key, drop in ROWS_DATA:
        if not any(key in v.data for v in report.variants.values()):
            continue
        cells = []
        for n in names:
            v = report.variants[n]
            if key not in v.data:
                cells.append("- ")
                continue
            cell = f"{v.data[key]:.2f}"
            if n != "fp32" and drop in v.figures:
                cell += f" ({-v.figures[drop]:+.2f})" + ("!" if _fails(v, drop) else " ")
            else:
                cell += " "
            cells.append(cell)
        rows.append([label + (" (vs fp32)" if fp32 is not None else ""), *cells])
    rows.append(["gate", *("PASS" if report.variants[n].gate.passed else "FAIL" for n in names)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    out = [f"parity of {report.folder} ({report.task}) against {report.reference.get('backend', '?')} "
           f"reference of {report.reference.get('model_id', '?')}"]
    out += [f"warning: {w}" for w in report.warnings]
    out += lines
    for n in names:
        v = report.variants[n]
        for failure in v.gate.failures:
            out.append(f"{n}: FAIL {failure}")
        out += [f"{n}: {note}" for note in v.notes]
    if report.task == "rerank":
        out.append("values marked ! miss their gate; logits against the reference's, top-k per query")
    else:
        out.append("values marked ! miss their gate; cosines to the reference (centred: its mean vector "
                   "removed); data rows: score x100 (change vs fp32)")
    return "\n".join(out)


def _fails(v: VariantReport, key: str) -> bool:
    return any(f.startswith(f"{key} ") for f in v.gate.failures)


def _fmt(value: float | None, fmt: str, failed: bool) -> str:
    if value is None:
        return "- "
    if isinstance(value, float) and math.isnan(value):
        return "NaN!"
    return fmt.format(value) + ("!" if failed else " ")
