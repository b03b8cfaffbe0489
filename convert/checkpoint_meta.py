"""What a checkpoint folder says about the model beside its weights: task, pooling, max length, tokenizer
and Sentence-Transformers files, special token ids. Shared by `gte-onnx export` (torch) and the torch-free
converter, so both make the same manifest from the same folder.

`config` is either config.json as a dict or a transformers config object: both are read with `config_value`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from gte_onnx.errors import ModelFolderError
from gte_onnx.folder.forms import SENTENCE_TRANSFORMERS_FILES, TOKENIZER_FILES  # noqa: F401 (re-exported)

# A tokenizer_config model_max_length above this is the "no limit" sentinel (1e30), not a real length.
SANE_MAX_LENGTH = 1_000_000
TASKS = ("embedding", "rerank")


class CheckpointError(ModelFolderError):
    """The checkpoint cannot be loaded safely (pickle weights, missing files, unknown architecture)."""


def config_value(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        value = config.get(key, default)
    else:
        value = getattr(config, key, default)
    return default if value is None else value


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json: not a transformers checkpoint folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return config


def infer_task(config: Any) -> str:
    archs = config_value(config, "architectures", []) or []
    return "rerank" if any("ForSequenceClassification" in a for a in archs) else "embedding"


def check_task(task: str) -> str:
    if task not in TASKS:
        raise CheckpointError(f"task must be 'embedding' or 'rerank', got {task!r}")
    return task


def copy_model_files(source: Path, out_dir: Path, names=TOKENIZER_FILES + SENTENCE_TRANSFORMERS_FILES) -> list[str]:
    copied = []
    for name in names:
        src = Path(source) / name
        if src.is_file():
            dst = Path(out_dir) / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            copied.append(name)
    return copied


def tokenizer_files(copied: list[str]) -> list[str]:
    """The copied files the runtime's tokenizer reads (not the Sentence-Transformers module files)."""
    return [f for f in copied if not f.startswith(("modules", "1_Pooling", "config_sentence", "sentence_bert"))]


def special_ids(tokenizer_json: Path) -> dict[str, Any]:
    data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
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


def _pooling_module(folder: Path, module: dict) -> str:
    cfg = json.loads((folder / module["path"] / "config.json").read_text(encoding="utf-8"))
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
    raise CheckpointError(f"unsupported Sentence-Transformers pooling {modes} in {folder}")


def read_pooling(folder: Path, task: str, config: Any = None) -> tuple[str, bool, str]:
    """(pooling, normalize default, where it came from), from the Sentence-Transformers files if present."""
    if task == "rerank":
        return "none", False, "rerank models pool inside the graph"
    folder = Path(folder)
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        pooling = None
        has_normalize = False
        for module in modules:
            kind = module.get("type", "")
            if kind.endswith("Pooling"):
                pooling = _pooling_module(folder, module)
            elif kind.endswith("Normalize"):
                has_normalize = True
        if pooling is not None:
            # Cosine is the similarity every gte and MiniLM example uses, so vectors are unit length by
            # default (as in TEI and fastembed); encode(normalize=False) gives the raw pooled vectors.
            return pooling, True, "modules.json" + (" (with Normalize)" if has_normalize else "")
    return "mean", True, "default (no Sentence-Transformers files)"


def read_max_length(folder: Path, config: Any) -> int:
    """The longest input the runtime accepts: Sentence-Transformers' max_seq_length, else the tokenizer's
    model_max_length when it is a real number (gte's is 1e30), capped by the position table."""
    folder = Path(folder)
    limit = int(config_value(config, "max_position_embeddings", 512))
    if config_value(config, "model_type", "") in ("bert", "roberta", "xlm-roberta") and limit > 512:
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
