"""The forms a model source can take and the files that tell them apart: a transformers checkpoint of a
supported architecture (config.json, safetensors, tokenizer and Sentence-Transformers files), or ONNX files
in the transformers.js (onnx/model*.onnx) or optimum (model*.onnx) layout.

The runtime reads these tables to choose what to download for a hub id (gte_onnx.sources.resolve); the
converter and the importer read the same ones to build the folder (gte_onnx.convert).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gte_onnx.defaults import CPU, CUDA
from gte_onnx.errors import UnsupportedModelError, VariantError

CONFIG = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SENTENCE_TRANSFORMERS_FILES = (
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)
# Written beside a checkpoint by `gte-onnx export --save-checkpoint`: where its weights came from.
SOURCE_NOTE = "gte-onnx-source.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

# model_type -> architecture family; architectures (config "architectures") each family converts
MODEL_TYPES = {"modernbert": "modernbert", "bert": "bert"}
ARCHITECTURES = {
    "modernbert": ("ModernBertModel", "ModernBertForSequenceClassification"),
    "bert": ("BertModel", "BertForSequenceClassification"),
}


def _config_value(config: Any, key: str, default: Any = None) -> Any:
    value = config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)
    return default if value is None else value


def supported_architecture(config: dict) -> str | None:
    """"modernbert" or "bert" when the converter can build this config.json's model, else None."""
    family = MODEL_TYPES.get(str(_config_value(config, "model_type", "")))
    if family is None:
        return None
    archs = _config_value(config, "architectures", []) or []
    if archs and not any(a in ARCHITECTURES[family] for a in archs):
        return None
    return family


def metadata_files(files: list[str]) -> list[str]:
    """config.json, the tokenizer and the Sentence-Transformers files that the source has."""
    wanted = (CONFIG, *TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES, SOURCE_NOTE)
    return [name for name in wanted if name in files]


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
