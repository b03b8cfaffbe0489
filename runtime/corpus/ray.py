"""gte_onnx.corpus.ray: embed a corpus on a Ray cluster with Ray Data (extra [ray]).

    import ray
    from gte_onnx.corpus.ray import EmbedBatches

    ds = ray.data.read_parquet("s3://bucket/corpus/")             # columns id, text
    ds = ds.map_batches(EmbedBatches, fn_constructor_kwargs={"model": "/shared/gte-modernbert-base-onnx"},
                        batch_size=1024, batch_format="pyarrow", concurrency=8)
    ds.write_parquet("s3://bucket/embeddings/")                     # id, vector, token_count, truncated

Each actor loads the model once: a folder on shared storage, or a hub id that every node resolves into its
own cache; the variant's sha256 is checked against the folder's manifest and, when given, against `sha256`
(the driver passes its own, so every node runs the same bytes). Nothing in the core imports this module.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from gte_onnx.corpus.engine import CorpusJob
from gte_onnx.corpus.readers import CorpusFormat, iter_records
from gte_onnx.corpus.output import RUN_MANIFEST_NAME, chunk_table, output_schema, write_manifest
from gte_onnx.errors import GteOnnxError, IntegrityError, InvalidInputError, missing_dependency
from gte_onnx import defaults


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise missing_dependency("ray[data]", "ray", "the Ray engine (gte_onnx.corpus.ray)") from None
    return ray


class EmbedBatches:
    """A callable class for `Dataset.map_batches`: batch (id, text columns) -> id, vector, token_count, truncated.

    Give it batch_format="pyarrow" (pandas and numpy batches work too). String ids stay strings, integer
    ids become int64, as `gte-onnx embed-corpus` writes them.
    """

    def __init__(self, model: str, variant: str = "auto", sha256: str | None = None, threads: int | None = None,
                 providers=None, max_batch_tokens: int = defaults.MAX_BATCH_TOKENS, truncate: str = "end", normalize: bool | None = None,
                 batch_size: int = 32, text_column: str = "text", id_column: str = "id", revision: str | None = None,
                 precision: str = "float32", ranges: dict | None = None):
        from gte_onnx.embedder import Embedder
        from gte_onnx.precision import CalibrationRanges

        self.embedder = Embedder(model, variant, providers, threads, max_batch_tokens, truncate, revision)
        actual = self.embedder.onnx_model.variant.sha256
        if sha256 and actual != sha256:
            raise IntegrityError(
                f"{model}: variant {self.embedder.variant!r} on this node has sha256 {actual}, the job expects {sha256}"
            )
        self.normalize, self.batch_size = normalize, batch_size
        self.precision, self.ranges = self.embedder.resolve_precision(
            precision, None if ranges is None else CalibrationRanges.from_json(ranges))
        self.text_column, self.id_column = text_column, id_column

    def __call__(self, batch):
        ids, texts = self._columns(batch)
        string_ids = any(isinstance(i, str) for i in ids)
        schema = output_schema(self.embedder.dim, string_ids, self.precision)
        chunks = self.embedder.embed(zip(ids, texts), self.batch_size, max(len(ids), 1), self.normalize,
                                     precision=self.precision, ranges=self.ranges)
        tables = [chunk_table(schema, chunk.ids, chunk.vectors, chunk.token_counts, chunk.truncated) for chunk in chunks]
        import pyarrow as pa

        return pa.concat_tables(tables) if tables else schema.empty_table()

    def _columns(self, batch) -> tuple[list, list]:
        for name in (self.id_column, self.text_column):
            if name not in (batch.column_names if hasattr(batch, "column_names") else batch):
                raise InvalidInputError(f"the batch has no column {name!r}; pass text_column= / id_column=")
        if hasattr(batch, "column_names"):  # pyarrow.Table
            return batch.column(self.id_column).to_pylist(), batch.column(self.text_column).to_pylist()
        ids, texts = batch[self.id_column], batch[self.text_column]  # pandas.DataFrame or dict of numpy
        return [i.item() if hasattr(i, "item") else i for i in list(ids)], [str(t) if t is not None else t for t in list(texts)]


class ParseCorpusFile:
    """map_batches over ray.data.read_binary_files: each file's bytes -> (id, text) tables of `chunk_size` rows,
    parsed by the same function as the local engine, so both number and join documents the same way."""

    def __init__(self, spec: CorpusFormat, name: str, chunk_size: int):
        self.spec, self.name, self.chunk_size = spec, name, chunk_size

    def __call__(self, batch):
        import io
        import itertools

        import pyarrow as pa

        for data in batch["bytes"]:
            records = iter_records(io.BytesIO(data), self.spec, self.name)
            while chunk := list(itertools.islice(records, self.chunk_size)):
                yield pa.table({"id": [r[0] for r in chunk], "text": [r[1] for r in chunk]})


def _check_fresh_output(output: Path) -> None:
    if output.exists() and any(p.suffix == ".parquet" or p.name == RUN_MANIFEST_NAME for p in output.iterdir()):
        raise InvalidInputError(
            f"{output} already holds a run; the Ray engine writes a whole run at once (Ray retries failed tasks "
            "itself), so give it a new or empty output folder"
        )


def run_corpus_on_ray(job: CorpusJob, address: str | None = None, concurrency: int | None = None,
                      cpus_per_actor: float = 1.0, log=sys.stderr) -> dict:
    """The embed-corpus job with Ray Data: read the file, embed on `concurrency` actors, write_parquet."""
    ray = import_ray()
    from gte_onnx.corpus.engine import check_job, resolve_job_precision, run_identity, vectors_record
    from gte_onnx.corpus.output import write_ranges

    check_job(job)
    _check_fresh_output(job.output)
    start = time.perf_counter()
    embedder = job.model.load()  # the driver checks the model and records what every actor must match
    job = resolve_job_precision(job, embedder)
    identity = dict(run_identity(job, embedder), engine="ray")
    vectors = vectors_record(job, embedder.dim)
    if not ray.is_initialized():
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    actors = concurrency or max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    actor_kwargs = _actor_kwargs(job, embedder, cpus_per_actor)
    del embedder
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.target_max_block_size
    try:
        context.enable_progress_bars = bool(job.show_progress)
        # One input file arrives as one block; small blocks (each parsed chunk closes one once it is this big)
        # spread the documents over the actors without an all-to-all repartition.
        context.target_max_block_size = min(max(job.input.stat().st_size // (actors * 8), 64 << 10), 128 << 20)
        _pipeline(ray, job, actors, cpus_per_actor, actor_kwargs).write_parquet(str(job.output))
    except Exception as exc:
        ours = _our_error(exc)
        if ours is None:
            raise
        raise ours from None
    finally:
        context.enable_progress_bars, context.target_max_block_size = saved
    seconds = time.perf_counter() - start
    summary = _written_summary(job.output, seconds)
    if job.ranges is not None:
        write_ranges(job.output, job.ranges)
    write_manifest(job.output, {"format": "gte-onnx-corpus/1", "run": identity, "vectors": vectors, "complete": True,
                                **summary})
    print(f"embedded {summary['rows']} documents on {actors} Ray actor(s); {summary['truncated']} truncated; "
          f"{seconds:.1f} s ({summary['rows'] / max(seconds, 1e-9):.1f} docs/s)", file=log)
    return summary


def _pipeline(ray, job: CorpusJob, actors: int, cpus_per_actor: float, actor_kwargs: dict):
    # Reading and parsing are light: a small CPU share keeps them schedulable beside actors that hold the rest.
    ds = ray.data.read_binary_files(str(job.input.resolve()), num_cpus=0.1)
    ds = ds.map_batches(ParseCorpusFile(job.spec, str(job.input), job.chunk_size), batch_size=1,
                        batch_format="numpy", num_cpus=0.1)
    return ds.map_batches(
        EmbedBatches, batch_size=job.chunk_size, batch_format="pyarrow", num_cpus=cpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=actors), fn_constructor_kwargs=actor_kwargs,
    )


def _our_error(exc: BaseException) -> GteOnnxError | None:
    """The typed error an actor or task raised (a bad document, a model mismatch), rebuilt from Ray's wrapper:
    Ray hands the driver the remote traceback as text, so the error is found by its class name there."""
    import re

    from gte_onnx import errors

    text = str(exc)
    for name, message in reversed(re.findall(r"gte_onnx\.errors\.(\w+): (.+)", text)):
        kind = getattr(errors, name, None)
        if isinstance(kind, type) and issubclass(kind, GteOnnxError):
            return kind(message.strip())
    return None


def _actor_kwargs(job: CorpusJob, embedder, cpus_per_actor: float) -> dict:
    options = job.model
    return {"model": options.model, "variant": embedder.variant, "sha256": embedder.onnx_model.variant.sha256,
            "threads": options.threads or max(1, int(cpus_per_actor)), "providers": options.providers, "max_batch_tokens": options.max_batch_tokens,
            "truncate": options.truncate, "normalize": job.normalize, "batch_size": job.batch_size,
            "precision": job.precision, "ranges": job.ranges.to_json() if job.ranges else None}


def _written_summary(output: Path, seconds: float) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted(output.glob("*.parquet"))
    truncated = pq.read_table(files, columns=["truncated"]) if files else None
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    count = int(pc.sum(truncated.column("truncated").cast("int64")).as_py() or 0) if truncated is not None else 0
    return {"rows": rows, "shards": len(files), "truncated": count, "seconds": round(seconds, 3)}
