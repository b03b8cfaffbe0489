"""The model folder around a validated fp32 graph: tokenizer files copied, the fp32 variant described and
the manifest written last (a folder with a manifest is always a validated one). Shared by `gte-onnx export`
and the torch-free converter, which differ only in the graph's reference (PyTorch or numpy)."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from gte_onnx.folder.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, Variant
from gte_onnx.folder.integrity import describe_data_files, describe_file

from .checkpoint_meta import CheckpointError, copy_model_files, special_ids, tokenizer_files

MODEL_FILE = "model.onnx"
TOOL_DISTRIBUTIONS = ("gte-onnx", "torch", "transformers", "onnx", "onnxruntime", "tokenizers")


def tool_versions(distributions: Sequence[str] = TOOL_DISTRIBUTIONS) -> dict[str, str]:
    versions = {}
    for dist in distributions:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class FolderFiles:
    copied: list[str]
    specials: dict[str, Any]

    def pad_id(self, config_pad: int | None) -> int:
        return self.specials["pad"] if self.specials["pad"] is not None else int(config_pad or 0)


def start_folder(source: Path, out: Path) -> FolderFiles:
    """Create `out` without a manifest, with the tokenizer and Sentence-Transformers files of `source`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    copied = copy_model_files(source, out)
    if "tokenizer.json" not in copied:
        raise CheckpointError(f"{source} has no tokenizer.json (a fast tokenizer is required)")
    return FolderFiles(copied, special_ids(out / "tokenizer.json"))


def fp32_variant(out: Path, info: Mapping[str, Any], report: Mapping[str, Any], reference: str) -> Variant:
    data_files = tuple(sorted(p.name for p in out.glob(f"{MODEL_FILE}.data")))
    described = describe_file(out, MODEL_FILE)
    return Variant(
        name="fp32",
        file=MODEL_FILE,
        sha256=described["sha256"],
        bytes=described["bytes"],
        data_files=data_files,
        data_integrity=describe_data_files(out, data_files),
        recipe={"dtype": "float32", "attention": info.get("attention", ""), **info.get("recipe", {})},
        fidelity={"reference": reference, "max_abs_diff": report["max_abs_diff"], "atol": report["atol"],
                  "passed": True},
        providers=(),
    )


@dataclass
class ManifestFacts:
    """What the manifest says about the model beside its files."""

    task: str
    source: Mapping[str, Any]
    pooling: tuple[str, bool, str]  # (pooling, normalize, where it came from)
    max_length: int
    dim: int


def write_manifest(out: Path, facts: ManifestFacts, files: FolderFiles, info: Mapping[str, Any],
                   report: Mapping[str, Any], fp32: Variant, tools: Mapping[str, str]) -> Manifest:
    pooling, normalize, pooling_source = facts.pooling
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        task=facts.task,
        source=dict(facts.source),
        pooling=pooling,
        normalize=normalize,
        max_length=facts.max_length,
        dim=facts.dim,
        inputs=tuple(info["inputs"]),
        output=info["output"],
        opset=int(info["opset"]),
        tokenizer={
            "files": tokenizer_files(files.copied),
            "pad_token_id": files.specials["pad"],
            "cls_token_id": files.specials["cls"],
            "sep_token_id": files.specials["sep"],
        },
        variants={"fp32": fp32},
        tools=dict(tools),
        validation=dict(report),
        extra={"pooling_source": pooling_source},
    )
    manifest.save(out)
    return manifest
