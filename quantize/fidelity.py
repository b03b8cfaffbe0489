"""Fidelity of a new variant against the folder's fp32 ONNX model, measured when the variant is made.

The figures, the data-set scores and the gate verdict all come from gte_onnx.parity (probe set, report
figures, STS-B / CISI evaluation, gates), with the fp32 ONNX model's outputs standing in for PyTorch as
the reference, so a quantized variant is judged exactly as `gte-onnx parity` would judge it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gte_onnx.inference import kernel_family
from gte_onnx.folder.manifest import Manifest
from gte_onnx.defaults import CPU

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
    from gte_onnx.embedder import Embedder
    from gte_onnx.reranker import Reranker

    cls = Reranker if task == "rerank" else Embedder
    with warnings.catch_warnings():  # "fp16 is slow on the CPU": measuring it is the point here
        warnings.filterwarnings("ignore", message=".*fp16 is slow", category=RuntimeWarning)
        return cls(folder, variant=variant, providers=[provider], threads=threads)


def measure_baseline(
    folder: str | Path, manifest: Manifest, data_sets: Sequence[str] = (), threads: int | None = None
) -> Baseline:
    """Run the fp32 variant over the parity probe set (and the data sets) once per quantize run."""
    from gte_onnx.parity.probes import build_probe_set
    from gte_onnx.parity.reference import Reference
    from gte_onnx.parity.report import data_figures, probe_outputs
    from gte_onnx.inference.tokenize import TruncationWarning

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


# ---- imported ONNX files (gte-onnx import, a hub repo's own files) ---------------------------------------
def measure_imported(out: Path, manifest: Manifest, data_sets: tuple[str, ...], log: Callable[[str], None]) -> Manifest:
    """Each variant against the folder's fp32 file; without one every variant is recorded as unmeasured."""
    others = [n for n in manifest.variants if n != "fp32"]
    if "fp32" not in manifest.variants:
        for name in others:
            fidelity = {"measured": False, "reason": "the source has no fp32 file to measure against"}
            manifest = manifest.with_variant(dataclasses.replace(manifest.variants[name], fidelity=fidelity))
        manifest.save(out)
        log("no fp32 file: the variants stay unmeasured and variant='auto' will not pick them")
        return manifest
    if not others:
        return manifest
    log("measuring the fp32 file on the probe set" + (f" and {', '.join(data_sets)}" if data_sets else ""))
    baseline = measure_baseline(out, manifest, data_sets)
    for name in others:
        variant = manifest.variants[name]
        fidelity = measure_variant(out, name, baseline, variant.providers, kind=variant.recipe.get("gate_kind"))
        manifest = Manifest.load(out).with_variant(dataclasses.replace(variant, fidelity=fidelity))
        manifest.save(out)
        log(_summary(name, fidelity))
    return manifest


def _summary(name: str, fidelity: Mapping[str, Any]) -> str:
    keys = ("cosine_mean", "centred_cosine_mean", "logit_relative_error", "logit_spearman")
    figures = ", ".join(f"{k} {fidelity[k]:.4g}" for k in keys if isinstance(fidelity.get(k), float))
    verdict = "passed" if fidelity.get("passed") else "FAILED (" + "; ".join(fidelity.get("failures", [])) + ")"
    return f"{name}: {figures}; gate {verdict}"
