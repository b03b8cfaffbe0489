"""`quantize_folder`: make the requested variants beside model.onnx, measure each, record it in the manifest.

Each variant is written to a temporary name and moved into place, recorded in the manifest with an empty
fidelity (so `variant="auto"` cannot pick it yet), measured against fp32, and recorded again with its
figures and gate verdict. A run that dies midway therefore never leaves a trusted, unmeasured variant.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gte_onnx.errors import ModelFolderError
from gte_onnx.folder.manifest import Manifest, Variant
from gte_onnx.folder.integrity import describe_data_files, describe_file, verify_variant

from .int8 import Int8Options
from .q4 import Q4Options
from gte_onnx.defaults import CPU, CUDA

# Variant name -> (file name, providers it is meant for, best first).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fp16": ("model_fp16.onnx", (CUDA,)),
    "int8": ("model_int8.onnx", (CPU,)),
    "q4": ("model_q4.onnx", (CPU,)),
    "q4f16": ("model_q4f16.onnx", (CUDA,)),
}
DEFAULT_VARIANTS = ("fp16", "int8", "q4")
EVALUATIONS = ("auto", "full", "probe", "none")


@dataclass(frozen=True)
class QuantizeOptions:
    int8: Int8Options = field(default_factory=Int8Options)
    q4: Q4Options = field(default_factory=Q4Options)
    # auto: probe set, plus STS-B and CISI when the folder's model has real (trained) weights.
    evaluation: str = "auto"
    threads: int | None = None
    gate_overrides: Mapping[str, float | None] = field(default_factory=dict)

    def __post_init__(self):
        if self.evaluation not in EVALUATIONS:
            raise ValueError(f"evaluation must be one of {EVALUATIONS}, got {self.evaluation!r}")


def parse_variants(text: str | Sequence[str]) -> list[str]:
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ValueError(f"no variant named; choose from {', '.join(VARIANTS)}")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))


def calibration_texts(limit: int = 128) -> list[str]:
    """Real text for calibration: STS-B dev sentences (the test split stays unseen for the STS-B score)
    and a quarter of CISI abstracts for longer inputs."""
    from gte_onnx.parity.datasets import load_cisi, load_sts_b

    first, second, _ = load_sts_b("dev")
    sentences = list(dict.fromkeys(first + second))[: limit - limit // 4]
    docs = load_cisi().documents
    abstracts = [docs[d] for d in sorted(docs, key=int)[:: max(1, len(docs) // (limit // 4))]][: limit // 4]
    return sentences + abstracts


def _build(name: str, src: Path, dst: Path, options: QuantizeOptions, folder: Path, manifest: Manifest):
    from .embedding import special_token_rows
    from .int8 import calibration_batches

    exact_rows = special_token_rows(dict(manifest.tokenizer))
    pad = int(manifest.tokenizer.get("pad_token_id", 0) or 0)

    def feeds():
        # Short batches keep the exposed activations of a full-size model within a few hundred MB.
        return calibration_batches(folder, manifest.inputs, manifest.max_length, pad, calibration_texts(),
                                   batch_size=8, length_cap=128)

    if name == "fp16":
        from .fp16 import make_fp16

        return make_fp16(src, dst)
    if name == "q4f16":
        from .fp16 import make_q4f16

        return make_q4f16(src, dst, options.q4, exact_rows, feeds)
    if name == "q4":
        from .q4 import make_q4

        return make_q4(src, dst, options.q4, exact_rows, feeds)
    from .int8 import make_int8

    return make_int8(src, dst, options.int8, feeds, exact_rows)


def _data_sets(manifest: Manifest, evaluation: str) -> tuple[str, ...]:
    from .fidelity import DATA_SETS, uses_real_weights

    if manifest.task != "embedding" or evaluation == "probe":
        return ()
    if evaluation == "full" or (evaluation == "auto" and uses_real_weights(manifest)):
        return DATA_SETS
    return ()


def quantize_folder(
    folder: str | Path,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    options: QuantizeOptions = QuantizeOptions(),
    log: Callable[[str], None] = print,
) -> Manifest:
    """Add `variants` to the model folder and return the updated manifest (also saved)."""
    folder = Path(folder)
    names = parse_variants(variants)
    manifest = Manifest.load(folder)
    if "fp32" not in manifest.variants:
        raise ModelFolderError(f"{folder}'s manifest has no fp32 variant to quantize from")
    src = verify_variant(folder, manifest.variants["fp32"])
    baseline = None
    if options.evaluation != "none":
        from .fidelity import measure_baseline

        data_sets = _data_sets(manifest, options.evaluation)
        log("measuring fp32 on the probe set" + (f" and {', '.join(data_sets)}" if data_sets else ""))
        baseline = measure_baseline(folder, manifest, data_sets, options.threads)
        if baseline.data:
            log("fp32: " + ", ".join(f"{k} {v:.2f}" for k, v in baseline.data.items()))

    for name in names:
        file_name, providers = VARIANTS[name]
        log(f"building {name} -> {file_name}")
        started = time.perf_counter()
        # Written in a scratch folder inside the model folder (same file system), then moved into place
        # together with any external data file, whose name the graph records relative to itself.
        with tempfile.TemporaryDirectory(dir=folder, prefix=".quantize-") as scratch:
            recipe, data_files = _build(name, src, Path(scratch) / file_name, options, folder, manifest)
            for data_file in data_files:
                os.replace(Path(scratch) / data_file, folder / data_file)
            os.replace(Path(scratch) / file_name, folder / file_name)
        recipe = {**recipe, "build_seconds": round(time.perf_counter() - started, 1)}
        described = describe_file(folder, file_name)
        variant = Variant(name=name, file=file_name, sha256=described["sha256"], bytes=described["bytes"],
                          data_files=tuple(data_files), data_integrity=describe_data_files(folder, data_files),
                          recipe=recipe, fidelity={}, providers=providers)
        manifest = Manifest.load(folder).with_variant(variant)  # re-read: keep concurrent changes
        manifest.save(folder)
        if baseline is None:
            log(f"{name}: {variant.total_bytes / 1e6:.1f} MB, not measured (--eval none): auto will not pick it")
            continue
        from .fidelity import measure_variant

        fidelity = measure_variant(folder, name, baseline, providers, options.threads, options.gate_overrides)
        manifest = Manifest.load(folder).with_variant(_replace_fidelity(variant, fidelity))
        manifest.save(folder)
        log(_summary(name, variant.total_bytes, fidelity))
    return manifest


def _replace_fidelity(variant: Variant, fidelity: dict[str, Any]) -> Variant:
    import dataclasses

    return dataclasses.replace(variant, fidelity=fidelity)


def _summary(name: str, size: int, fidelity: Mapping[str, Any]) -> str:
    keys = ("cosine_mean", "centred_cosine_mean", "max_abs_diff", "sts_drop", "cisi_ndcg_drop",
            "logit_relative_error", "logit_spearman")
    figures = ", ".join(f"{k} {fidelity[k]:.4g}" for k in keys if isinstance(fidelity.get(k), float))
    verdict = "passed" if fidelity.get("passed") else "FAILED (" + "; ".join(fidelity.get("failures", [])) + ")"
    return f"{name}: {size / 1e6:.1f} MB, {figures}; gate {verdict}"
