"""ONNX files made elsewhere (transformers.js, optimum) -> a gte-onnx model folder, and `gte-onnx import`.

The manifest is synthesized from config.json, the Sentence-Transformers files and the tokenizer; each file
becomes a variant named after its precision; the graph's real inputs and output are read from an
onnxruntime session. Each variant is measured against the source's fp32 file with the same probe set and
gates as `gte-onnx quantize`; without an fp32 file a variant stays unmeasured, and `variant="auto"` never
picks an unmeasured variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from gte_onnx.errors import ModelFolderError, UnsupportedModelError, VariantError
from gte_onnx.manifest import FORMAT_VERSION, Manifest, Variant, describe_data_files, describe_file

from .checkpoint_meta import (
    SENTENCE_TRANSFORMERS_FILES,
    TOKENIZER_FILES,
    config_value,
    infer_task,
    read_config,
    read_max_length,
    read_pooling,
    special_ids,
    tokenizer_files,
)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# File stem -> variant name, per layout. transformers.js keeps its graphs in onnx/, optimum at the top.
TRANSFORMERS_JS = {
    "model": "fp32", "model_fp16": "fp16", "model_int8": "int8", "model_uint8": "uint8",
    "model_quantized": "quantized", "model_q4": "q4", "model_q4f16": "q4f16", "model_bnb4": "bnb4",
}
OPTIMUM = {"model": "fp32", "model_optimized": "optimized", "model_quantized": "quantized"}
# Variant name -> (gate kind, providers it is meant for). "quantized" is transformers.js' and optimum's
# dynamic 8-bit file; "optimized" is optimum's fused graph, fp32 unless its weights are float16.
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fp32": ("fp32", ()), "fp16": ("fp16", (CUDA,)), "int8": ("int8", (CPU,)), "uint8": ("int8", (CPU,)),
    "quantized": ("int8", (CPU,)), "q4": ("q4", (CPU,)), "q4f16": ("q4f16", (CUDA,)), "bnb4": ("q4", (CPU,)),
    "optimized": ("fp32", ()),
}
# What `variant="auto"` may choose on each provider, besides fp32, best first.
AUTO_CANDIDATES = {CPU: ("int8", "quantized", "uint8"), CUDA: ("fp16",)}
RUNTIME_INPUTS = {"input_ids", "attention_mask", "token_type_ids", "position_ids"}
EMBEDDING_OUTPUTS = ("last_hidden_state", "sentence_embedding")


def onnx_variant_files(files: Iterable[str]) -> dict[str, str]:
    """Variant name -> file for the ONNX graphs of a listing: transformers.js' onnx/ first, else optimum's."""
    present = set(files)
    for folder, layout in (("onnx/", TRANSFORMERS_JS), ("", OPTIMUM)):
        found = {name: f"{folder}{stem}.onnx" for stem, name in layout.items() if f"{folder}{stem}.onnx" in present}
        if found:
            return found
    return {}


def layout_of(files: Mapping[str, str]) -> str:
    return "transformers.js" if any(f.startswith("onnx/") for f in files.values()) else "optimum"


def variants_to_import(available: Mapping[str, str], variant: str | None, provider: str | None, name: str) -> list[str]:
    """Which files a load needs: the named one; for "auto", fp32 and the provider's quantized candidate
    (measured against it); "all"; or None, just one (the manifest's facts)."""
    if not available:
        raise UnsupportedModelError(f"{name} holds no ONNX files in the transformers.js or optimum layout")
    if variant == "all":
        return list(available)
    if variant is None:
        return ["fp32" if "fp32" in available else next(iter(available))]
    if variant != "auto":
        if variant not in available:
            raise VariantError(f"{name} has no {variant!r} ONNX file; it has {sorted(available)}")
        return [variant]
    if "fp32" not in available:
        raise VariantError(
            f"{name} has no fp32 ONNX file to measure its other files against, so variant='auto' has nothing "
            f"measured to choose; name one of {sorted(available)} explicitly"
        )
    candidates = [c for c in AUTO_CANDIDATES.get(provider or CPU, ()) if c in available][:1]
    return ["fp32", *candidates]


def _onnx():
    try:
        import onnx
    except ImportError:
        from gte_onnx.errors import missing_dependency

        raise missing_dependency("onnx", "cpu", "Reading ONNX files made elsewhere") from None
    return onnx


def external_data_files(graph: Path) -> list[str]:
    """The external data files the graph names, relative to its folder (read without loading them)."""
    onnx = _onnx()
    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception as exc:  # a truncated or foreign file
        raise ModelFolderError(f"{graph} is not a readable ONNX file: {exc}") from None
    names = []
    for tensor in _initializers(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names += [entry.value for entry in tensor.external_data if entry.key == "location"]
    return sorted(set(names))


def _initializers(graph) -> Iterable[Any]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.g is not None and attr.g.ByteSize():
                yield from _initializers(attr.g)


def _opset(graph: Path) -> int:
    model = _onnx().load(str(graph), load_external_data=False)
    return max((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _gate_kind(name: str, graph: Path) -> str:
    kind = KINDS.get(name, ("fp32", ()))[0]
    if name == "optimized":  # optimum -O4 stores float16 weights
        onnx = _onnx()
        model = onnx.load(str(graph), load_external_data=False)
        halves = sum(1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
        kind = "fp16" if halves > len(model.graph.initializer) // 2 else "fp32"
    return kind


def graph_io(graph: Path, task: str) -> tuple[list[str], str, Any]:
    """(inputs, the output the runtime reads, its last dimension) from an onnxruntime session."""
    from gte_onnx.session import import_onnxruntime

    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the declared I/O
    try:
        session = ort.InferenceSession(str(graph), options, providers=[CPU])
    except Exception as exc:
        raise ModelFolderError(f"onnxruntime cannot load {graph}: {exc}") from None
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name: o.shape for o in session.get_outputs()}
    unknown = sorted(set(inputs) - RUNTIME_INPUTS)
    if unknown:
        raise UnsupportedModelError(f"{graph.name} needs inputs the runtime cannot feed: {unknown}")
    wanted = ("logits",) if task == "rerank" else EMBEDDING_OUTPUTS
    output = next((name for name in wanted if name in outputs), None)
    if output is None:
        raise UnsupportedModelError(
            f"{graph.name} has outputs {sorted(outputs)}; a {task} model needs one of {list(wanted)}"
        )
    shape = outputs[output]
    return inputs, output, shape[-1] if shape else None


def _place(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (hub blobs stay single copies), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    real = src.resolve()
    try:
        os.link(real, dst)
    except OSError:
        shutil.copyfile(real, dst)


def _copy_sources(source: Path, out: Path, graphs: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Metadata files and graphs (with their external data) into out; returns variant -> data files."""
    for name in ("config.json", *TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES):
        if (source / name).is_file():
            _place(source / name, out / name)
    data_files: dict[str, tuple[str, ...]] = {}
    for name, file in graphs.items():
        if not (source / file).is_file():
            raise ModelFolderError(f"{source} lacks {file}")
        _place(source / file, out / file)
        parent = Path(file).parent
        data = [(parent / d).as_posix() for d in external_data_files(source / file)]
        for d in data:
            if not (source / d).is_file():
                raise ModelFolderError(f"{file} reads its weights from {d}, which {source} lacks")
            _place(source / d, out / d)
        data_files[name] = tuple(data)
    return data_files


def synthesize_manifest(
    out: Path, graphs: Mapping[str, str], data_files: Mapping[str, tuple[str, ...]], model_id: str,
    revision: str | None,
) -> Manifest:
    """The manifest of the imported folder, every variant still unmeasured."""
    if not (out / "config.json").is_file():
        raise UnsupportedModelError(f"{model_id} has ONNX files but no config.json to say what the model is")
    config = read_config(out)
    task = infer_task(config)
    primary = graphs.get("fp32") or next(iter(graphs.values()))
    inputs, output, width = graph_io(out / primary, task)
    pooling, normalize, pooling_source = read_pooling(out, task, config)
    if output == "sentence_embedding":
        pooling, pooling_source = "none", "the graph pools (sentence_embedding output)"
    dim = width if isinstance(width, int) else (_num_labels(config) if task == "rerank" else int(config["hidden_size"]))
    variants = {}
    for name, file in graphs.items():
        kind, providers = KINDS.get(name, ("fp32", ()))
        described = describe_file(out, file)
        variants[name] = Variant(
            name=name, file=file, sha256=described["sha256"], bytes=described["bytes"],
            data_files=data_files.get(name, ()),
            data_integrity=describe_data_files(out, data_files.get(name, ())),
            recipe={"imported_from": file, "layout": layout_of(graphs), "gate_kind": _gate_kind(name, out / file)},
            fidelity=_fp32_record() if name == "fp32" else {}, providers=providers,
        )
    archs = config.get("architectures") or []
    return Manifest(
        format_version=FORMAT_VERSION, task=task,
        source={"model_id": model_id, "revision": revision, "architecture": archs[0] if archs else None,
                "model_type": config.get("model_type"), "random_weights": False, "imported": layout_of(graphs)},
        pooling=pooling, normalize=normalize, max_length=read_max_length(out, config), dim=int(dim),
        inputs=tuple(inputs), output=output, opset=_opset(out / primary), tokenizer=_tokenizer_record(out, config),
        variants=variants, extra={"pooling_source": pooling_source},
    )


def _num_labels(config: Mapping[str, Any]) -> int:
    labels = config_value(config, "id2label", {})
    return int(config_value(config, "num_labels", len(labels) if isinstance(labels, Mapping) and labels else 1))


def _tokenizer_record(out: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    if not (out / "tokenizer.json").is_file():
        raise UnsupportedModelError(f"{out} has no tokenizer.json (a fast tokenizer is required)")
    specials = special_ids(out / "tokenizer.json")
    pad = specials["pad"] if specials["pad"] is not None else int(config_value(config, "pad_token_id", 0))
    present = [name for name in TOKENIZER_FILES if (out / name).is_file()]
    return {"files": tokenizer_files(present), "pad_token_id": pad, "cls_token_id": specials["cls"],
            "sep_token_id": specials["sep"]}


def _fp32_record() -> dict[str, Any]:
    return {"reference": "the source's own fp32 file, the reference of the other variants"}


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
    from gte_onnx.quantize.fidelity import measure_baseline, measure_variant

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


def import_onnx(
    source: str | Path,
    out_dir: str | Path,
    *,
    variants: Iterable[str] | None = None,
    model_id: str | None = None,
    revision: str | None = None,
    data_sets: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
    rank: bool = True,
) -> Path:
    """Write a gte-onnx model folder for the ONNX files of the local folder `source` into `out_dir`; with
    `rank`, the variants' CPU speed is measured into speed_ranking, so variant="auto" picks by speed among
    those that pass their gate (as for a converted model)."""
    source, out = Path(source), Path(out_dir)
    available = onnx_variant_files(p.relative_to(source).as_posix() for p in source.rglob("*.onnx"))
    names = list(variants) if variants is not None else list(available)
    missing = [n for n in names if n not in available]
    if not available or missing:
        raise UnsupportedModelError(
            f"{source} has no ONNX file for {missing or 'any variant'} in the transformers.js or optimum "
            f"layout; found {sorted(available.values()) or 'none'}"
        )
    graphs = {name: available[name] for name in names}
    out.mkdir(parents=True, exist_ok=True)
    data_files = _copy_sources(source, out, graphs)
    manifest = synthesize_manifest(out, graphs, data_files, model_id or str(source), revision)
    manifest.save(out)
    manifest = measure_imported(out, manifest, data_sets, log)
    if rank and any(v.passes_gate() for name, v in manifest.variants.items() if name != "fp32"):
        from .converter import rank_on_cpu

        rank_on_cpu(out, log)
    return out


# ---- gte-onnx import ------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gte-onnx import",
        description="Make a gte-onnx model folder of the ONNX files a hub repo or folder already has "
        "(transformers.js onnx/model*.onnx, optimum model*.onnx), each measured against its fp32 file.",
    )
    parser.add_argument("source", help="hub id (org/name) or local folder")
    parser.add_argument("out", help="new output folder")
    parser.add_argument("--variants", default="all", help="comma-separated variant names, or all (default)")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--offline", action="store_true", help="use only the local hub cache")
    parser.add_argument("--eval", choices=("probe", "full"), default="probe",
                        help="probe: the probe set; full: also STS-B and CISI (embedding models)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ModelFolderError(f"{out} exists and is not empty; give a new folder")
    folder, model_id, revision, names = fetch_for_import(args.source, args.variants, args.revision, args.offline)
    data_sets = ("sts-b", "cisi") if args.eval == "full" else ()
    import_onnx(folder, out, variants=names, model_id=model_id, revision=revision, data_sets=data_sets)
    print(f"wrote {out}")
    return 0


def fetch_for_import(model: str, variants: str, revision: str | None, offline: bool):
    """(local folder, model id, revision, variant names) with the chosen graphs downloaded."""
    from gte_onnx.hub import LocalFolder, open_source
    from gte_onnx.resolve import fetch_onnx_files, metadata_files

    repo = open_source(model, revision, offline)
    available = onnx_variant_files(repo.files)
    if not available:
        raise UnsupportedModelError(f"{repo.name} holds no ONNX files in the transformers.js or optimum layout")
    names = list(available) if variants == "all" else [v.strip() for v in variants.split(",") if v.strip()]
    for name in names:
        variants_to_import(available, name, None, repo.name)  # an unknown name fails here, before downloads
    folder = fetch_onnx_files(repo, metadata_files(repo.files), [available[n] for n in names])
    model_id = str(Path(model).resolve()) if isinstance(repo, LocalFolder) else repo.repo_id
    return folder, model_id, repo.revision, names
