"""The model folder's one JSON file (`gte-onnx.json`) and its frozen dataclass.

A model folder is self-describing: tokenizer files, ONNX files and this manifest. Everything the runtime
needs to know about the model (task, pooling, normalisation default, max length, the variants and how
faithful each is) is read from here, never from code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import IntegrityError, ModelFolderError, VariantError

MANIFEST_NAME = "gte-onnx.json"
FORMAT_VERSION = 1
TASKS = ("embedding", "rerank")
POOLINGS = ("cls", "mean", "none")


@dataclass(frozen=True)
class Variant:
    """One ONNX file of the folder: fp32, fp16, int8, q4, ..."""

    name: str
    file: str
    sha256: str
    bytes: int
    # Files the ONNX file reads its weights from (external data), relative to the folder.
    data_files: tuple[str, ...] = ()
    # How the variant was made: op types quantized, per-channel, block size, nodes kept in float...
    recipe: Mapping[str, Any] = field(default_factory=dict)
    # Figures measured against fp32 (or PyTorch for fp32) when the variant was made, and the gate verdict.
    fidelity: Mapping[str, Any] = field(default_factory=dict)
    # Execution providers this variant is meant for, best first (fp16 -> CUDA; int8 -> CPU).
    providers: tuple[str, ...] = ()

    def passes_gate(self) -> bool:
        """True unless the recorded fidelity says the variant failed its gate.

        fp32 carries the export validation; a variant with no recorded fidelity has not been measured
        and is not trusted by `variant="auto"`.
        """
        if self.name == "fp32":
            return self.fidelity.get("passed", True) is not False
        return self.fidelity.get("passed") is True

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("name")
        out["data_files"] = list(self.data_files)
        out["providers"] = list(self.providers)
        return out


@dataclass(frozen=True)
class Manifest:
    format_version: int
    task: str  # "embedding" | "rerank"
    source: Mapping[str, Any]  # model_id, revision, random_weights, seed, architecture
    pooling: str  # "cls" | "mean" | "none" (rerank models pool inside the graph)
    normalize: bool  # default for encode(normalize=None)
    max_length: int
    dim: int  # embedding width, or number of labels for rerank
    inputs: tuple[str, ...]  # graph inputs, in the graph's order
    output: str  # the graph output the runtime reads
    opset: int
    tokenizer: Mapping[str, Any]  # files, pad_token_id, pair template notes
    variants: Mapping[str, Variant]
    tools: Mapping[str, str] = field(default_factory=dict)
    validation: Mapping[str, Any] = field(default_factory=dict)
    # Per execution provider, variant names fastest first, as measured by `gte-onnx bench`.
    speed_ranking: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    # ---- (de)serialisation -------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Manifest":
        try:
            version = int(data["format_version"])
            if version > FORMAT_VERSION:
                raise ModelFolderError(
                    f"manifest format_version {version} is newer than this gte-onnx understands "
                    f"({FORMAT_VERSION}); upgrade gte-onnx"
                )
            task = data["task"]
            if task not in TASKS:
                raise ModelFolderError(f"manifest task {task!r} is not one of {TASKS}")
            pooling = data["pooling"]
            if pooling not in POOLINGS:
                raise ModelFolderError(f"manifest pooling {pooling!r} is not one of {POOLINGS}")
            variants = {
                name: Variant(
                    name=name,
                    file=v["file"],
                    sha256=v["sha256"],
                    bytes=int(v["bytes"]),
                    data_files=tuple(v.get("data_files", ())),
                    recipe=v.get("recipe", {}),
                    fidelity=v.get("fidelity", {}),
                    providers=tuple(v.get("providers", ())),
                )
                for name, v in data["variants"].items()
            }
            if not variants:
                raise ModelFolderError("manifest lists no variants")
            return cls(
                format_version=version,
                task=task,
                source=data.get("source", {}),
                pooling=pooling,
                normalize=bool(data["normalize"]),
                max_length=int(data["max_length"]),
                dim=int(data["dim"]),
                inputs=tuple(data["inputs"]),
                output=data["output"],
                opset=int(data["opset"]),
                tokenizer=data.get("tokenizer", {}),
                variants=variants,
                tools=data.get("tools", {}),
                validation=data.get("validation", {}),
                speed_ranking={k: tuple(v) for k, v in data.get("speed_ranking", {}).items()},
                extra=data.get("extra", {}),
            )
        except KeyError as exc:
            raise ModelFolderError(f"manifest is missing the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ModelFolderError):
                raise
            raise ModelFolderError(f"manifest is malformed: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "task": self.task,
            "source": dict(self.source),
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "dim": self.dim,
            "inputs": list(self.inputs),
            "output": self.output,
            "opset": self.opset,
            "tokenizer": dict(self.tokenizer),
            "variants": {name: v.to_json() for name, v in self.variants.items()},
            "tools": dict(self.tools),
            "validation": dict(self.validation),
            "speed_ranking": {k: list(v) for k, v in self.speed_ranking.items()},
            "extra": dict(self.extra),
        }

    def with_variant(self, variant: Variant) -> "Manifest":
        variants = dict(self.variants)
        variants[variant.name] = variant
        return dataclasses.replace(self, variants=variants)

    def replace(self, **changes: Any) -> "Manifest":
        return dataclasses.replace(self, **changes)

    # ---- folder I/O --------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Manifest":
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(f"{folder} is not a directory (expected a gte-onnx model folder)")
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise ModelFolderError(
                f"{folder} is not a gte-onnx model folder: it has no {MANIFEST_NAME}. "
                "Make one with: gte-onnx export MODEL OUT_DIR"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFolderError(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ModelFolderError(f"{path} does not hold a JSON object")
        return cls.from_json(data)

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def variant(self, name: str) -> Variant:
        try:
            return self.variants[name]
        except KeyError:
            raise VariantError(
                f"variant {name!r} is not in this model folder; it has {sorted(self.variants)}"
            ) from None


# ---- file integrity ---------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_file(folder: str | os.PathLike, relative: str) -> dict[str, Any]:
    """sha256 and size of one file of the folder, as the manifest records them."""
    path = Path(folder) / relative
    return {"file": relative, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def resolve_inside(folder: str | os.PathLike, relative: str) -> Path:
    """The path of a file named by the manifest or by ONNX external data, refusing any that escapes."""
    root = Path(folder).resolve()
    target = (root / relative).resolve()
    if os.path.isabs(relative) or not target.is_relative_to(root):
        raise IntegrityError(
            f"{relative!r} points outside the model folder {root}; refusing to read it"
        )
    return target


def verify_variant(folder: str | os.PathLike, variant: Variant) -> Path:
    """Check the variant's file against the manifest (size, then sha256) and return its path. The digest
    of a file whose stat has not changed since it was last hashed comes from the verified-file cache."""
    from .verified import file_digest

    path = resolve_inside(folder, variant.file)
    if not path.is_file():
        raise ModelFolderError(f"variant {variant.name!r}: file {variant.file} is missing from {folder}")
    size = path.stat().st_size
    if size != variant.bytes:
        raise IntegrityError(
            f"variant {variant.name!r}: {variant.file} has {size} bytes but the manifest says {variant.bytes}"
        )
    digest = file_digest(path, sha256_file)
    if digest != variant.sha256:
        raise IntegrityError(
            f"variant {variant.name!r}: sha256 of {variant.file} is {digest}, the manifest says "
            f"{variant.sha256}; the file was changed or corrupted"
        )
    for data_file in variant.data_files:
        if not resolve_inside(folder, data_file).is_file():
            raise ModelFolderError(f"variant {variant.name!r}: external data {data_file} is missing")
    return path
