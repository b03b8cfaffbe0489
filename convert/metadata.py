"""What a model folder says about itself, read from plain JSON files (no transformers, no torch).

config.json, the tokenizer files and the Sentence-Transformers files (modules.json, 1_Pooling/config.json,
sentence_bert_config.json) decide the task, the pooling, the normalisation default and the max length of
the gte-onnx manifest, whether the model came as a checkpoint or as ONNX files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from gte_onnx.errors import ModelFolderError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SENTENCE_TRANSFORMERS_FILES = (
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)
# A tokenizer_config model_max_length above this is the "no limit" sentinel (1e30), not a real length.
SANE_MAX_LENGTH = 1_000_000
# Position tables larger than 512 in these families are not trained past 512 tokens.
CAPPED_AT_512 = ("bert", "roberta", "xlm-roberta")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"cannot read {path}: {exc}") from None


def infer_task(config: Mapping[str, Any]) -> str:
    """"rerank" for a sequence-classification head (a cross-encoder), else "embedding"."""
    archs = config.get("architectures") or []
    return "rerank" if any("ForSequenceClassification" in a for a in archs) else "embedding"


def num_labels(config: Mapping[str, Any]) -> int:
    if isinstance(config.get("num_labels"), int):
        return int(config["num_labels"])
    labels = config.get("id2label")
    return len(labels) if isinstance(labels, Mapping) and labels else 1


def read_pooling(folder: Path, task: str) -> tuple[str, bool, str]:
    """(pooling, normalize default, where it came from), from the Sentence-Transformers files if present."""
    if task == "rerank":
        return "none", False, "rerank models pool inside the graph"
    folder = Path(folder)
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        pooling = None
        has_normalize = False
        for module in read_json(modules_path):
            kind = module.get("type", "")
            if kind.endswith("Pooling"):
                cfg = read_json(folder / module["path"] / "config.json")
                if cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif cfg.get("pooling_mode_mean_tokens"):
                    pooling = "mean"
                else:
                    modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
                    raise ModelFolderError(f"unsupported Sentence-Transformers pooling {modes} in {folder}")
            elif kind.endswith("Normalize"):
                has_normalize = True
        if pooling is not None:
            # Cosine is the similarity every gte and MiniLM example uses, so vectors are unit length by
            # default (as in TEI and fastembed); encode(normalize=False) gives the raw pooled vectors.
            return pooling, True, "modules.json" + (" (with Normalize)" if has_normalize else "")
    return "mean", True, "default (no Sentence-Transformers files)"


def read_max_length(folder: Path, config: Mapping[str, Any]) -> int:
    """The longest input the runtime accepts: Sentence-Transformers' max_seq_length, else the tokenizer's
    model_max_length when it is a real number (gte's is 1e30), capped by the position table."""
    folder = Path(folder)
    limit = int(config.get("max_position_embeddings", 512))
    if config.get("model_type", "") in CAPPED_AT_512 and limit > 512:
        limit = 512
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        value = read_json(st).get("max_seq_length")
        if isinstance(value, int) and 0 < value:
            return min(value, limit)
    tok = folder / "tokenizer_config.json"
    if tok.is_file():
        value = read_json(tok).get("model_max_length")
        if isinstance(value, (int, float)) and 0 < value < SANE_MAX_LENGTH:
            return min(int(value), limit)
    return limit


def special_ids(tokenizer_json: Path) -> dict[str, Any]:
    """The ids of [CLS]/<s>, [SEP]/</s>, [PAD]/<pad> and of every special token, from tokenizer.json."""
    data = read_json(tokenizer_json)
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


def tokenizer_record(folder: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's tokenizer entry: the tokenizer files present and the special token ids."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise ModelFolderError(f"{folder} has no tokenizer.json (a fast tokenizer is required)")
    specials = special_ids(folder / "tokenizer.json")
    pad = specials["pad"] if specials["pad"] is not None else int(config.get("pad_token_id") or 0)
    return {
        "files": [name for name in TOKENIZER_FILES if (folder / name).is_file()],
        "pad_token_id": pad,
        "cls_token_id": specials["cls"],
        "sep_token_id": specials["sep"],
    }
