"""`gte-onnx embed-corpus MODEL INPUT OUTPUT`: a corpus file -> a folder of Parquet shards, on this machine
(resumable, --workers N) or on a Ray cluster (--engine ray)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gte_onnx.corpus.readers import FORMATS, CorpusFormat, detect_format
from gte_onnx import defaults


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gte-onnx embed-corpus",
        description="Embed every document of INPUT (JSON lines, CSV/TSV, Parquet, or plain text with one document "
        "a line) into OUTPUT, a folder of Parquet shards with columns id, vector, token_count, truncated. "
        "Rerunning the same command after a crash or Ctrl-C resumes: complete shards are kept.",
    )
    parser.add_argument("model", help="model folder (or hub id of a gte-onnx folder)")
    parser.add_argument("input", type=Path, help="corpus file")
    parser.add_argument("output", type=Path, help="output folder (created; resumed when it holds the same run)")
    parser.add_argument("--format", choices=FORMATS, default=None, help="input format (default: from the suffix; "
                        "text when unknown)")
    parser.add_argument("--text-field", default="text", help="field/column holding the text (default: text)")
    parser.add_argument("--id-field", default=None, help="field/column holding the id, stored as a string "
                        "(default: the line number for text and JSON lines, the row number for CSV and Parquet, from 1)")
    parser.add_argument("--title-field", default=None, help="field/column with a title, joined before the text")
    parser.add_argument("--title-separator", default=" ", help="between title and text (default: one space)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="documents per Parquet file")
    parser.add_argument("--chunk-size", type=int, default=defaults.CHUNK_SIZE, help="documents tokenized and embedded at a time")
    norm = parser.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None)
    norm.add_argument("--no-normalize", dest="normalize", action="store_false")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None)
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--workers", type=int, default=1, help="processes on this machine, each with "
                        "cores/N threads (local engine)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--concurrency", type=int, default=None, help="Ray actors, each loading the model once "
                        "(default: one per node)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="Ray CPUs each actor reserves")
    from gte_onnx.cli.options import add_precision_options, add_runtime_options

    add_precision_options(parser)
    add_runtime_options(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from gte_onnx.cli.options import load_ranges, providers_arg
    from gte_onnx.corpus.engine import CorpusJob, ModelOptions, run_corpus

    spec = CorpusFormat(detect_format(args.input, args.format), args.text_field, args.id_field,
                        args.title_field, args.title_separator)
    model = ModelOptions(args.model, args.variant, providers_arg(args.providers), args.threads,
                         args.max_batch_tokens, args.truncate)
    job = CorpusJob(model, args.input, args.output, spec, args.normalize, args.shard_size, args.chunk_size,
                    args.batch_size, args.workers, args.progress, args.precision, load_ranges(args.ranges))
    if args.engine == "ray":
        from gte_onnx.corpus.ray import run_corpus_on_ray

        run_corpus_on_ray(job, address=args.address, concurrency=args.concurrency, cpus_per_actor=args.cpus_per_actor)
    else:
        run_corpus(job)
    return 0
