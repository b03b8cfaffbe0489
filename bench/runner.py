"""The benchmark run: plan the contenders, start one worker each, measure every shape interleaved, and
assemble the result record (the JSON the CLI writes, the table and the plot are read from).

Contenders are the ONNX variants on each execution provider, plus the PyTorch fp32 and bf16-autocast
baselines when asked. Shapes run from the smallest to the largest, so a worker that runs out of memory
on the biggest input has already given every smaller figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from gte_onnx.folder.manifest import Manifest
from gte_onnx.progress import Progress
from .config import CPU, TORCH_BF16, TORCH_FP32, TORCH_PROVIDER, BenchConfig  # noqa: F401 - re-exported
from .contenders import Contender, plan_contenders, twin_report
from .corpus import load_corpus
from .machine import describe_machine
from .measure import CellOutcome, RepeatPolicy, RoundOrder, interleave, speed_ratio, summarize
from .fidelity import measure_fidelity, probe_ids
from .peer_build import build_peers
from .pool import WorkerError, WorkerProcess
from gte_onnx.inference.speed_ranking import rank_rows
from .shapes import DEFAULT_SHAPES, SHORT_SKIPS, Shape, TokenSource, parse_shapes, tokenizer_path

SCHEMA = "gte-onnx-bench/2"
SCHEDULE_DESIGN = ("per cell: a seeded random order of the contenders, mirrored every other round (each "
                   "contender precedes each other equally often), an idle gap before every timed run")
# A short corpus run embeds the first documents only; a full run embeds them all.
SHORT_CORPUS_LIMIT = 128


def default_shapes(short: bool) -> list[Shape]:
    return [s for s in parse_shapes(DEFAULT_SHAPES) if not (short and s.label in SHORT_SKIPS)]


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
            check = reply.get("check")
            if error is None and check is not None and not check["valid"]:
                # A time of broken vectors is not a time: the row reports why instead.
                error = f"vectors failed the check: {check['why']}"
            rows.append(_row(contender, "corpus", corpus_name, None, None, reply.get("texts", len(texts)),
                             reply.get("tokens"), outcome, peaks.get(contender.key), self.rss_scope, error))
            rows[-1]["vector_check"] = check
        return rows

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.workers = {}



def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Measure every contender at every shape (and the corpus, if asked); return the result record."""
    started = time.time()
    folder = Path(config.folder)
    manifest = Manifest.load(folder)
    from gte_onnx.inference.session import resolve_providers

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
        build_peers(contenders, config, progress)
        run.start_all()
        if config.fidelity:
            measure_fidelity(contenders, run.live(), run.workers, probe_ids(folder, manifest),
                             config.call_timeout_s, progress)
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
