"""The runtime's own verbs: `gte-onnx embed`, `calibrate`, `rerank` and `info` (the other verbs live with
their stage; gte_onnx.cli dispatches)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gte_onnx.cli.options import (add_model_source_options, add_precision_options, add_runtime_options, load_ranges,
                                  model_source_kwargs, open_model, read_lines, stderr)

# ---- embed ------------------------------------------------------------------------------------------
def embed_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gte-onnx embed",
        description="Embed texts (arguments, --file, or one per line on stdin). Writes JSON lines or .npy.",
    )
    parser.add_argument("model", help="model folder or hub id")
    parser.add_argument("texts", nargs="*", help="texts to embed")
    parser.add_argument("--file", help="read texts from FILE, one per line ('-' for stdin)")
    parser.add_argument("--output", "-o", help="write here: *.npy for a numpy array, else JSON lines (default stdout)")
    norm = parser.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None)
    norm.add_argument("--no-normalize", dest="normalize", action="store_false")
    add_precision_options(parser)
    add_runtime_options(parser)
    args = parser.parse_intermixed_args(argv)
    texts = read_lines(args.texts, args.file)
    if not texts:
        parser.error("no texts: give them as arguments, with --file, or on stdin")
    from gte_onnx.embedder import Embedder

    ranges = load_ranges(args.ranges)
    model = open_model(Embedder, args)
    vectors = model.encode(texts, batch_size=args.batch_size, normalize=args.normalize, precision=args.precision,
                           ranges=ranges)
    if vectors.truncated:
        print(f"note: {len(vectors.truncated)} input(s) truncated to {model.max_length} tokens", file=sys.stderr)
    if args.output and args.output.endswith(".npy"):
        import numpy as np

        np.save(args.output, np.asarray(vectors))
        print(f"wrote {len(texts)} x {vectors.shape[1]} {vectors.dtype} ({args.precision}) to {args.output}",
              file=sys.stderr)
        return 0
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    as_json = (lambda vec: [round(float(x), 7) for x in vec]) if args.precision == "float32" else (lambda vec: vec.tolist())
    try:
        for i, (text, vec) in enumerate(zip(texts, vectors)):
            record = {"index": i, "text": text, "truncated": i in vectors.truncated, "embedding": as_json(vec)}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


# ---- calibrate --------------------------------------------------------------------------------------
def calibrate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gte-onnx calibrate",
        description="Per-dimension ranges of sample texts' vectors, for int8/uint8 output vectors (--precision). "
        "Use text like what you will embed (a thousand lines or more), not your evaluation set.",
    )
    parser.add_argument("model", help="model folder or hub id")
    parser.add_argument("texts", nargs="*", help="sample texts")
    parser.add_argument("--file", help="read the sample from FILE, one text per line ('-' for stdin)")
    parser.add_argument("--output", "-o", help="write the ranges JSON here (default: stdout, unless --record)")
    parser.add_argument("--record", action="store_true",
                        help="record the ranges in the model folder's gte-onnx.json, the default of --precision int8/uint8")
    parser.add_argument("--note", default=None, help="what the sample is, kept with the ranges (default: its size and file)")
    norm = parser.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None)
    norm.add_argument("--no-normalize", dest="normalize", action="store_false")
    add_runtime_options(parser)
    args = parser.parse_intermixed_args(argv)
    texts = read_lines(args.texts, args.file)
    if not texts:
        parser.error("no texts: give them as arguments, with --file, or on stdin")
    from gte_onnx.embedder import Embedder
    from gte_onnx.folder.manifest import Manifest
    from gte_onnx.precision import MANIFEST_KEY

    model = open_model(Embedder, args)
    source = args.note or f"{len(texts)} texts" + (f" from {Path(args.file).name}" if args.file and args.file != "-" else "")
    ranges = model.calibrate_ranges(texts, batch_size=args.batch_size, normalize=args.normalize, source=source)
    if args.output:
        ranges.save(args.output)
        print(f"wrote the ranges of {ranges.samples} vectors ({ranges.dim} dimensions) to {args.output}", file=sys.stderr)
    if args.record:
        manifest = Manifest.load(model.folder)
        manifest.replace(extra={**manifest.extra, MANIFEST_KEY: ranges.to_json()}).save(model.folder)
        print(f"recorded the ranges in {model.folder / 'gte-onnx.json'} (extra.{MANIFEST_KEY})", file=sys.stderr)
    if not args.output and not args.record:
        print(json.dumps(ranges.to_json()))
    return 0


# ---- rerank -----------------------------------------------------------------------------------------
def rerank_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gte-onnx rerank",
        description="Score documents against a query (documents as arguments, --file, or stdin lines).",
    )
    parser.add_argument("model", help="reranker model folder or hub id")
    parser.add_argument("documents", nargs="*")
    parser.add_argument("--query", "-q", required=True)
    parser.add_argument("--file", help="read documents from FILE, one per line ('-' for stdin)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--raw", action="store_true", help="raw logits instead of sigmoid scores")
    add_runtime_options(parser)
    args = parser.parse_intermixed_args(argv)
    docs = read_lines(args.documents, args.file)
    if not docs:
        parser.error("no documents: give them as arguments, with --file, or on stdin")
    from gte_onnx.reranker import Reranker

    model = open_model(Reranker, args)
    ranked = model.rerank(
        args.query, docs, top_k=args.top_k, return_documents=True, batch_size=args.batch_size,
        activation=None if args.raw else "sigmoid",
    )
    if model.last_truncated:
        print(f"note: {len(model.last_truncated)} pair(s) truncated to {model.max_length} tokens", file=sys.stderr)
    for item in ranked:
        print(json.dumps(item, ensure_ascii=False))
    return 0


# ---- info -------------------------------------------------------------------------------------------
def info_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gte-onnx info", description="Summarise a model folder's manifest.")
    parser.add_argument("model", help="model folder or hub id")
    add_model_source_options(parser)
    args = parser.parse_args(argv)
    from gte_onnx.inference.kernel_family import FLOAT_KINDS, arithmetic, covered, folder_records
    from gte_onnx.folder.manifest import Manifest
    from gte_onnx.sources.resolve import resolve_model

    kwargs = model_source_kwargs(args)
    manifest = Manifest.load(resolve_model(args.model, variant=None, log=stderr, **kwargs))
    print(f"task {manifest.task}, pooling {manifest.pooling}, normalize {manifest.normalize}, "
          f"max_length {manifest.max_length}, dim {manifest.dim}, source {manifest.source.get('model_id')}"
          + (" (random weights)" if manifest.source.get("random_weights") else ""))
    for name, v in manifest.variants.items():
        gate = "passes" if v.passes_gate() else "FAILS/unmeasured"
        kind = arithmetic(v)
        where = ", ".join(
            f"{family} {'passed' if r.get('passed') else 'FAILED'}"
            + (f" (holds on {', '.join(covered(kind, family))})" if kind not in FLOAT_KINDS and covered(kind, family) else "")
            for family, r in sorted(folder_records(v).items()))
        print(f"  {name:<8} {v.file:<22} {v.total_bytes / 1e6:8.1f} MB  gate {gate}"
              + (f"; measured on {where}" if where else ""))
    for provider, ranking in manifest.speed_ranking.items():
        print(f"  fastest on {provider}: {', '.join(ranking)}")
    return 0

