"""The benchmark run: plan the contenders, start one worker each, measure every shape interleaved, and
assemble the result record (the JSON the CLI writes, the table and the plot are read from).

Contenders are the ONNX variants on each execution provider, plus the PyTorch fp32 and bf16-autocast
baselines when asked. Shapes run from the smallest to the largest, so a worker that runs out of memory
on the biggest input has already given every smaller figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, VariantError
from ..manifest import Manifest, Variant
from ..progress import Progress
from .corpus import load_corpus
from .machine import describe_machine
from .measure import (
    FULL_POLICY,
    SHORT_POLICY,
    CellOutcome,
    RepeatPolicy,
    RoundOrder,
    interleave,
    speed_ratio,
    summarize,
)
from .pool import WorkerError, WorkerProcess
from .ranking import rank_rows
from .shapes import (
    DEFAULT_SHAPES,
    SHORT_SKIPS,
    Shape,
    TokenSource,
    parse_shapes,
    tokenizer_path,
)

SCHEMA = "gte-onnx-bench/2"
SCHEDULE_DESIGN = ("per cell: a seeded random order of the contenders, mirrored every other round (each "
                   "contender precedes each other equally often), an idle gap before every timed run")
TORCH_PROVIDER = "torch"
TORCH_FP32, TORCH_BF16 = "torch-fp32", "torch-bf16"
CPU = "CPUExecutionProvider"
# --fidelity: the figures kept per contender (names of gte_onnx.parity.figures.embedding_figures).
FIDELITY_FIGURES = ("max_abs_diff", "centred_cosine_mean", "centred_cosine_min", "cosine_mean")
# A short corpus run embeds the first documents only; a full run embeds them all.
SHORT_CORPUS_LIMIT = 128


@dataclass
class BenchConfig:
    folder: Path
    variants: Sequence[str] | None = None  # None: every variant meant for the provider
    providers: Sequence[str] = (CPU,)
    shapes: Sequence[Shape] | None = None  # None: DEFAULT_SHAPES (minus SHORT_SKIPS in short mode)
    threads: int | None = None
    torch: str | None = None  # "auto", hub id, folder, "random:<model>"
    torch_dtypes: Sequence[str] = ("fp32", "bf16")
    corpus: str | None = None  # "cisi" or a file
    corpus_limit: int | None = None
    batch_size: int = 32
    short: bool = False
    policy: RepeatPolicy | None = None  # None: FULL_POLICY or SHORT_POLICY
    seed: int = 0
    call_timeout_s: float = 1800.0
    # Idle time before every timed run: what the previous call left running has stopped by then.
    gap_s: float = 0.25
    # Thread spinning in the workers: "stop" (spin during a run only), "off" or "on" (see worker.py).
    spinning: str = "stop"
    schedule_seed: int | None = None  # None: the same as `seed`
    twins: str | None = None  # "best" or a variant name: run that contender twice, as two workers
    peers: Sequence[str] = ()  # peer names (peers.parse_peers): other engines built from the same checkpoint
    peers_cache: str | None = None  # None: ~/.cache/gte-onnx/bench-peers
    fidelity: bool = False  # measure every contender's pooled outputs against PyTorch fp32 on probe inputs
    progress: bool = True
    command: str | None = None

    def resolved_schedule_seed(self) -> int:
        return self.seed if self.schedule_seed is None else self.schedule_seed

    def resolved_policy(self) -> RepeatPolicy:
        return self.policy or (SHORT_POLICY if self.short else FULL_POLICY)

    def corpus_policy(self) -> RepeatPolicy:
        repeats = 2 if self.short else 3
        return RepeatPolicy(min_warmups=1, max_warmups=1, warmup_budget_s=0.0,
                            min_repeats=repeats, max_repeats=repeats, budget_s=0.0)


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


def _folder_bytes(folder: Path) -> int | None:
    if not folder.is_dir():
        return None
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def default_shapes(short: bool) -> list[Shape]:
    return [s for s in parse_shapes(DEFAULT_SHAPES) if not (short and s.label in SHORT_SKIPS)]


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
    cache = cache_folder(config.peers_cache, torch_spec, peer_versions())
    return [
        Contender(
            key=name, name=name, kind="peer", provider=PEER_ENGINE[name],
            spec={"kind": "peer", "peer": name, "engine": PEER_ENGINE[name], "cache": str(cache),
                  "folder": str(config.folder), "threads": config.threads, "spinning": config.spinning,
                  "torch": torch_spec},
            meta={"variant": None, "file": None, "file_bytes": None, "recipe": {}, "fidelity": {},
                  "passed": None, "peer_cache": str(cache)},
        )
        for name in config.peers
    ]


TWIN_SUFFIX = "~twin"


def twin_contender(manifest: Manifest, contenders: Sequence[Contender], which: str) -> Contender:
    """A second, identical worker of one contender: "best" picks the variant `variant="auto"` would load
    on the first provider (the fastest recorded one that passes its gate), else a contender's key."""
    from ..session import choose_variant

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


def BenchProgress(total: int, enabled: bool) -> Progress:
    """The runtime's progress bar over the run's cells (tqdm when installed, else one stderr line)."""
    return Progress(total, "bench", enabled, unit="cell", leave=False)


def _row(contender: Contender, mode: str, label: str, batch: int | None, length: int | None,
         texts: int | None, tokens: int | None, outcome: CellOutcome | None, peak: int | None,
         rss_scope: str, error: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "key": contender.key,
        "name": contender.name,
        "twin_of": contender.twin_of,
        "kind": contender.kind,
        "variant": contender.meta.get("variant"),
        "provider": contender.provider,
        "mode": mode,
        "shape": label,
        "batch": batch,
        "length": length,
        "texts": texts,
        "tokens": tokens,
        "warmups_s": list(outcome.warmups) if outcome else [],
        "samples_s": list(outcome.samples) if outcome else [],
        "n": 0, "median_s": None, "p95_s": None, "mean_s": None, "min_s": None, "max_s": None,
        "q1_s": None, "q3_s": None, "iqr_s": None,
        "texts_per_s": None,
        "tokens_per_s": None,
        "peak_rss_bytes": peak,
        "rss_scope": rss_scope,
        "vs_torch_fp32": None,
        "vs_torch_bf16": None,
        "error": error,
    }
    if outcome is not None and outcome.samples:
        stats = summarize(outcome.samples)
        row.update(stats.to_json())
        if stats.median > 0:
            row["texts_per_s"] = texts / stats.median if texts else None
            row["tokens_per_s"] = tokens / stats.median if tokens else None
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Every row's speed relative to the PyTorch rows of the same shape: torch time / row time."""
    reference: dict[tuple[str, str, str], float] = {}
    for row in rows:
        if row["kind"] == "torch" and row["error"] is None and row["median_s"]:
            reference[(row["name"], row["mode"], row["shape"])] = row["median_s"]
    for row in rows:
        for name, column in ((TORCH_FP32, "vs_torch_fp32"), (TORCH_BF16, "vs_torch_bf16")):
            ref = reference.get((name, row["mode"], row["shape"]))
            row[column] = speed_ratio(ref, row["median_s"]) if row["error"] is None else None


class _Run:
    """The mutable state of one run: live workers, their failures, the progress bar."""

    def __init__(self, config: BenchConfig, contenders: list[Contender], progress: BenchProgress):
        self.config = config
        self.contenders = contenders
        self.progress = progress
        self.workers: dict[str, WorkerProcess] = {}
        self.rss_scope = "shape"
        # Why a contender's worker is gone in this phase (died at a shape, corpus load failed, ...).
        self.gone: dict[str, str] = {}
        # Every cell's rounds in the order they ran: the record that the schedule was fair.
        self.schedule: list[dict[str, Any]] = []

    def live(self) -> list[Contender]:
        return [c for c in self.contenders
                if c.error is None and c.key in self.workers and self.workers[c.key].alive]

    def build_peers(self) -> None:
        """Build every peer family missing from the cache, one worker per family (torch lives there only)."""
        from .peers import families_of

        peers = [c for c in self.contenders if c.kind == "peer"]
        if not peers:
            return
        first = peers[0].spec
        for family, names in families_of([c.name for c in peers]).items():
            members = [c for c in peers if c.name in names]
            self.progress.note(f"building peers {', '.join(names)} (once; cached in {first['cache']})")
            worker = None
            try:
                worker = WorkerProcess(f"build-{family}", {
                    "kind": "peer_build", "peers": names, "cache": first["cache"], "torch": first["torch"],
                    "folder": first["folder"], "spinning": self.config.spinning}, self.config.threads)
                built = worker.request("load", self.config.call_timeout_s)["info"]["built"]
                for contender in members:
                    contender.meta["build"] = built.get(contender.name, {})
                    contender.meta["file_bytes"] = _folder_bytes(Path(first["cache"]) / contender.name)
            except WorkerError as exc:
                for contender in members:
                    contender.error = f"building peer {contender.name} failed: {exc}"
            finally:
                if worker is not None:
                    worker.close()

    def measure_fidelity(self, probe_ids: list[list[int]]) -> None:
        """Every live contender's pooled outputs on the probe inputs against PyTorch fp32's."""
        from ..parity.figures import embedding_figures

        reference = next((c for c in self.live() if c.name == TORCH_FP32), None)
        if reference is None:
            for contender in self.contenders:
                contender.measured_fidelity = {"error": "no PyTorch fp32 reference (it failed to load)"}
            return
        import numpy as np

        timeout = self.config.call_timeout_s
        ref = np.asarray(self.workers[reference.key].request("pooled", timeout, ids=probe_ids)["vectors"])
        for contender in self.live():
            if contender is reference:
                continue
            self.progress.note(f"fidelity {contender.key}")
            try:
                got = np.asarray(self.workers[contender.key].request("pooled", timeout, ids=probe_ids)["vectors"])
                figures = embedding_figures(ref, got)
                contender.measured_fidelity = {k: figures[k] for k in FIDELITY_FIGURES if k in figures}
            except (WorkerError, ValueError) as exc:
                contender.measured_fidelity = {"error": str(exc)}
        reference.measured_fidelity = {"reference": True}

    def start_all(self, mode: str = "shapes") -> None:
        """Start and load one worker per contender, one after the other (so load times do not overlap).

        mode "shapes" loads the bare session; mode "corpus" loads what Embedder.encode needs. The corpus
        phase gets fresh processes so that its peak RSS is not inflated by memory the shape phase's
        session freed but the allocator kept.
        """
        for contender in self.contenders:
            if contender.error is not None:
                continue  # it failed to load already; its rows carry that error
            if mode == "corpus" and contender.kind == "peer":
                continue  # peers are measured on the shapes: the corpus goes through our Embedder.encode
            self.progress.note(f"loading {contender.key}")
            try:
                worker = WorkerProcess(contender.key, {**contender.spec, "mode": mode}, self.config.threads)
                self.workers[contender.key] = worker
                load = worker.request("load", self.config.call_timeout_s)
                load["import_s"] = worker.import_s
                if mode == "shapes":
                    contender.load = load
                else:
                    contender.corpus_load = load
            except WorkerError as exc:
                if mode == "shapes":
                    contender.error = str(exc)  # a load failure of the variant itself
                else:
                    self.gone[contender.key] = str(exc)
                worker = self.workers.pop(contender.key, None)
                if worker is not None:
                    worker.close()
            self.progress.update()

    def _reason(self, contender: Contender) -> str:
        return (contender.error or self.gone.get(contender.key)
                or f"worker {contender.key} is no longer running")

    def measure(self, mode: str, label: str, setup: Callable[[WorkerProcess], None], run_op: dict[str, Any],
                policy: RepeatPolicy) -> tuple[dict[str, CellOutcome], dict[str, int | None], dict[str, dict]]:
        """Set every live worker up, time them interleaved, then read each one's peak RSS."""
        live = self.live()
        errors: dict[str, str] = {}
        for contender in live:
            try:
                setup(self.workers[contender.key])
                supported = self.workers[contender.key].request("reset_peak", 60)["supported"]
                if not supported:
                    self.rss_scope = "process"
            except WorkerError as exc:
                errors[contender.key] = str(exc)
        last_reply: dict[str, dict] = {}
        timeout = self.config.call_timeout_s

        fields = {k: v for k, v in run_op.items() if k != "op"}

        def runner(key: str):
            def call() -> float:
                reply = self.workers[key].request(run_op["op"], timeout, **fields)
                last_reply[key] = reply
                return reply["seconds"]
            return call

        runners = {c.key: runner(c.key) for c in live if c.key not in errors}
        seed = f"{self.config.resolved_schedule_seed()}:{mode}:{label}"
        order = RoundOrder(seed)
        outcomes = interleave(
            runners, policy,
            on_call=lambda key, phase: self.progress.note(f"{label} {key} {phase}"),
            gap_s=self.config.gap_s,
            order=order,
        )
        self.schedule.append({"mode": mode, "cell": label, "seed": seed, "rounds": order.rounds})
        peaks: dict[str, int | None] = {}
        for contender in live:
            worker = self.workers[contender.key]
            if contender.key in errors:
                outcomes[contender.key] = CellOutcome([], [], errors[contender.key])
            if not worker.alive:
                self.gone[contender.key] = f"skipped: the worker died earlier ({outcomes[contender.key].error})"
            else:
                try:
                    peaks[contender.key] = worker.request("peak", 60)["peak_rss_bytes"]
                except WorkerError:
                    peaks[contender.key] = None
        self.progress.update(len(self.contenders))
        return outcomes, peaks, last_reply

    def shape_rows(self, shape: Shape, ids) -> list[dict[str, Any]]:
        ids_list = ids.tolist()
        outcomes, peaks, _ = self.measure(
            "shape", shape.label,
            lambda w: w.request("set_input", 120, key=shape.label, ids=ids_list),
            {"op": "run", "key": shape.label},
            self.config.resolved_policy(),
        )
        rows = []
        for contender in self.contenders:
            outcome = outcomes.get(contender.key)
            error = outcome.error if outcome else self._reason(contender)
            rows.append(_row(contender, "shape", shape.label, shape.batch, shape.length, shape.batch,
                             shape.tokens, outcome, peaks.get(contender.key), self.rss_scope, error))
        return rows

    def corpus_rows(self, corpus_name: str, texts: list[str]) -> list[dict[str, Any]]:
        self.close()
        self.gone = {}
        self.start_all("corpus")
        outcomes, peaks, replies = self.measure(
            "corpus", corpus_name,
            lambda w: w.request("set_corpus", 120, texts=texts),
            {"op": "run_corpus", "batch_size": self.config.batch_size},
            self.config.corpus_policy(),
        )
        rows = []
        for contender in self.contenders:
            if contender.kind == "peer":
                continue
            outcome = outcomes.get(contender.key)
            error = outcome.error if outcome else self._reason(contender)
            reply = replies.get(contender.key, {})
            rows.append(_row(contender, "corpus", corpus_name, None, None, reply.get("texts", len(texts)),
                             reply.get("tokens"), outcome, peaks.get(contender.key), self.rss_scope, error))
        return rows

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.workers = {}


def probe_ids(folder: Path, manifest: Manifest) -> list[list[int]]:
    """Token ids of the parity probe texts (short, code, numbers, other languages, CISI, window edges,
    one long text), truncated to the model's max length."""
    from ..parity.probes import build_probe_set
    from ..tokenize import TextTokenizer

    texts = build_probe_set(tokenizer_path(folder, manifest.tokenizer), manifest.max_length).texts
    tokenizer = TextTokenizer.from_folder(folder, manifest.max_length, manifest.tokenizer.get("pad_token_id"))
    return [list(map(int, ids)) for ids in tokenizer.encode(list(texts), "end").ids]


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Measure every contender at every shape (and the corpus, if asked); return the result record."""
    started = time.time()
    folder = Path(config.folder)
    manifest = Manifest.load(folder)
    from ..session import resolve_providers

    providers: list[str] = []
    for requested in config.providers:
        canonical = resolve_providers([requested])[0]  # ProviderError when it is not available
        if canonical not in providers:
            providers.append(canonical)
    if not providers:
        raise InvalidInputError("no execution provider given")
    shapes = list(config.shapes) if config.shapes else default_shapes(config.short)
    for shape in shapes:
        if shape.length > manifest.max_length:
            raise InvalidInputError(f"shape {shape} is longer than the model's max_length {manifest.max_length}")
    token_source = TokenSource.from_tokenizer_file(tokenizer_path(folder, manifest.tokenizer))
    corpus_name, texts = None, None
    if config.corpus:
        if manifest.task != "embedding":
            raise InvalidInputError("--corpus embeds documents with Embedder.encode: it needs an embedding model")
        limit = config.corpus_limit if config.corpus_limit is not None else (SHORT_CORPUS_LIMIT if config.short else None)
        corpus_name, texts = load_corpus(config.corpus, limit)
    if config.fidelity:
        if manifest.task != "embedding":
            raise InvalidInputError("--fidelity compares pooled embeddings: it needs an embedding model")
        if not config.torch or "fp32" not in config.torch_dtypes:
            raise InvalidInputError("--fidelity measures against PyTorch fp32: add --torch MODEL (e.g. auto) "
                                    "with fp32 among --torch-dtypes")
    contenders = plan_contenders(manifest, config, providers)
    machine = describe_machine()

    cells = len(contenders) * (1 + len(shapes) + (2 if texts else 0))
    progress = BenchProgress(cells, config.progress)
    run = _Run(config, contenders, progress)
    rows: list[dict[str, Any]] = []
    try:
        run.build_peers()
        run.start_all()
        if config.fidelity:
            run.measure_fidelity(probe_ids(folder, manifest))
        for shape in sorted(shapes, key=lambda s: (s.tokens, s.length)):
            rows.extend(run.shape_rows(shape, token_source.synthetic_ids(shape, config.seed)))
        if texts:
            rows.extend(run.corpus_rows(corpus_name, texts))
    finally:
        run.close()
        progress.close()
    order = {s.label: i for i, s in enumerate(shapes)}
    rows.sort(key=lambda r: (r["mode"] != "shape", order.get(r["shape"], 0)))
    add_ratios(rows)
    onnx_providers = sorted({c.provider for c in contenders if c.kind == "onnx"}, key=list(providers).index)
    policy = config.resolved_policy()
    return {
        "schema": SCHEMA,
        "created": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "duration_s": time.time() - started,
        "command": config.command,
        "model": {
            "folder": str(folder),
            "task": manifest.task,
            "source": dict(manifest.source),
            "max_length": manifest.max_length,
            "dim": manifest.dim,
        },
        "machine": machine,
        "settings": {
            "providers": list(providers),
            "threads": config.threads,
            "shapes": [s.label for s in shapes],
            "short": config.short,
            "seed": config.seed,
            "policy": policy.to_json(),
            "corpus": {"name": corpus_name, "texts": len(texts), "batch_size": config.batch_size,
                       "policy": config.corpus_policy().to_json()} if texts else None,
            "torch": config.torch,
            "rss_scope": run.rss_scope,
            "interleaving": SCHEDULE_DESIGN,
            "gap_s": config.gap_s,
            "spinning": config.spinning,
            "schedule_seed": config.resolved_schedule_seed(),
            "twins": config.twins,
            "peers": list(config.peers),
            "fidelity": "pooled outputs of the parity probe texts, one at a time, against PyTorch fp32"
                        if config.fidelity else None,
        },
        "contenders": [c.to_json() for c in contenders],
        "results": rows,
        "twins": twin_report(rows, contenders),
        "schedule": run.schedule,
        "ranking": {p: rank_rows(rows, p) for p in onnx_providers},
        "ranking_basis": "geometric mean over the shapes of the median latency; variants with a failed "
                         "shape are left out",
    }
