"""A transformers checkpoint folder (config.json, safetensors, tokenizer) -> a validated gte-onnx model
folder, without torch: numpy weights, the op-by-op graph writer, the numpy reference as the validation,
the first stage of gte_onnx.pipeline (which then adds the quantized variants and ranks them)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from gte_onnx.defaults import CPU
from gte_onnx.errors import UnsupportedModelError
from gte_onnx.folder.forms import ARCHITECTURES, SOURCE_NOTE, supported_architecture

from .checkpoint_meta import check_task, config_value, infer_task, read_config, read_max_length, read_pooling
from .folder_writer import MODEL_FILE, FolderFiles, ManifestFacts, fp32_variant, start_folder, tool_versions, write_manifest
from .safetensors_io import read_checkpoint
from .validation import DEFAULT_ATOL, WINDOW_EDGE_LENGTHS, Probe, ProbeSpec, validate_graph

CONVERT_TOOLS = ("gte-onnx", "onnx", "onnxruntime", "tokenizers", "numpy")


def _unsupported(config: dict, source: Path) -> UnsupportedModelError:
    found = ", ".join(config_value(config, "architectures", []) or []) or "no architectures"
    supported = ", ".join(a for archs in ARCHITECTURES.values() for a in archs)
    return UnsupportedModelError(
        f"{source}: model_type {config_value(config, 'model_type', None)!r} ({found}) cannot be converted "
        f"without torch; supported architectures: {supported}"
    )


@dataclass
class Built:
    """The graph written for a checkpoint, and the numpy forward pass it is validated against."""

    info: dict[str, Any]
    reference: Callable[[Probe], np.ndarray]
    architecture: str
    dim: int


def read_parts(family: str, config: dict, source: Path, task: str):
    """The checkpoint's weights as the writer's numpy parts (the raw tensors are dropped on return)."""
    tensors = read_checkpoint(source)
    if family == "modernbert":
        from .modernbert_weights import modernbert_parts

        return modernbert_parts(config, tensors, task, str(source))
    from .bert_weights import bert_parts

    return bert_parts(config, tensors, task, str(source))


def build_model(family: str, config: dict, source: Path, task: str, onnx_path: Path) -> Built:
    """Write the fp32 graph of the checkpoint at onnx_path; return it with its numpy reference."""
    from . import reference as ref

    names = ARCHITECTURES[family]
    architecture = names[1] if task == "rerank" else names[0]
    parts = read_parts(family, config, source, task)
    if family == "modernbert":
        from .modernbert_graph import write_graph

        info, run = write_graph(parts, task, onnx_path), ref.modernbert_forward
    else:
        from .bert_graph import write_bert_graph

        info, run = write_bert_graph(parts, task, onnx_path), ref.bert_forward

    def forward(probe: Probe) -> np.ndarray:
        return row_by_row(lambda ids, mask: run(parts, ids, mask, task), probe, task)

    dim = parts.head["classifier"].weight_t.shape[1] if task == "rerank" else parts.hidden
    return Built(info, forward, architecture, int(dim))


def row_by_row(run: Callable[[np.ndarray, np.ndarray], np.ndarray], probe: Probe, task: str) -> np.ndarray:
    """The reference of a padded batch, computed one row at a time on its real tokens only: the reference
    masks padding exactly (its weight underflows to 0), so this is the same function at a fraction of the
    cost (a 5-row batch padded to 300 tokens holds 515 real ones). Pad positions of the result are 0."""
    rows = []
    for ids, mask in zip(probe.ids, probe.mask):
        real = int(mask.sum())
        if not mask[:real].all():  # left padding or holes: run the row as it is
            rows.append(run(ids[None], mask[None])[0])
            continue
        out = run(ids[None, :real], mask[None, :real])[0]
        if task != "rerank":
            out = np.concatenate([out, np.zeros((len(ids) - real, *out.shape[1:]), out.dtype)])
        rows.append(out)
    return np.stack(rows)


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=[CPU])


def _provenance(source: Path, model_id: str | None, revision: str | None, config: dict, architecture: str) -> dict:
    note = {}
    if (source / SOURCE_NOTE).is_file():
        note = json.loads((source / SOURCE_NOTE).read_text(encoding="utf-8"))
    return {
        "model_id": model_id or note.get("model_id") or str(source),
        "revision": revision or note.get("revision"),
        "architecture": architecture,
        "model_type": config_value(config, "model_type", None),
        "random_weights": bool(note.get("random_weights", False)),
        "seed": note.get("seed"),
        "config_overrides": dict(note.get("config_overrides") or {}),
        "converted_by": "gte-onnx numpy converter",
    }


def validate(built: Built, out: Path, task: str, spec: ProbeSpec, lengths: Sequence[int], atol: float) -> dict:
    session = _session(out / MODEL_FILE)
    input_names = [i.name for i in session.get_inputs()]
    report = validate_graph(built.reference, session, task, input_names, built.info["output"], spec, lengths, atol,
                            "the numpy reference")
    return {"reference": "numpy", **report}


def _probe_spec(config: dict, files: FolderFiles, max_length: int) -> ProbeSpec:
    vocab = int(config_value(config, "vocab_size", 0))
    return ProbeSpec(max_length, vocab, files.specials["all"], files.specials["cls"], files.specials["sep"],
                     files.pad_id(config_value(config, "pad_token_id", 0)))


def convert_fp32(
    source: Path,
    out_dir: Path,
    *,
    model_id: str | None = None,
    revision: str | None = None,
    log: Callable[[str], None] = print,
    task: str | None = None,
    validate_lengths: Sequence[int] = WINDOW_EDGE_LENGTHS,
    atol: float = DEFAULT_ATOL,
) -> Path:
    """Convert the checkpoint folder `source` into an fp32 model folder at `out_dir` (manifest, tokenizer
    files, model.onnx validated against the numpy reference). Returns out_dir. The quantized variants and
    the speed ranking are the pipeline's next steps (gte_onnx.pipeline.convert_checkpoint).

    Raises UnsupportedModelError for other architectures, CheckpointFormatError for unreadable or incomplete
    weights, ExportValidationError when the graph disagrees with the reference."""
    source, out = Path(source), Path(out_dir)
    started = time.perf_counter()
    config = read_config(source)
    family = supported_architecture(config)
    if family is None:
        raise _unsupported(config, source)
    task = check_task(task or infer_task(config))
    files = start_folder(source, out)
    max_length = read_max_length(source, config)
    log(f"reading the {family} weights of {source} and writing the {task} graph")
    built = build_model(family, config, source, task, out / MODEL_FILE)
    spec = _probe_spec(config, files, max_length)
    log(f"validating against the numpy reference at lengths {sorted({min(n, max_length) for n in validate_lengths})}")
    report = validate(built, out, task, spec, validate_lengths, atol)
    log(f"validation passed: max |diff| {report['max_abs_diff']:.2e} (limit {atol:g})")
    facts = ManifestFacts(task, _provenance(source, model_id, revision, config, built.architecture),
                          read_pooling(source, task, config), max_length, built.dim)
    write_manifest(out, facts, files, built.info, report, fp32_variant(out, built.info, report, "numpy"),
                   tool_versions(CONVERT_TOOLS))
    log(f"fp32 model folder written in {time.perf_counter() - started:.1f} s")
    return out
