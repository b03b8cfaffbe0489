"""Load a PyTorch checkpoint (hub id or local folder), or build one with seeded random weights.

Safetensors only unless the caller allows pickle; never remote code. The real config and tokenizer
files of the two gte models ship in model_files/, so `--random-weights` needs no network for them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from gte_onnx.convert.checkpoint_meta import (  # noqa: F401  (re-exported: export's callers import them here)
    SENTENCE_TRANSFORMERS_FILES,
    TOKENIZER_FILES,
    CheckpointError,
    copy_model_files,
    infer_task,
    read_max_length,
    read_pooling,
)
from gte_onnx.errors import missing_dependency
from gte_onnx.folder.forms import SOURCE_NOTE

SHIPPED_MODEL_FILES = Path(__file__).parent / "model_files"

@dataclass
class Checkpoint:
    """A loaded PyTorch model and what the export needs to know about it."""

    model: Any  # transformers PreTrainedModel, eval mode, fp32
    folder: Path  # where config and tokenizer files were read from
    model_id: str
    revision: str | None
    task: str  # "embedding" | "rerank"
    random_weights: bool
    seed: int | None
    config_overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise missing_dependency("torch and transformers", "export", "Exporting a checkpoint") from None
    return torch


def shipped_files(model_id: str) -> Path | None:
    """The shipped config/tokenizer folder for a known hub id (e.g. Alibaba-NLP/gte-modernbert-base)."""
    path = SHIPPED_MODEL_FILES / model_id
    return path if (path / "config.json").is_file() else None


def locate(model: str, revision: str | None, need_weights: bool) -> tuple[Path, str, str | None]:
    """(local folder, model id, resolved revision) for a local path or a hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} has no config.json: not a transformers checkpoint folder")
        return path, str(model), revision
    if not need_weights:
        shipped = shipped_files(model)
        if shipped is not None:
            return shipped, model, revision or _shipped_revision(model)
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise CheckpointError(f"{model}: no such folder, and not a hub id of the form org/name either")
    from huggingface_hub import HfApi, snapshot_download

    patterns = ["*.json", "*.txt", "1_Pooling/*"] + (["*.safetensors"] if need_weights else [])
    try:
        local = Path(snapshot_download(repo_id=model, revision=revision, allow_patterns=patterns))
        sha = revision
        try:
            sha = HfApi().model_info(model, revision=revision).sha or revision
        except Exception:  # the revision is provenance only; a failed lookup must not stop the export
            pass
    except Exception as exc:
        raise CheckpointError(f"could not download {model} from the Hugging Face hub: {exc}") from None
    return local, model, sha


def _shipped_revision(model_id: str) -> str | None:
    sources = (SHIPPED_MODEL_FILES / "SOURCES.md").read_text(encoding="utf-8")
    name = model_id.split("/")[-1]
    for line in sources.splitlines():
        if line.startswith(f"## {name} (hub revision "):
            return line.split("hub revision ")[1].rstrip(")")
    return None


def load_checkpoint(
    model: str,
    random_weights: bool = False,
    seed: int = 0,
    config_overrides: Mapping[str, Any] | None = None,
    task: str | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
) -> Checkpoint:
    torch = _torch()
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    folder, model_id, revision = locate(model, revision, need_weights=not random_weights)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    for key, value in (config_overrides or {}).items():
        if not hasattr(config, key):
            raise CheckpointError(f"config override {key!r}: {type(config).__name__} has no such field")
        setattr(config, key, value)
    if config_overrides and "layer_types" not in config_overrides and hasattr(config, "layer_types"):
        # ModernBERT derives layer_types from num_hidden_layers at construction: keep them consistent.
        every = getattr(config, "global_attn_every_n_layers", 3)
        config.layer_types = [
            "full_attention" if i % every == 0 else "sliding_attention" for i in range(config.num_hidden_layers)
        ]
    task = task or infer_task(config)
    if task not in ("embedding", "rerank"):
        raise CheckpointError(f"task must be 'embedding' or 'rerank', got {task!r}")
    auto = AutoModelForSequenceClassification if task == "rerank" else AutoModel
    if random_weights:
        torch.manual_seed(seed)
        # No dtype: the init follows the config's dtype, so a synthetic model holds values the released
        # checkpoint could hold (gte's weights ship in float16, the reranker's in float32); it is then
        # run in fp32 like any checkpoint.
        hf_model = auto.from_config(config, trust_remote_code=False, attn_implementation="sdpa")
    else:
        has_safetensors = any(folder.glob("*.safetensors"))
        has_pickle = any(folder.glob("pytorch_model*.bin"))
        if not has_safetensors and has_pickle and not allow_pickle:
            raise CheckpointError(
                f"{folder} holds only pickle weights (pytorch_model.bin), which can run arbitrary code when "
                "loaded; convert them to safetensors, or pass --allow-pickle if you trust the source"
            )
        if not has_safetensors and not has_pickle:
            raise CheckpointError(f"{folder} has no weights (*.safetensors); use --random-weights for a synthetic model")
        hf_model = auto.from_pretrained(
            folder,
            config=config,
            trust_remote_code=False,
            use_safetensors=not (allow_pickle and not has_safetensors),
            attn_implementation="sdpa",
            dtype=torch.float32,
        )
    hf_model = hf_model.float().eval()
    # Weights saved by `export --random-weights --save-checkpoint` are still the seeded random ones: the
    # folder's note carries that provenance to whatever is made from them.
    note = {} if random_weights else saved_provenance(folder)
    return Checkpoint(
        model=hf_model,
        folder=folder,
        model_id=model_id,
        revision=revision,
        task=task,
        random_weights=random_weights or bool(note.get("random_weights")),
        seed=seed if random_weights else note.get("seed"),
        config_overrides=dict(config_overrides or note.get("config_overrides") or {}),
    )


def saved_provenance(folder: Path) -> dict[str, Any]:
    """The note `save_checkpoint` writes beside the weights ({} when there is none or it is unreadable)."""
    path = Path(folder) / SOURCE_NOTE
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def save_checkpoint(checkpoint: Checkpoint, out_dir: str | Path) -> Path:
    """Write the PyTorch checkpoint (safetensors) with its tokenizer and Sentence-Transformers files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for writing one shard tells the user nothing
    try:
        checkpoint.model.save_pretrained(out, safe_serialization=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    copy_model_files(checkpoint.folder, out)
    (out / SOURCE_NOTE).write_text(
        json.dumps(
            {
                "model_id": checkpoint.model_id,
                "revision": checkpoint.revision,
                "random_weights": checkpoint.random_weights,
                "seed": checkpoint.seed,
                "config_overrides": dict(checkpoint.config_overrides),
            },
            indent=2,
        )
        + "\n"
    )
    return out
