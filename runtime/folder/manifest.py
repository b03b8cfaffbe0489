"""The model folder's one JSON file (`gte-onnx.json`) and its frozen dataclass.

A model folder is self-describing: tokenizer files, ONNX files and this manifest. Everything the runtime
needs to know about the model (task, pooling, normalisation default, max length, the variants and how
faithful each is) is read from here, never from code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from gte_onnx.errors import ModelFolderError, VariantError
from gte_onnx.folder.jsonfields import INT32_MAX, INT64_MAX, Fields, is_int, read_json_object

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
    # sha256 and size of each data file ({file: {"sha256": ..., "bytes": ...}}), checked like `file`'s.
    # Manifests written before weights moved beside the graph lack it: their data files are only
    # checked for presence.
    data_integrity: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # How the variant was made: op types quantized, per-channel, block size, nodes kept in float...
    recipe: Mapping[str, Any] = field(default_factory=dict)
    # Figures measured against fp32 (or PyTorch for fp32) when the variant was made, and the gate verdict.
    fidelity: Mapping[str, Any] = field(default_factory=dict)
    # Execution providers this variant is meant for, best first (fp16 -> CUDA; int8 -> CPU).
    providers: tuple[str, ...] = ()
    # CPU kernel family -> the gate measured there (`gte-onnx verify --record`, e.g. under emulation), beside
    # fidelity's own record of the family the variant was built on (fidelity["kernel_family"]).
    verified_on: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """The graph file and its data files, as far as the manifest records their sizes."""
        return self.bytes + sum(int(entry["bytes"]) for entry in self.data_integrity.values())

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
        out["data_integrity"] = {name: dict(entry) for name, entry in self.data_integrity.items()}
        out["providers"] = list(self.providers)
        out["verified_on"] = {family: dict(record) for family, record in self.verified_on.items()}
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
    def from_json(cls, data: Mapping[str, Any], where: str = "manifest") -> "Manifest":
        """Build the manifest from its parsed JSON, checking every field's type: a wrong or missing field is a
        ModelFolderError naming `where` (the file), the variant and the field, never a bare KeyError."""
        top = Fields(data, where)
        version = top.integer("format_version")
        if version > FORMAT_VERSION:
            raise ModelFolderError(
                f"{where}: format_version {version} is newer than this gte-onnx understands "
                f"({FORMAT_VERSION}); upgrade gte-onnx"
            )
        variants_json = top.mapping("variants")
        if not variants_json:
            raise ModelFolderError(f"{where}: the manifest lists no variants")
        variants = {name: _variant_from_json(name, value, where) for name, value in variants_json.items()}
        tokenizer = top.mapping("tokenizer", {})
        pad = tokenizer.get("pad_token_id")
        if pad is not None and (not is_int(pad) or not 0 <= pad <= INT32_MAX):
            raise ModelFolderError(f"{where}: tokenizer.pad_token_id must be a non-negative integer, got {pad!r}")
        return cls(
            format_version=version,
            task=top.choice("task", TASKS),
            source=top.mapping("source", {}),
            pooling=top.choice("pooling", POOLINGS),
            normalize=top.boolean("normalize"),
            max_length=top.integer("max_length", minimum=1),
            dim=top.integer("dim", minimum=1),
            inputs=top.strings("inputs"),
            output=top.string("output"),
            opset=top.integer("opset", minimum=1),
            tokenizer=tokenizer,
            variants=variants,
            tools=top.mapping("tools", {}),
            validation=top.mapping("validation", {}),
            speed_ranking=_speed_ranking(top.mapping("speed_ranking", {}), where),
            extra=top.mapping("extra", {}),
        )

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
        return cls.from_json(read_json_object(path, "manifest"), where=str(path))

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


# ---- manifest JSON checks ---------------------------------------------------------------------------
SESSION_OPTIMIZATIONS = ("all", "extended", "basic", "none")


def _variant_from_json(name: str, data: Any, where: str) -> Variant:
    """One entry of "variants", every field checked; errors say which variant and which field."""
    fields = Fields(data, where, f"variant {name!r}")
    recipe = fields.mapping("recipe", {})
    level = recipe.get("session_optimization", "all")
    if level not in SESSION_OPTIMIZATIONS:
        raise ModelFolderError(
            f"{where}: variant {name!r} recipe.session_optimization must be one of "
            f"{', '.join(SESSION_OPTIMIZATIONS)}, got {level!r}"
        )
    multiple = recipe.get("pad_to_multiple", 1)
    if not is_int(multiple) or not 1 <= multiple <= 64:
        raise ModelFolderError(f"{where}: variant {name!r} recipe.pad_to_multiple must be an integer from 1 to 64, "
                               f"got {multiple!r}")
    data_files = fields.file_names("data_files", ())
    return Variant(
        name=name,
        file=fields.file_name("file"),
        sha256=fields.string("sha256"),
        bytes=fields.integer("bytes", maximum=INT64_MAX),
        data_files=data_files,
        data_integrity=_data_integrity(fields.mapping("data_integrity", {}), data_files, name, where),
        recipe=recipe,
        fidelity=fields.mapping("fidelity", {}),
        providers=fields.strings("providers", (), allow_empty=True),
        verified_on=_verified_on(fields.mapping("verified_on", {}), name, where),
    )


def _verified_on(data: Mapping[str, Any], name: str, where: str) -> dict[str, dict]:
    """{family: record}; each record a JSON object with a boolean "passed"."""
    out = {}
    for family, record in data.items():
        if not isinstance(record, Mapping) or not isinstance(record.get("passed"), bool):
            raise ModelFolderError(f"{where}: variant {name!r} verified_on[{family!r}] must be an object with "
                                   f"a boolean 'passed', got {record!r}")
        out[family] = dict(record)
    return out


def _data_integrity(data: Mapping[str, Any], data_files: tuple[str, ...], name: str, where: str) -> dict[str, dict]:
    """{data file: {"sha256", "bytes"}}, each entry naming one of the variant's data files."""
    out = {}
    for file, entry in data.items():
        if file not in data_files:
            raise ModelFolderError(f"{where}: variant {name!r} data_integrity names {file!r}, which is not "
                                   f"one of its data_files {list(data_files)}")
        fields = Fields(entry, where, f"variant {name!r} data_integrity[{file!r}]")
        digest = fields.string("sha256")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ModelFolderError(f"{where}: variant {name!r} data_integrity[{file!r}].sha256 must be 64 "
                                   f"lowercase hex digits, got {digest!r}")
        out[file] = {"sha256": digest, "bytes": fields.integer("bytes", maximum=INT64_MAX)}
    return out


def _speed_ranking(data: Mapping[str, Any], where: str) -> dict[str, tuple[str, ...]]:
    """provider -> variant names, fastest first."""
    fields = Fields(data, where, "speed_ranking")
    return {provider: fields.strings(provider, allow_empty=True) for provider in data}
