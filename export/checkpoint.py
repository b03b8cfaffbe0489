"""Load a PyTorch checkpoint (hub id or local folder), or build one with seeded random weights.

Safetensors only unless the caller allows pickle; never remote code. The real config and tokenizer
files of the two gte models ship in model_files/, so `--random-weights` needs no network for them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from gte_onnx.errors import ModelFolderError, missing_dependency

SHIPPED_MODEL_FILES = Path(__file__).parent / "model_files"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SENTENCE_TRANSFORMERS_FILES = (
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)
# A tokenizer_config model_max_length above this is the "no limit" sentinel (1e30), not a real length.
SANE_MAX_LENGTH = 1_000_000


class CheckpointError(ModelFolderError):
    """The checkpoint cannot be loaded safely (pickle weights, missing files, unknown architecture)."""


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


def infer_task(config) -> str:
    archs = getattr(config, "architectures", None) or []
    return "rerank" if any("ForSequenceClassification" in a for a in archs) else "embedding"


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
    return Checkpoint(
        model=hf_model,
        folder=folder,
        model_id=model_id,
        revision=revision,
        task=task,
        random_weights=random_weights,
        seed=seed if random_weights else None,
        config_overrides=dict(config_overrides or {}),
    )


def copy_model_files(source: Path, out_dir: Path, names=TOKENIZER_FILES + SENTENCE_TRANSFORMERS_FILES) -> list[str]:
    copied = []
    for name in names:
        src = source / name
        if src.is_file():
            dst = out_dir / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            copied.append(name)
    return copied


def save_checkpoint(checkpoint: Checkpoint, out_dir: str | Path) -> Path:
    """Write the PyTorch checkpoint (safetensors) with its tokenizer and Sentence-Transformers files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.model.save_pretrained(out, safe_serialization=True)
    copy_model_files(checkpoint.folder, out)
    (out / "gte-onnx-source.json").write_text(
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


# ---- Sentence-Transformers metadata -----------------------------------------------------------------
def read_pooling(folder: Path, task: str, config) -> tuple[str, bool, str]:
    """(pooling, normalize default, where it came from), from the Sentence-Transformers files if present."""
    if task == "rerank":
        return "none", False, "rerank models pool inside the graph"
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        pooling = None
        has_normalize = False
        for module in modules:
            kind = module.get("type", "")
            if kind.endswith("Pooling"):
                cfg = json.loads((folder / module["path"] / "config.json").read_text(encoding="utf-8"))
                if cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif cfg.get("pooling_mode_mean_tokens"):
                    pooling = "mean"
                else:
                    modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
                    raise CheckpointError(f"unsupported Sentence-Transformers pooling {modes} in {folder}")
            elif kind.endswith("Normalize"):
                has_normalize = True
        if pooling is not None:
            # Cosine is the similarity every gte and MiniLM example uses, so vectors are unit length by
            # default (as in TEI and fastembed); encode(normalize=False) gives the raw pooled vectors.
            return pooling, True, "modules.json" + (" (with Normalize)" if has_normalize else "")
    return "mean", True, "default (no Sentence-Transformers files)"


def read_max_length(folder: Path, config) -> int:
    """The longest input the runtime accepts: Sentence-Transformers' max_seq_length, else the tokenizer's
    model_max_length when it is a real number (gte's is 1e30), capped by the position table."""
    limit = int(getattr(config, "max_position_embeddings", 512))
    if getattr(config, "model_type", "") in ("bert", "roberta", "xlm-roberta") and limit > 512:
        limit = 512
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        value = json.loads(st.read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(value, int) and 0 < value:
            return min(value, limit)
    tok = folder / "tokenizer_config.json"
    if tok.is_file():
        value = json.loads(tok.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(value, (int, float)) and 0 < value < SANE_MAX_LENGTH:
            return min(int(value), limit)
    return limit
