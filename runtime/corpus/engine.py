"""Embed a corpus file into a folder of Parquet shards on one machine: streaming, resumable, optionally with
several worker processes. See readers.py (what is read) and output.py (what is written)."""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from gte_onnx.corpus.readers import CorpusFormat, count_records, read_corpus
from gte_onnx.corpus.output import (OutputLock, ShardWriter, chunk_table, complete_shards, open_run, output_schema,
                            shard_rows, write_manifest, write_ranges)
from gte_onnx.errors import InvalidInputError, PrecisionError
from gte_onnx.precision import CalibrationRanges, bytes_per_vector, output_dtype, vector_width
from gte_onnx.progress import Progress, auto_enabled
from gte_onnx import defaults


@dataclass(frozen=True)
class ModelOptions:
    """How to load the model: the same in the main process, in each worker and on each Ray actor."""

    model: str
    variant: str = "auto"
    providers: list[str] | None = None
    threads: int | None = None
    max_batch_tokens: int = defaults.MAX_BATCH_TOKENS
    truncate: str = "end"

    def load(self, threads: int | None = None):
        from gte_onnx.embedder import Embedder

        return Embedder(self.model, self.variant, self.providers, threads or self.threads,
                        self.max_batch_tokens, self.truncate)


@dataclass(frozen=True)
class CorpusJob:
    model: ModelOptions
    input: Path
    output: Path
    spec: CorpusFormat = field(default_factory=CorpusFormat)
    normalize: bool | None = None
    shard_size: int = 10_000
    chunk_size: int = defaults.CHUNK_SIZE
    batch_size: int = 32
    workers: int = 1
    show_progress: bool | None = None
    # Output vectors (gte_onnx.precision); int8/uint8 use `ranges`, else those recorded in the model folder.
    precision: str = "float32"
    ranges: CalibrationRanges | None = None


@dataclass
class Tally:
    rows: int = 0  # embedded by this run
    skipped: int = 0  # already in complete shards
    tokens: int = 0
    truncated: int = 0
    shards: int = 0

    def add(self, other: "Tally") -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


def resolve_job_precision(job: CorpusJob, embedder) -> CorpusJob:
    """The job with its int8/uint8 ranges settled (given, else recorded in the model folder), so every worker
    and every resumed run quantizes with the same ones; without any, a PrecisionError says how to make them."""
    precision, ranges = embedder.resolve_precision(job.precision, job.ranges)
    if precision in ("int8", "uint8") and ranges is None:
        raise PrecisionError(
            f"--precision {precision} needs calibration ranges: pass --ranges FILE (from `gte-onnx calibrate MODEL "
            "--file SAMPLE.txt -o FILE`) or record them in the model folder with `gte-onnx calibrate --record`"
        )
    return dataclasses.replace(job, precision=precision, ranges=ranges)


def run_identity(job: CorpusJob, embedder) -> dict:
    """What must be equal for a rerun to resume into the same output (speed settings are left out)."""
    normalize = embedder.manifest.normalize if job.normalize is None else bool(job.normalize)
    return {
        "model": {"variant": embedder.variant, "sha256": embedder.onnx_model.variant.sha256,
                  "dim": embedder.dim, "max_length": embedder.max_length},
        "options": {"normalize": normalize, "truncate": embedder.truncate, "shard_size": job.shard_size,
                    "precision": job.precision, "ranges_sha256": job.ranges.digest() if job.ranges else None,
                    **job.spec.settings()},
        "input": {"path": str(job.input.resolve()), "bytes": job.input.stat().st_size},
    }


def vectors_record(job: CorpusJob, dim: int) -> dict:
    """The manifest's description of the `vector` column: precision, dtype, width, bytes, and the ranges."""
    return {"precision": job.precision, "dtype": output_dtype(job.precision).name,
            "width": vector_width(job.precision, dim), "bytes_per_vector": bytes_per_vector(job.precision, dim),
            "ranges": job.ranges.to_json() if job.ranges else None}


def check_job(job: CorpusJob) -> None:
    for name in ("shard_size", "chunk_size", "batch_size", "workers"):
        value = getattr(job, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInputError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
    if not job.input.is_file():
        raise InvalidInputError(f"corpus file {job.input} does not exist")


def embed_shard(embedder, job: CorpusJob, index: int, records: Iterator, schema, progress=None) -> Tally:
    """Embed one shard's records chunk by chunk into its temporary file, then rename it into place."""
    writer = ShardWriter(job.output, index, schema)
    tally = Tally(shards=1)
    try:
        for chunk in embedder.embed(records, job.batch_size, job.chunk_size, job.normalize,
                                    precision=job.precision, ranges=job.ranges):
            writer.write(chunk_table(schema, chunk.ids, chunk.vectors, chunk.token_counts, chunk.truncated))
            step = Tally(rows=len(chunk), tokens=int(chunk.token_counts.sum()), truncated=int(chunk.truncated.sum()))
            tally.add(step)
            if progress is not None:
                progress.advance(step)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    return tally


def shards_of(records: Iterator, shard_size: int) -> Iterator[tuple[int, Iterator]]:
    """(index, lazy records) per shard; each must be consumed (or skipped) before the next is asked for."""
    records = iter(records)
    for index in itertools.count():
        first = next(records, None)
        if first is None:
            return
        yield index, itertools.chain([first], itertools.islice(records, shard_size - 1))


def skip_shard(records: Iterator, path: Path, index: int, shard_size: int) -> int:
    """Read past a complete shard's documents, checking that the shard holds exactly them."""
    n = sum(1 for _ in records)
    have = shard_rows(path)
    if have != n:
        raise InvalidInputError(
            f"{path} holds {have} rows but the input has {n} documents for shard {index} "
            f"(shard size {shard_size}): the input changed since that shard was written; use a new output folder"
        )
    return n


class CorpusProgress:
    """Documents/s (the bar, with its ETA), tokens/s (its note)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = Progress(total, "embed-corpus", enabled, unit="doc")
        self.start = time.perf_counter()
        self.tally = Tally()

    def advance(self, step: Tally) -> None:
        self.tally.add(step)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.note(f"{self.tally.tokens / elapsed:,.0f} tok/s, {self.tally.truncated} truncated")
        self.bar.update(step.rows + step.skipped)

    def close(self) -> None:
        self.bar.close()


def run_corpus(job: CorpusJob, log=sys.stderr) -> dict:
    """Embed job.input into job.output; returns the summary written into the run's manifest."""
    check_job(job)
    start = time.perf_counter()
    embedder = job.model.load(threads_per_worker(job))
    job = resolve_job_precision(job, embedder)
    identity = run_identity(job, embedder)
    if job.workers > 1:
        embedder = None  # each worker loads its own; this process only reads and dispatches
    lock = OutputLock(job.output)
    try:
        return _run_locked(job, embedder, identity, start, log)
    finally:
        lock.release()


def _run_locked(job: CorpusJob, embedder, identity: dict, start: float, log) -> dict:
    record = open_run(job.output, identity)
    dim = identity["model"]["dim"]
    if "vectors" not in record:
        record["vectors"] = vectors_record(job, dim)
        write_manifest(job.output, record)
    if job.ranges is not None:
        write_ranges(job.output, job.ranges)
    done = complete_shards(job.output)
    schema = output_schema(dim, job.spec.id_field is not None, job.precision)
    total = count_records(job.input, job.spec)
    progress = CorpusProgress(total, auto_enabled(job.show_progress, total, threshold=1))
    try:
        if job.workers == 1:
            tally = _run_here(embedder, job, done, schema, progress)
        else:
            tally = _run_workers(job, done, schema, progress)
    except KeyboardInterrupt:
        progress.close()
        print(f"interrupted: {len(complete_shards(job.output))} shard(s) are complete in {job.output}; "
              "rerun the same command to resume", file=log)
        raise
    progress.close()
    seconds = time.perf_counter() - start
    summary = _summary(job, tally, seconds, identity)
    record.update(summary, complete=True)
    write_manifest(job.output, record)
    print(_summary_line(summary, tally, seconds), file=log)
    return summary


def threads_per_worker(job: CorpusJob) -> int | None:
    if job.model.threads or job.workers == 1:
        return job.model.threads
    from gte_onnx.inference.session import physical_cores

    return max(1, physical_cores() // job.workers)


def _skip(records, path: Path, index: int, job: CorpusJob, progress: CorpusProgress) -> Tally:
    """A shard already complete in the output: its records are read past (checked against it) and counted
    as skipped."""
    step = Tally(skipped=skip_shard(records, path, index, job.shard_size))
    progress.advance(step)
    return step


def _run_here(embedder, job: CorpusJob, done: dict, schema, progress: CorpusProgress) -> Tally:
    tally = Tally()
    for index, records in shards_of(read_corpus(job.input, job.spec), job.shard_size):
        if index in done:
            tally.add(_skip(records, done[index], index, job, progress))
            continue
        tally.add(embed_shard(embedder, job, index, records, schema, progress))
    return tally


# ---- several processes on one machine ------------------------------------------------------------------
_WORKER: dict = {}


def _worker_init(job: CorpusJob, threads: int | None) -> None:
    _WORKER["embedder"] = job.model.load(threads)
    _WORKER["job"] = job


def _worker_shard(index: int, records: list, schema) -> Tally:
    return embed_shard(_WORKER["embedder"], _WORKER["job"], index, iter(records), schema)


def _run_workers(job: CorpusJob, done: dict, schema, progress: CorpusProgress) -> Tally:
    """The main process reads; each worker embeds and writes whole shards. At most two shards per worker
    are in flight, so memory stays bounded by the shard size whatever the corpus size."""
    tally = Tally()
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # onnxruntime's thread pools do not survive a fork
    with ProcessPoolExecutor(job.workers, context, initializer=_worker_init,
                             initargs=(job, threads_per_worker(job))) as pool:
        pending = set()
        try:
            for index, records in shards_of(read_corpus(job.input, job.spec), job.shard_size):
                if index in done:
                    tally.add(_skip(records, done[index], index, job, progress))
                    continue
                pending.add(pool.submit(_worker_shard, index, list(records), schema))
                while len(pending) >= 2 * job.workers:
                    pending = _collect(pending, FIRST_COMPLETED, tally, progress)
            _collect(pending, None, tally, progress)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return tally


def _collect(pending: set, mode, tally: Tally, progress: CorpusProgress) -> set:
    finished, rest = wait(pending, return_when=mode) if mode else wait(pending)
    for future in finished:
        step = future.result()
        progress.advance(step)
        tally.add(step)
    return rest


def _summary(job: CorpusJob, tally: Tally, seconds: float, identity: dict) -> dict:
    rows = tally.rows + tally.skipped
    return {"rows": rows, "embedded_this_run": tally.rows, "resumed_rows": tally.skipped,
            "shards": len(complete_shards(job.output)), "truncated_this_run": tally.truncated,
            "tokens_this_run": tally.tokens, "seconds_this_run": round(seconds, 3)}


def _summary_line(summary: dict, tally: Tally, seconds: float) -> str:
    rate = tally.rows / max(seconds, 1e-9)
    resumed = f", {summary['resumed_rows']} already done" if summary["resumed_rows"] else ""
    return (f"embedded {tally.rows} documents{resumed} -> {summary['rows']} rows in {summary['shards']} shard(s); "
            f"{tally.truncated} truncated; {seconds:.1f} s ({rate:.1f} docs/s, {tally.tokens / max(seconds, 1e-9):,.0f} tokens/s)")
