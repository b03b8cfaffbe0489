"""Checkpoint -> validated fp32 ONNX model folder (model.onnx, tokenizer files, gte-onnx.json)."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from gte_onnx.errors import MissingDependencyError
from gte_onnx.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, Variant, describe_file
from gte_onnx.session import INSTALL_HINT

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    copy_model_files,
    load_checkpoint,
    read_max_length,
    read_pooling,
    save_checkpoint,
)
from .validate import DEFAULT_ATOL, DEFAULT_LENGTHS, validate_export

DEFAULT_OPSET = 17
MODEL_FILE = "model.onnx"


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


def tool_versions() -> dict[str, str]:
    versions = {}
    for dist in ("gte-onnx", "torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


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


def export_graph(checkpoint: Checkpoint, onnx_path: Path, attention: str = "auto") -> dict[str, Any]:
    """Pick the exporter for the architecture: ModernBERT gets the windowed-attention graph."""
    model_type = getattr(checkpoint.config, "model_type", "")
    if model_type == "modernbert" and attention != "naive":
        from .modernbert import export_modernbert

        return export_modernbert(checkpoint.model, checkpoint.task, onnx_path)
    return export_generic(checkpoint.model, checkpoint.task, onnx_path)


def _special_ids(tokenizer_json: Path) -> dict[str, Any]:
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    specials = {tok["content"]: tok["id"] for tok in data.get("added_tokens", []) if tok.get("special")}

    def first(*names):
        for name in names:
            if name in specials:
                return specials[name]
        return None

    return {
        "cls": first("[CLS]", "<s>"),
        "sep": first("[SEP]", "</s>"),
        "pad": first("[PAD]", "<pad>"),
        "all": sorted(specials.values()),
    }


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
    ort = _import_onnxruntime()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    log(f"loading {model}" + (" with seeded random weights" if random_weights else ""))
    ckpt = load_checkpoint(model, random_weights, seed, config_overrides, task, revision, allow_pickle)
    if save_checkpoint_dir is not None:
        save_checkpoint(ckpt, save_checkpoint_dir)
        log(f"saved the PyTorch checkpoint to {save_checkpoint_dir}")

    copied = copy_model_files(ckpt.folder, out)
    if "tokenizer.json" not in copied:
        raise CheckpointError(f"{ckpt.folder} has no tokenizer.json (a fast tokenizer is required)")
    specials = _special_ids(out / "tokenizer.json")
    max_length = read_max_length(ckpt.folder, ckpt.config)
    pooling, normalize, pooling_source = read_pooling(ckpt.folder, ckpt.task, ckpt.config)

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_path = Path(tmp) / MODEL_FILE
        log(f"exporting {type(ckpt.model).__name__} ({ckpt.task}) to ONNX")
        info = export_graph(ckpt, tmp_path, attention)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(tmp_path), options, providers=["CPUExecutionProvider"])
        input_names = [i.name for i in session.get_inputs()]
        log(f"validating against PyTorch at lengths {sorted({min(n, max_length) for n in validate_lengths})}")
        report = validate_export(
            ckpt.model,
            session,
            ckpt.task,
            input_names,
            info["output"],
            max_length,
            int(ckpt.config.vocab_size),
            specials["all"],
            specials["cls"],
            specials["sep"],
            specials["pad"] if specials["pad"] is not None else int(getattr(ckpt.config, "pad_token_id", 0) or 0),
            validate_lengths,
            atol,
        )
        del session
        shutil.move(str(tmp_path), out / MODEL_FILE)
        for extra in Path(tmp).iterdir():  # external data written beside the graph, if any
            shutil.move(str(extra), out / extra.name)

    log(f"validation passed: max |diff| {report['max_abs_diff']:.2e} (limit {atol:g})")
    data_files = tuple(sorted(p.name for p in out.glob(f"{MODEL_FILE}.data")))
    described = describe_file(out, MODEL_FILE)
    fp32 = Variant(
        name="fp32",
        file=MODEL_FILE,
        sha256=described["sha256"],
        bytes=described["bytes"],
        data_files=data_files,
        recipe={"dtype": "float32", "attention": info.get("attention", ""), **info.get("recipe", {})},
        fidelity={"reference": "pytorch", "max_abs_diff": report["max_abs_diff"], "atol": atol, "passed": True},
        providers=(),
    )
    dim = int(ckpt.config.num_labels) if ckpt.task == "rerank" else int(ckpt.config.hidden_size)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        task=ckpt.task,
        source={
            "model_id": ckpt.model_id,
            "revision": ckpt.revision,
            "architecture": type(ckpt.model).__name__,
            "model_type": ckpt.config.model_type,
            "random_weights": ckpt.random_weights,
            "seed": ckpt.seed,
            "config_overrides": dict(ckpt.config_overrides),
        },
        pooling=pooling,
        normalize=normalize,
        max_length=max_length,
        dim=dim,
        inputs=tuple(input_names),
        output=info["output"],
        opset=int(info["opset"]),
        tokenizer={
            "files": [f for f in copied if not f.startswith(("modules", "1_Pooling", "config_sentence", "sentence_bert"))],
            "pad_token_id": specials["pad"],
            "cls_token_id": specials["cls"],
            "sep_token_id": specials["sep"],
        },
        variants={"fp32": fp32},
        tools=tool_versions(),
        validation=report,
        extra={"pooling_source": pooling_source},
    )
    manifest.save(out)
    log(f"wrote {out / MANIFEST_NAME}")
    return out
