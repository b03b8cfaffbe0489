"""Fidelity of a new variant against the folder's fp32 ONNX model, measured when the variant is made.

The figures, the data-set scores and the gate verdict all come from gte_onnx.parity (probe set, report
figures, STS-B / CISI evaluation, gates), with the fp32 ONNX model's outputs standing in for PyTorch as
the reference, so a quantized variant is judged exactly as `gte-onnx parity` would judge it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gte_onnx import kernel_family
from gte_onnx.manifest import Manifest

CPU = "CPUExecutionProvider"
DATA_SETS = ("sts-b", "cisi")


@dataclass
class Baseline:
    """What every variant of one quantize run is compared with: fp32 probe outputs and data scores."""

    reference: Any  # gte_onnx.parity.reference.Reference
    data: dict[str, float]  # fp32's STS-B / CISI scores (empty when not evaluated)
    data_sets: tuple[str, ...]


def uses_real_weights(manifest: Manifest) -> bool:
    return not manifest.source.get("random_weights", False)


def _open(folder: Path, task: str, variant: str, threads: int | None, provider: str):
    import gte_onnx

    cls = gte_onnx.Reranker if task == "rerank" else gte_onnx.Embedder
    return cls(folder, variant=variant, providers=[provider], threads=threads)


def measure_baseline(
    folder: str | Path, manifest: Manifest, data_sets: Sequence[str] = (), threads: int | None = None
) -> Baseline:
    """Run the fp32 variant over the parity probe set (and the data sets) once per quantize run."""
    from gte_onnx.parity.probes import build_probe_set
    from gte_onnx.parity.reference import Reference
    from gte_onnx.parity.report import data_figures, probe_outputs
    from gte_onnx.tokenize import TruncationWarning

    folder = Path(folder)
    probes = build_probe_set(folder / "tokenizer.json", manifest.max_length, manifest.task)
    model = _open(folder, manifest.task, "fp32", threads, CPU)
    outputs, ids = probe_outputs(model, manifest.task, probes.texts, probes.pairs)
    data: dict[str, float] = {}
    if data_sets and manifest.task == "embedding":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)  # long documents are cut as in fp32's own run
            data = data_figures(lambda texts: model.encode(texts, normalize=True, show_progress=False), data_sets)
    reference = Reference(
        task=manifest.task,
        groups=probes.groups,
        token_ids=list(ids),
        outputs=np.asarray(outputs, dtype=np.float32),
        provenance={"backend": "onnxruntime", "variant": "fp32", "provider": CPU, "dtype": "float32"},
        texts=probes.texts,
        pairs=probes.pairs,
        query_index=probes.query_index,
    )
    return Baseline(reference, data, tuple(data_sets) if manifest.task == "embedding" else ())


def measurement_provider(preferred: Sequence[str]) -> str:
    """The variant's own provider when this machine has it (fp16 on CUDA), else the CPU."""
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    return next((p for p in preferred if p in available), CPU)


def measure_variant(
    folder: str | Path,
    name: str,
    baseline: Baseline,
    preferred_providers: Sequence[str] = (),
    threads: int | None = None,
    overrides: Mapping[str, float | None] | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """The manifest's fidelity record of one variant: figures, data scores and drops, gate verdict."""
    from gte_onnx.parity.report import evaluate_variant

    provider = measurement_provider(preferred_providers)
    report = evaluate_variant(
        folder, name, baseline.reference, data=baseline.data_sets, fp32_data=baseline.data,
        overrides=overrides, kind=kind, threads=threads, providers=[provider],
    )
    return {
        "reference": "fp32 ONNX model of this folder",
        "provider": provider,
        # The CPU arithmetic the figures describe: int8 and q4 compute other numbers on other families.
        **({"kernel_family": kernel_family.detect_family()} if provider == CPU else {}),
        "probe_inputs": baseline.reference.size,
        **{key: _number(value) for key, value in report.figures.items()},
        "data": {key: _number(value) for key, value in report.data.items()},
        "fp32_data": {key: _number(value) for key, value in baseline.data.items()},
        "gate_kind": report.kind,
        "passed": report.gate.passed,
        "failures": list(report.gate.failures),
        "thresholds": dict(report.gate.thresholds),
        "skipped": list(report.gate.skipped),
        "notes": list(report.notes),
        "seconds": round(report.seconds, 2),
    }


def _number(value: float) -> float | str:
    """JSON has no NaN: a NaN figure (a broken variant) is written as the string "nan"."""
    value = float(value)
    return value if math.isfinite(value) else str(value)
