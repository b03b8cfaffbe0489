"""ONNX files made elsewhere (transformers.js, optimum) -> a gte-onnx model folder, and `gte-onnx import`.

The manifest is synthesized from config.json, the Sentence-Transformers files and the tokenizer; each file
becomes a variant named after its precision; the graph's real inputs and output are read from an
onnxruntime session. Each variant is measured against the source's fp32 file with the same probe set and
gates as `gte-onnx quantize`; without an fp32 file a variant stays unmeasured, and `variant="auto"` never
picks an unmeasured variant.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from gte_onnx.defaults import CPU
from gte_onnx.folder.forms import EMBEDDING_OUTPUTS, KINDS, RUNTIME_INPUTS, layout_of, onnx_variant_files
from gte_onnx.errors import ModelFolderError, UnsupportedModelError
from gte_onnx.folder.manifest import FORMAT_VERSION, Manifest, Variant
from gte_onnx.folder.integrity import describe_data_files, describe_file

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
    from gte_onnx.inference.session import import_onnxruntime

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


def import_onnx_files(
    source: str | Path,
    out_dir: str | Path,
    *,
    variants: Iterable[str] | None = None,
    model_id: str | None = None,
    revision: str | None = None,
) -> Manifest:
    """Write a gte-onnx model folder for the ONNX files of the local folder `source` into `out_dir`: the
    files copied, the manifest synthesized, nothing measured yet (gte_onnx.pipeline.import_onnx measures each
    variant against the fp32 file and ranks them)."""
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
    return manifest
