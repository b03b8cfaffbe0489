"""Checkpoint -> validated fp32 ONNX model folder (model.onnx, tokenizer files, gte-onnx.json).

ModernBERT and the BERT family are written op by op from numpy weights by gte_onnx.convert (the writer the
torch-free converter uses too); only other architectures go through torch.onnx.export. The graph is then
validated against PyTorch, and the manifest written last.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from gte_onnx.convert.folder_writer import (
    MODEL_FILE,
    FolderFiles,
    ManifestFacts,
    fp32_variant,
    start_folder,
    tool_versions,
    write_manifest,
)
from gte_onnx.errors import MissingDependencyError
from gte_onnx.folder.manifest import MANIFEST_NAME
from gte_onnx.inference.session import INSTALL_HINT

from .checkpoint import Checkpoint, load_checkpoint, read_max_length, read_pooling, save_checkpoint
from .validate import DEFAULT_ATOL, DEFAULT_LENGTHS, validate_export
from gte_onnx.defaults import CPU

DEFAULT_OPSET = 17


def _uses_token_type_ids(model) -> bool:
    params = inspect.signature(model.forward).parameters
    return "token_type_ids" in params and getattr(model.config, "type_vocab_size", 0) > 0


def export_generic(model, task: str, onnx_path: Path, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """torch.onnx.export of the unmodified transformers model (BERT family; ModernBERT's naive path)."""
    import torch

    token_type = _uses_token_type_ids(model)
    output = "logits" if task == "rerank" else "last_hidden_state"

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            out = self.inner(**kwargs)
            return out.logits if task == "rerank" else out.last_hidden_state

    # An example length that is not a multiple of common block sizes, so no length is baked in.
    ids = torch.randint(5, 100, (2, 37), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    args: tuple = (ids, mask, torch.zeros_like(ids)) if token_type else (ids, mask)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_type else [])
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes[output] = {0: "batch"} if task == "rerank" else {0: "batch", 1: "sequence"}
    with torch.inference_mode():
        torch.onnx.export(
            Wrapper(model).eval(),
            args,
            str(onnx_path),
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    return {"inputs": names, "output": output, "opset": opset, "attention": "transformers default (naive)"}


def torch_state_dict(model) -> dict[str, np.ndarray]:
    """The model's parameters and buffers as float32 numpy arrays (the converter's input)."""
    return {name: np.ascontiguousarray(t.detach().to("cpu").float().numpy()) if t.is_floating_point()
            else t.detach().to("cpu").numpy() for name, t in model.state_dict().items()}


def export_bert(model, task: str, onnx_path: Path) -> dict[str, Any]:
    """The op-by-op BERT graph of a BertModel / BertForSequenceClassification, from its weights."""
    from gte_onnx.convert.bert_graph import write_bert_graph
    from gte_onnx.convert.bert_weights import bert_parts

    return write_bert_graph(bert_parts(model.config.to_dict(), torch_state_dict(model), task), task, onnx_path)


def export_graph(checkpoint: Checkpoint, onnx_path: Path, attention: str = "auto") -> dict[str, Any]:
    """Pick the writer for the architecture: ModernBERT gets the windowed-attention graph, the BERT family
    the op-by-op graph; anything else (and attention="naive") is traced by torch.onnx.export."""
    from gte_onnx.folder.forms import supported_architecture

    family = supported_architecture(checkpoint.config.to_dict())
    if attention != "naive" and family == "modernbert":
        from .modernbert import export_modernbert

        return export_modernbert(checkpoint.model, checkpoint.task, onnx_path)
    if attention != "naive" and family == "bert":
        return export_bert(checkpoint.model, checkpoint.task, onnx_path)
    return export_generic(checkpoint.model, checkpoint.task, onnx_path)


def _import_onnxruntime():
    """The export validates its graph with ONNX Runtime; the [export] extra does not pull it in, because the
    user chooses between the CPU and the GPU wheel (installing both breaks CUDA)."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            "gte-onnx export validates the ONNX graph with ONNX Runtime, which is not installed. "
            f"Install it with: {INSTALL_HINT}"
        ) from None
    return onnxruntime


def _session(path: Path):
    ort = _import_onnxruntime()

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=[CPU])


def _validate(ckpt: Checkpoint, session, info, files: FolderFiles, max_length: int, lengths, atol) -> dict:
    input_names = [i.name for i in session.get_inputs()]
    return validate_export(
        ckpt.model, session, ckpt.task, input_names, info["output"], max_length, int(ckpt.config.vocab_size),
        files.specials["all"], files.specials["cls"], files.specials["sep"],
        files.pad_id(getattr(ckpt.config, "pad_token_id", 0)), lengths, atol,
    )


def write_validated_graph(ckpt: Checkpoint, out: Path, files: FolderFiles, max_length: int,
                          lengths: Sequence[int], atol: float, attention: str, log) -> tuple[dict, dict]:
    """Write model.onnx into `out` only once it agrees with PyTorch; return (graph info, report)."""
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_path = Path(tmp) / MODEL_FILE
        log(f"exporting {type(ckpt.model).__name__} ({ckpt.task}) to ONNX")
        info = export_graph(ckpt, tmp_path, attention)
        session = _session(tmp_path)
        info["inputs"] = [i.name for i in session.get_inputs()]
        log(f"validating against PyTorch at lengths {sorted({min(n, max_length) for n in lengths})}")
        report = _validate(ckpt, session, info, files, max_length, lengths, atol)
        del session
        shutil.move(str(tmp_path), out / MODEL_FILE)
        for extra in Path(tmp).iterdir():  # external data written beside the graph, if any
            shutil.move(str(extra), out / extra.name)
    log(f"validation passed: max |diff| {report['max_abs_diff']:.2e} (limit {atol:g})")
    return info, report


def _facts(ckpt: Checkpoint, max_length: int) -> ManifestFacts:
    dim = int(ckpt.config.num_labels) if ckpt.task == "rerank" else int(ckpt.config.hidden_size)
    source = {
        "model_id": ckpt.model_id,
        "revision": ckpt.revision,
        "architecture": type(ckpt.model).__name__,
        "model_type": ckpt.config.model_type,
        "random_weights": ckpt.random_weights,
        "seed": ckpt.seed,
        "config_overrides": dict(ckpt.config_overrides),
    }
    return ManifestFacts(ckpt.task, source, read_pooling(ckpt.folder, ckpt.task, ckpt.config), max_length, dim)


def export_model(
    model: str,
    out_dir: str | Path,
    random_weights: bool = False,
    seed: int = 0,
    config_overrides: Mapping[str, Any] | None = None,
    task: str | None = None,
    save_checkpoint_dir: str | Path | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    validate_lengths: Sequence[int] = DEFAULT_LENGTHS,
    atol: float = DEFAULT_ATOL,
    attention: str = "auto",
    log=print,
) -> Path:
    """Export MODEL to OUT_DIR and validate it against PyTorch; the manifest is written last, so a folder
    with a manifest is always a validated one."""
    _import_onnxruntime()  # fail before the slow part when the validation could not run
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    log(f"loading {model}" + (" with seeded random weights" if random_weights else ""))
    ckpt = load_checkpoint(model, random_weights, seed, config_overrides, task, revision, allow_pickle)
    if save_checkpoint_dir is not None:
        save_checkpoint(ckpt, save_checkpoint_dir)
        log(f"saved the PyTorch checkpoint to {save_checkpoint_dir}")
    files = start_folder(ckpt.folder, out)
    max_length = read_max_length(ckpt.folder, ckpt.config)
    info, report = write_validated_graph(ckpt, out, files, max_length, validate_lengths, atol, attention, log)
    write_manifest(out, _facts(ckpt, max_length), files, info, report, fp32_variant(out, info, report, "pytorch"),
                   tool_versions())
    log(f"wrote {out / MANIFEST_NAME}")
    return out
