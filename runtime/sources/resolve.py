"""From a hub id or a folder to a local gte-onnx model folder, downloading only what the chosen path needs.

In this order:
1. a gte-onnx model folder (it has gte-onnx.json): the manifest first, then the tokenizer files and the
   chosen variant's files;
2. a transformers checkpoint with safetensors weights of a supported architecture: config, tokenizer and
   Sentence-Transformers files, then the weights, converted without torch into gte-onnx's cache;
3. ONNX files in the transformers.js (onnx/model*.onnx) or optimum (model*.onnx) layout: imported into the
   cache with a manifest synthesized from config.json and the Sentence-Transformers files;
4. anything else: an UnsupportedModelError that says what was found.

`source="convert"` or `"onnx"` insists on form 2 or 3; `"auto"` prefers conversion where it is possible,
because the converted graph is the windowed-attention one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from gte_onnx.sources.cache import build_atomically, hub_entry, is_complete, local_entry
from gte_onnx.defaults import cache_root
from gte_onnx.errors import InvalidInputError, ModelFolderError, UnsupportedModelError, VariantError
from gte_onnx.sources.hub import LocalFolder, open_source
from gte_onnx.folder.forms import (CONFIG, SAFETENSORS, SAFETENSORS_INDEX, TOKENIZER_FILES, metadata_files,
                                   onnx_variant_files, supported_architecture)
from gte_onnx.folder.manifest import MANIFEST_NAME, Manifest
from gte_onnx.inference.session import choose_variant, resolve_providers

SOURCES = ("auto", "convert", "onnx")
# The module that builds a folder from a checkpoint or ONNX files (convert, quantize, rank).
PIPELINE = "gte_onnx.pipeline"
ALL_VARIANTS = "all"
# The variants a conversion makes when none is asked for by name: int8 is the CPU default.
DEFAULT_CONVERTED = ("int8",)
ALL_CONVERTED = ("fp16", "int8", "q4")
CONVERTIBLE = ("fp32", "fp16", "int8", "q4", "q4f16")
FORMS = (
    "a gte-onnx model folder (with gte-onnx.json), a transformers checkpoint with safetensors weights of a "
    "supported architecture (ModernBERT, BERT family), or ONNX files in the transformers.js (onnx/model.onnx) "
    "or optimum (model.onnx) layout"
)


@dataclass
class Contents:
    """What a listed source holds, as far as choosing a path needs."""

    config: dict[str, Any] | None = None
    architecture: str | None = None  # supported architecture of config.json, else None
    weights: list[str] = field(default_factory=list)  # safetensors files (the index's shards)
    onnx: dict[str, str] = field(default_factory=dict)  # variant name -> ONNX file
    other_weights: list[str] = field(default_factory=list)  # pickle / other formats we do not read


def resolve_model(
    model: str | os.PathLike,
    *,
    variant: str | None = "auto",
    providers: Sequence[str] | str | None = None,
    revision: str | None = None,
    source: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The local gte-onnx model folder for `model` (see the module docstring for the order).

    `variant` says which ONNX files are needed: a name, "auto" (the one `variant="auto"` will choose on
    `providers`), "all", or None (the manifest and tokenizer only).
    """
    if source not in SOURCES:
        raise InvalidInputError(f"source must be one of {SOURCES}, got {source!r}")
    log = log or (lambda _msg: None)
    local = Path(model).expanduser()
    if (local / MANIFEST_NAME).is_file():
        return local  # a gte-onnx folder on disk: used in place, nothing listed
    repo = open_source(model, revision, local_files_only)
    files = repo.files
    if MANIFEST_NAME in files:
        return _gte_onnx_folder(repo, variant, providers)
    contents = inspect_contents(repo, files)
    root = cache_root(cache_dir)
    if source in ("auto", "convert") and contents.architecture and contents.weights:
        return _converted(repo, contents, variant, root, log)
    if source in ("auto", "onnx") and contents.onnx:
        return _imported(repo, contents, variant, providers, root, log)
    raise UnsupportedModelError(_not_supported_message(repo.name, source, files, contents))


# ---- 1. a gte-onnx model folder ---------------------------------------------------------------------
def _gte_onnx_folder(repo, variant: str | None, providers) -> Path:
    if isinstance(repo, LocalFolder):
        return repo.root  # everything is there; the session verifies the chosen variant's files
    manifest = Manifest.load(repo.fetch([MANIFEST_NAME], "manifest"))
    tokenizer = list(manifest.tokenizer.get("files") or [n for n in TOKENIZER_FILES if n in repo.files])
    graphs: list[str] = []
    for chosen in _manifest_variants(manifest, variant, providers):
        graphs += [chosen.file, *chosen.data_files]
    return repo.fetch(tokenizer + graphs, repo.name)


def _manifest_variants(manifest: Manifest, variant: str | None, providers) -> list:
    if variant is None:
        return []
    if variant == ALL_VARIANTS:
        return list(manifest.variants.values())
    if variant == "auto":
        return [choose_variant(manifest, "auto", resolve_providers(providers)[0])]
    return [manifest.variant(variant)]


# ---- what a source holds ----------------------------------------------------------------------------
def inspect_contents(repo, files: list[str]) -> Contents:
    """Read config.json (and the safetensors index) and sort the files into weights and ONNX graphs."""
    contents = Contents(onnx=onnx_variant_files(files))
    contents.other_weights = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt"))]
    if CONFIG not in files:
        return contents
    contents.config = _read_json(repo.fetch([CONFIG], "config") / CONFIG)
    if SAFETENSORS in files:
        contents.weights = [SAFETENSORS]
    elif SAFETENSORS_INDEX in files:
        index = _read_json(repo.fetch([SAFETENSORS_INDEX], "weights index") / SAFETENSORS_INDEX)
        contents.weights = sorted(set((index.get("weight_map") or {}).values()))
        missing = [w for w in contents.weights if w not in files]
        if missing or not contents.weights:
            raise UnsupportedModelError(
                f"{repo.name}: {SAFETENSORS_INDEX} names shards that are not there: {missing or 'none at all'}"
            )
    if contents.weights:
        contents.architecture = supported_architecture(contents.config)
    return contents


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} does not hold a JSON object")
    return data


def _entry(repo, root: Path, kind: str, fingerprinted: list[str]) -> Path:
    if isinstance(repo, LocalFolder):
        return local_entry(root, repo.root, fingerprinted, kind)
    return hub_entry(root, repo.repo_id, kind, repo.revision)


def cached_variants(folder: Path) -> list[str] | None:
    """The variants of a cached folder; None when it is absent or its manifest unreadable (rebuild it)."""
    if not is_complete(folder):
        return None
    try:
        return list(Manifest.load(folder).variants)
    except ModelFolderError:
        return None


# ---- 2. a checkpoint, converted -------------------------------------------------------------------------
def conversion_variants(variant: str | None) -> tuple[str, ...]:
    """The variants to make beside fp32: the CPU default, plus the one asked for by name."""
    if variant == ALL_VARIANTS:
        return ALL_CONVERTED
    if variant in (None, "auto", "fp32"):
        return DEFAULT_CONVERTED
    if variant not in CONVERTIBLE:
        raise VariantError(
            f"variant {variant!r} is not one a conversion makes ({', '.join(CONVERTIBLE)}); "
            "for a repo's own ONNX files by that name, pass source='onnx'"
        )
    return tuple(dict.fromkeys(DEFAULT_CONVERTED + (variant,)))


def _converted(repo, contents: Contents, variant: str | None, root: Path, log) -> Path:
    wanted = conversion_variants(variant)
    needed = metadata_files(repo.files) + contents.weights
    target = _entry(repo, root, "converted", needed)
    present = cached_variants(target)
    if present is not None and all(n in present for n in ("fp32",) + wanted):
        return target  # the cached conversion: no download, no rebuild
    rebuild = target.exists()
    if present:  # a rebuild for one more variant keeps the ones made before
        wanted = tuple(dict.fromkeys(tuple(n for n in present if n != "fp32") + wanted))
    folder = repo.fetch(needed, repo.name)

    def build(tmp: Path) -> None:
        convert_checkpoint = _pipeline().convert_checkpoint
        log(f"converting {repo.name} ({contents.architecture}) to ONNX without torch; variants fp32, {', '.join(wanted)}")
        tmp.mkdir(parents=True, exist_ok=True)
        convert_checkpoint(folder, tmp, variants=wanted, model_id=_model_id(repo), revision=repo.revision, log=log)

    return build_atomically(target, build, replace=rebuild)


def _pipeline():
    """The build stages, reached by name as the CLI reaches its verbs: the runtime sits below the stages
    that convert and quantize (docs/architecture.md), and only a first load that must build needs them."""
    import importlib

    return importlib.import_module(PIPELINE)


def _model_id(repo) -> str:
    return repo.repo_id or str(Path(repo.root).resolve())


# ---- 3. ONNX files, imported ------------------------------------------------------------------------------
def _imported(repo, contents: Contents, variant: str | None, providers, root: Path, log) -> Path:
    from gte_onnx.folder.forms import variants_to_import

    pipeline = _pipeline()
    fetch_onnx_files, import_onnx = pipeline.fetch_onnx_files, pipeline.import_onnx
    provider = resolve_providers(providers)[0] if variant == "auto" else None
    wanted = variants_to_import(contents.onnx, variant, provider, repo.name)
    meta = metadata_files(repo.files)
    graphs = [contents.onnx[name] for name in wanted]
    target = _entry(repo, root, "imported", meta + list(contents.onnx.values()))
    present = cached_variants(target)
    if present is not None and all(n in present for n in wanted):
        return target
    rebuild = target.exists()
    if present:
        wanted = list(dict.fromkeys([n for n in present if n in contents.onnx] + list(wanted)))
        graphs = [contents.onnx[name] for name in wanted]
    folder = fetch_onnx_files(repo, meta, graphs)

    def build(tmp: Path) -> None:
        log(f"importing the ONNX files of {repo.name}: {', '.join(wanted)}")
        import_onnx(folder, tmp, variants=wanted, model_id=_model_id(repo), revision=repo.revision, log=log)

    return build_atomically(target, build, replace=rebuild)


# ---- 4. nothing we can use --------------------------------------------------------------------------------
def _not_supported_message(name: str, source: str, files: list[str], contents: Contents) -> str:
    found = []
    if contents.config is not None:
        archs = contents.config.get("architectures") or [contents.config.get("model_type", "unknown")]
        found.append(f"config.json for {', '.join(map(str, archs))}")
    else:
        found.append("no config.json")
    if contents.weights:
        found.append(f"safetensors weights ({', '.join(contents.weights)})")
    if contents.other_weights:
        found.append(f"weights gte-onnx does not read ({', '.join(contents.other_weights[:3])})")
    if contents.onnx:
        found.append(f"ONNX files ({', '.join(contents.onnx.values())})")
    if not contents.weights and not contents.onnx:
        found.append("neither safetensors weights nor ONNX files")
    if contents.weights and not contents.architecture:
        found.append("an architecture the converter does not support")
    wanted = {"convert": "a convertible checkpoint", "onnx": "ONNX files"}.get(source)
    head = f"{name} cannot be used" + (f" with source={source!r} (it needs {wanted})" if wanted else "")
    listed = ", ".join(files[:12]) + (" ..." if len(files) > 12 else "")
    return f"{head}: found {'; '.join(found)} [files: {listed or 'none'}]. gte-onnx runs {FORMS}."
