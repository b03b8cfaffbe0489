"""The contenders of a run: ONNX variants per provider, the PyTorch baselines, the peers, and a twin.

A twin (--twins) is a second, identical worker of one contender: its median over the original's, per
shape, shows how much the schedule itself moves the figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, VariantError
from gte_onnx.folder.manifest import Manifest, Variant
from .config import TORCH_PROVIDER, BenchConfig


@dataclass
class Contender:
    """One thing that is timed: an ONNX variant on one provider, or a PyTorch baseline."""

    key: str
    name: str
    kind: str  # "onnx" | "torch"
    provider: str
    spec: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    corpus_load: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    twin_of: str | None = None  # the key of the contender this one duplicates (--twins)
    measured_fidelity: dict[str, Any] | None = None  # --fidelity: figures against PyTorch fp32

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "twin_of": self.twin_of,
            "kind": self.kind,
            "provider": self.provider,
            **self.meta,
            # import_s: importing the engine (onnxruntime, or torch + transformers) in a fresh process;
            # load_s: building the session / model from the folder, what Embedder(...) costs after that.
            "import_s": self.load.get("import_s"),
            "load_s": self.load.get("load_s"),
            "rss_after_load_bytes": self.load.get("rss_bytes"),
            "info": self.load.get("info", {}),
            # The corpus phase's fresh process: Embedder(...) (tokenizer + session) or the PyTorch model.
            "corpus_load_s": self.corpus_load.get("load_s"),
            "measured_fidelity": self.measured_fidelity,
            "error": self.error,
        }


def folder_bytes(folder: Path) -> int | None:
    if not folder.is_dir():
        return None
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _variant_meta(folder: Path, variant: Variant) -> dict[str, Any]:
    size = variant.bytes
    for data_file in variant.data_files:
        path = folder / data_file
        size += path.stat().st_size if path.is_file() else 0
    fidelity = dict(variant.fidelity)
    return {
        "variant": variant.name,
        "file": variant.file,
        "file_bytes": size,
        "recipe": dict(variant.recipe),
        "fidelity": fidelity,
        "passed": variant.passes_gate() if (fidelity or variant.name == "fp32") else None,
    }


def plan_contenders(manifest: Manifest, config: BenchConfig, providers: Sequence[str]) -> list[Contender]:
    folder = Path(config.folder)
    contenders: list[Contender] = []
    for provider in providers:
        if config.variants:
            chosen = [manifest.variant(v) for v in config.variants]  # VariantError names what exists
        else:
            chosen = [v for v in manifest.variants.values() if not v.providers or provider in v.providers]
            if not chosen:
                raise VariantError(
                    f"no variant of {folder} is meant for {provider} (their providers: "
                    f"{ {v.name: list(v.providers) for v in manifest.variants.values()} }); name them with --variants"
                )
        for variant in chosen:
            key = variant.name if len(providers) == 1 else f"{variant.name}@{provider}"
            contenders.append(Contender(
                key=key, name=variant.name, kind="onnx", provider=provider,
                spec={"kind": "onnx", "folder": str(folder), "variant": variant.name,
                      "provider": provider, "threads": config.threads, "spinning": config.spinning},
                meta=_variant_meta(folder, variant),
            ))
    if config.torch:
        from .torch_baseline import TORCH_DTYPES, resolve_torch_spec

        spec = resolve_torch_spec(config.torch, manifest)
        for dtype in config.torch_dtypes:
            if dtype not in TORCH_DTYPES:
                raise InvalidInputError(f"torch dtype {dtype!r} is not one of {TORCH_DTYPES}")
            name = f"torch-{dtype}"
            contenders.append(Contender(
                key=name, name=name, kind="torch", provider=TORCH_PROVIDER,
                spec={"kind": "torch", "folder": str(folder), "torch": spec, "dtype": dtype,
                      "threads": config.threads, "spinning": config.spinning},
                meta={"variant": None, "file": None, "file_bytes": None, "recipe": {}, "fidelity": {},
                      "passed": None, "torch_model": spec},
            ))
    if config.peers:
        contenders.extend(plan_peers(manifest, config))
    if config.twins:
        contenders.append(twin_contender(manifest, contenders, config.twins))
    return contenders


def plan_peers(manifest: Manifest, config: BenchConfig) -> list[Contender]:
    """One contender per peer; they are built (or found in the cache) before the workers start."""
    from .peers import PEER_ENGINE, cache_folder, peer_versions
    from .torch_baseline import resolve_torch_spec

    if manifest.task != "embedding":
        raise InvalidInputError("--peers compares embedding models; this folder holds a "
                                f"{manifest.task!r} model")
    torch_spec = resolve_torch_spec(config.torch or "auto", manifest)
    # The calibration count changes what the int8 peer is: it is part of the cache key.
    cache = cache_folder(config.peers_cache, {**torch_spec, "calibration_texts": config.peers_calibration},
                         peer_versions())
    return [
        Contender(
            key=name, name=name, kind="peer", provider=PEER_ENGINE[name],
            spec={"kind": "peer", "peer": name, "engine": PEER_ENGINE[name], "cache": str(cache),
                  "folder": str(config.folder), "threads": config.threads, "spinning": config.spinning,
                  "torch": torch_spec, **_engine_spec(name, PEER_ENGINE[name], cache, manifest, config)},
            meta={"variant": None, "file": None, "file_bytes": None, "recipe": {}, "fidelity": {},
                  "passed": None, "peer_cache": str(cache)},
        )
        for name in config.peers
    ]


# The longest probe text --fidelity feeds one at a time (parity.probes.DEFAULT_LONG_TEXT, 1000 tokens).
LONGEST_PROBE = 1024
LLAMACPP_MIN_CONTEXT = 512  # llama-cpp-python's default n_ctx / n_batch


def _engine_spec(name: str, engine: str, cache: Path, manifest: Manifest, config: BenchConfig) -> dict[str, Any]:
    """What a peer's worker needs besides the common spec: a hub peer's imported folder and variant; a
    llama.cpp peer's context (its physical batch must hold the longest single input of the run)."""
    if engine == "gte-onnx":
        from .hub_peer import HUB_MODES, MODEL_DIR, VARIANT

        return {"hub_folder": str(cache / name / MODEL_DIR), "variant": VARIANT[HUB_MODES[name]]}
    if engine == "llama.cpp":
        from .shapes import DEFAULT_SHAPES, SHORT_SKIPS, parse_shapes

        shapes = config.shapes or [s for s in parse_shapes(DEFAULT_SHAPES) if not (config.short and s.label in SHORT_SKIPS)]
        longest = max([s.length for s in shapes] + [LONGEST_PROBE if config.fidelity else 0])
        return {"n_ctx": min(manifest.max_length, max(LLAMACPP_MIN_CONTEXT, longest)),
                "pooling": manifest.pooling}
    return {}


TWIN_SUFFIX = "~twin"


def twin_contender(manifest: Manifest, contenders: Sequence[Contender], which: str) -> Contender:
    """A second, identical worker of one contender: "best" picks the variant `variant="auto"` would load
    on the first provider (the fastest recorded one that passes its gate), else a contender's key."""
    from gte_onnx.inference.session import choose_variant

    onnx = [c for c in contenders if c.kind == "onnx"]
    if which == "best":
        if not onnx:
            raise InvalidInputError("--twins: no ONNX variant is measured; name a contender with --twins NAME")
        try:
            best = choose_variant(manifest, "auto", onnx[0].provider).name
        except VariantError:
            best = onnx[0].name
        original = next((c for c in onnx if c.name == best), onnx[0])
    else:
        original = next((c for c in contenders if which in (c.key, c.name)), None)
        if original is None:
            raise InvalidInputError(f"--twins {which!r}: no such contender in this run; it has "
                                    f"{[c.key for c in contenders]}")
    return Contender(key=original.key + TWIN_SUFFIX, name=original.name + TWIN_SUFFIX, kind=original.kind,
                     provider=original.provider, spec=dict(original.spec), meta=dict(original.meta),
                     twin_of=original.key)


# The twins' median ratio outside this range means the schedule still favours some positions.
TWIN_TOLERANCE = (0.95, 1.05)


def twin_report(rows: Sequence[dict[str, Any]], contenders: Sequence[Contender]) -> dict[str, Any] | None:
    """Per shape (and corpus): the twin's median over the original's; `outside` lists the cells whose
    ratio falls outside TWIN_TOLERANCE."""
    twin = next((c for c in contenders if c.twin_of), None)
    if twin is None:
        return None
    medians: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        if row["key"] in (twin.key, twin.twin_of) and row["error"] is None and row["median_s"]:
            medians.setdefault((row["mode"], row["shape"]), {})[row["key"]] = row["median_s"]
    ratios = {}
    for (mode, shape), pair in medians.items():
        if len(pair) == 2:
            ratios[shape if mode == "shape" else f"{mode}:{shape}"] = pair[twin.key] / pair[twin.twin_of]
    low, high = TWIN_TOLERANCE
    return {
        "of": twin.twin_of,
        "twin": twin.key,
        "ratio": "twin median / original median",
        "ratios": ratios,
        "tolerance": list(TWIN_TOLERANCE),
        "outside": [cell for cell, r in ratios.items() if not low <= r <= high],
    }
