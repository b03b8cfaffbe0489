"""`gte-onnx verify FOLDER`: measure the quantized variants' fidelity gates on this CPU's kernel family.

int8 and q4 compute other numbers on other CPU kernel families (docs/cpu-support.md), so `variant="auto"` only
picks one whose gate was measured on this family, or on one of the same arithmetic. This measures it once,
exactly as `gte-onnx quantize` did where the variant was built (probe set against this folder's fp32 on this
CPU, plus STS-B / CISI for real weights with --eval full), and keeps the verdict in the cache directory, or
with --record in the folder's manifest (what a publisher does under emulation for the families it checked).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from gte_onnx.inference import kernel_family
from gte_onnx.inference.kernel_family import (
    FLOAT_KINDS,
    route_for,
    save_local_record,
    variant_kind,
)
from gte_onnx.folder.manifest import Manifest
from gte_onnx.defaults import CPU

# The figures a verification record keeps (the rest stays in the variant's own fidelity record).
KEPT = ("centred_cosine_mean", "centred_cosine_min", "cosine_mean", "cosine_p1", "topk_overlap",
        "score_spearman", "max_abs_diff", "logit_spearman", "logit_relative_error", "rerank_topk_overlap")


def verify_folder(
    folder: str | Path,
    variants: Sequence[str] | None = None,
    data_sets: Sequence[str] = (),
    record: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Measure each quantized variant's gate on this CPU; returns {variant: record}. The records go to the
    cache (keyed by the variant file's sha256) and, with `record`, into the manifest's `verified_on`."""
    from .fidelity import measure_baseline, measure_variant

    folder = Path(folder)
    manifest = Manifest.load(folder)
    family = kernel_family.detect_family()
    names = list(variants) if variants else [n for n, v in manifest.variants.items()
                                              if variant_kind(v) not in FLOAT_KINDS]
    log(f"kernel family {family}: measuring {', '.join(names) or 'nothing'} against fp32 on this CPU")
    baseline = measure_baseline(folder, manifest, data_sets if manifest.task == "embedding" else (), threads)
    out = {}
    for name in names:
        variant = manifest.variant(name)
        # The limits the variant was built against (a maker's --gate overrides included).
        fidelity = measure_variant(folder, name, baseline, (CPU,), threads,
                                   overrides=variant.fidelity.get("thresholds"),
                                   kind=variant.fidelity.get("gate_kind"))
        out[name] = summary(fidelity, route_for(variant, family).name)
        save_local_record(variant.sha256, family, out[name])
        verdict = "passed" if out[name]["passed"] else "FAILED (" + "; ".join(out[name]["failures"]) + ")"
        log(f"{name} on {family}: {verdict}; centred cosine mean {out[name].get('centred_cosine_mean')}")
    if record:
        manifest = Manifest.load(folder)  # re-read: keep concurrent changes
        for name, entry in out.items():
            variant = manifest.variant(name)
            verified_on = {**variant.verified_on, family: entry}
            manifest = manifest.with_variant(dataclasses.replace(variant, verified_on=verified_on))
        manifest.save(folder)
        log(f"recorded in {folder / 'gte-onnx.json'} under verified_on[{family!r}]")
    return out


def summary(fidelity: Mapping[str, Any], route: str) -> dict[str, Any]:
    """The verification record: verdict, failures, the main figures, and how it was measured."""
    from gte_onnx.defaults import VERSION
    import onnxruntime

    return {
        "passed": fidelity["passed"] is True,
        "failures": list(fidelity.get("failures", [])),
        **{key: fidelity[key] for key in KEPT if key in fidelity},
        "data": dict(fidelity.get("data", {})),
        "route": route,
        "machine": platform.machine(),
        "onnxruntime": onnxruntime.__version__,
        "gte-onnx": VERSION,
    }


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gte-onnx verify",
        description="Measure the quantized variants' fidelity gates on this CPU's kernel family, so "
                    "variant='auto' may pick them here.")
    parser.add_argument("folder", help="model folder")
    parser.add_argument("--variants", default=None, help="comma-separated (default: every quantized variant)")
    parser.add_argument("--eval", dest="evaluation", choices=("probe", "full"), default="probe",
                        help="probe set only (default), or also STS-B and CISI (real weights)")
    parser.add_argument("--record", action="store_true",
                        help="also write the verdict into the folder's manifest (verified_on), for publishing")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    from .fidelity import DATA_SETS

    variants = [v for v in args.variants.split(",") if v] if args.variants else None
    results = verify_folder(args.folder, variants, DATA_SETS if args.evaluation == "full" else (),
                            args.record, args.threads)
    return 0 if all(r["passed"] for r in results.values()) else 1
