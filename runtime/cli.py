"""`gte-onnx <verb>`: one entry point. Each verb lives with its stage and is imported only when called,
so `gte-onnx embed` never loads torch, and `gte-onnx export` loads it only when it is installed."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from .clierrors import debug_mode, one_line, run_verb, take_debug_flag
from .errors import MissingDependencyError, UsageError

# verb -> ("module:function", one-line help). The function takes argv (after the verb) and returns an exit code.
VERBS: dict[str, tuple[str, str]] = {
    "export": ("gte_onnx.export.cli:main", "checkpoint -> validated ONNX model folder (torch-free with --no-torch)"),
    "quantize": ("gte_onnx.quantize.cli:main", "add fp16 / int8 / q4 variants to a model folder [quantize]"),
    "embed": ("gte_onnx.cli:embed_main", "embed texts with a model folder"),
    "embed-corpus": ("gte_onnx.corpus_cli:main", "embed a corpus file into resumable Parquet shards [corpus]"),
    "calibrate": ("gte_onnx.cli:calibrate_main", "int8/uint8 output ranges from sample texts; --record keeps them in the folder"),
    "rerank": ("gte_onnx.cli:rerank_main", "score documents against a query with a reranker folder"),
    "reference": ("gte_onnx.parity.cli:reference_main", "PyTorch reference outputs for parity [parity]"),
    "parity": ("gte_onnx.parity.cli:parity_main", "fidelity report of each variant against a reference"),
    "verify": ("gte_onnx.quantize.verify:main", "measure quantized variants' gates on this CPU's family [quantize]"),
    "bench": ("gte_onnx.bench.cli:main", "benchmark variants x providers x shapes [bench]"),
    "serve": ("gte_onnx.server.main:main", "HTTP server: OpenAI, TEI and Cohere APIs [server]"),
    "info": ("gte_onnx.cli:info_main", "print a model folder's manifest summary"),
    "import": ("gte_onnx.convert.onnx_import:main", "a repo's own ONNX files (transformers.js, optimum) -> model folder"),
    "doctor": ("gte_onnx.doctor:main", "onnxruntime wheels, providers, CUDA libraries, CPU flags; auto's pick"),
}


# The extra that brings each optional stage's packages, for the install hint.
EXTRAS = {"gte_onnx.export": "export", "gte_onnx.quantize": "quantize", "gte_onnx.parity": "parity",
          "gte_onnx.bench": "bench", "gte_onnx.server": "server"}


def _extra_of(target: str) -> str | None:
    return next((extra for prefix, extra in EXTRAS.items() if target.startswith(prefix)), None)


def _install_hint(target: str) -> str:
    extra = _extra_of(target)
    return f"; install it with: pip install 'gte-onnx[{extra}]'" if extra else ""


def _load(verb: str, target: str) -> Callable[[list[str]], int]:
    module, _, func = target.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except ImportError as exc:
        if isinstance(exc, MissingDependencyError):
            raise
        missing = exc.name or one_line(str(exc))
        raise MissingDependencyError(
            f"gte-onnx {verb} needs the package '{missing}', which is not installed{_install_hint(target)}"
        ) from exc


def _usage() -> str:
    lines = ["usage: gte-onnx [--debug] <verb> [options]", "", "verbs:"]
    lines += [f"  {verb:<10} {help_text}" for verb, (_, help_text) in VERBS.items()]
    lines += ["", "`gte-onnx <verb> --help` describes each verb. --debug (or GTE_ONNX_DEBUG=1) shows the",
              "traceback of an error as well as its one-line message."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv, debug = take_debug_flag(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}; one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    target = VERBS[verb][0]
    with debug_mode(debug):
        return run_verb(lambda args: _load(verb, target)(args), rest, _install_hint(target))


# ---- shared option groups ---------------------------------------------------------------------------
def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", default="auto", help="variant name (fp32, int8, q4, ...) or auto")
    parser.add_argument("--providers", default=None, help="comma-separated, e.g. cpu or cuda,cpu")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--truncate", choices=("end", "start", "error"), default="end")
    add_model_source_options(parser)


def add_model_source_options(parser: argparse.ArgumentParser) -> None:
    """How a hub id or a non-gte-onnx folder becomes a model folder (see gte_onnx.resolve)."""
    parser.add_argument("--source", choices=("auto", "convert", "onnx"), default="auto",
                        help="auto: convert a supported checkpoint, else use the repo's ONNX files; "
                        "convert or onnx insist on one")
    parser.add_argument("--revision", default=None, help="hub branch, tag or commit")
    parser.add_argument("--cache-dir", default=None,
                        help="where converted and imported models are kept (default $GTE_ONNX_CACHE or ~/.cache/gte-onnx)")
    parser.add_argument("--offline", action="store_true", help="use only local files and the local hub cache")


def model_source_kwargs(args: argparse.Namespace) -> dict:
    """The Embedder/Reranker keyword arguments of add_model_source_options."""
    return {"source": args.source, "revision": args.revision, "cache_dir": args.cache_dir,
            "local_files_only": args.offline}


def add_precision_options(parser: argparse.ArgumentParser, flag: str = "--precision") -> None:
    from .precision import PRECISIONS

    parser.add_argument(flag, dest="precision", choices=PRECISIONS, default="float32",
                        help="output vectors: float32 (default), int8/uint8 (per-dimension buckets of calibration "
                        "ranges), binary/ubinary (signs packed into dim/8 bytes); see docs/precision.md")
    parser.add_argument("--ranges", dest="ranges", default=None, metavar="FILE",
                        help="int8/uint8 ranges JSON (from `gte-onnx calibrate`); default: those recorded in the "
                        "model folder")


def load_ranges(path: str | None):
    from .precision import CalibrationRanges

    return None if path is None else CalibrationRanges.load(path)


def _open_model(cls, args: argparse.Namespace):
    """Embedder or Reranker as the runtime and model-source options ask."""
    return cls(args.model, args.variant, _providers(args.providers), args.threads, args.max_batch_tokens,
               args.truncate, **model_source_kwargs(args))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _providers(value: str | None):
    return None if value is None else [p.strip() for p in value.split(",") if p.strip()]


def _read_lines(items: list[str], file: str | None) -> list[str]:
    """Arguments win; then --file (or '-' for stdin); then stdin when it is piped."""
    if items:
        return list(items)
    if file is not None and file != "-":
        return _read_text_file(file)
    if file == "-" or not sys.stdin.isatty():
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    return []


def _read_text_file(file: str) -> list[str]:
    """The non-empty lines of --file FILE; a missing, unreadable or non-UTF-8 file is a UsageError."""
    path = Path(file)
    if not path.exists():
        raise UsageError(f"--file {file}: no such file")
    if path.is_dir():
        raise UsageError(f"--file {file} is a directory, not a text file")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"--file {file}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--file {file} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # the newlines open() would see
    return [line for line in lines if line.strip()]


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
    texts = _read_lines(args.texts, args.file)
    if not texts:
        parser.error("no texts: give them as arguments, with --file, or on stdin")
    from .embedder import Embedder

    ranges = load_ranges(args.ranges)
    model = _open_model(Embedder, args)
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
    texts = _read_lines(args.texts, args.file)
    if not texts:
        parser.error("no texts: give them as arguments, with --file, or on stdin")
    from .embedder import Embedder
    from .manifest import Manifest
    from .precision import MANIFEST_KEY

    model = _open_model(Embedder, args)
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
    docs = _read_lines(args.documents, args.file)
    if not docs:
        parser.error("no documents: give them as arguments, with --file, or on stdin")
    from .reranker import Reranker

    model = _open_model(Reranker, args)
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
    from .kernel_family import FLOAT_KINDS, covered, folder_records, variant_kind
    from .manifest import Manifest
    from .resolve import resolve_model

    kwargs = model_source_kwargs(args)
    manifest = Manifest.load(resolve_model(args.model, variant=None, log=_stderr, **kwargs))
    print(f"task {manifest.task}, pooling {manifest.pooling}, normalize {manifest.normalize}, "
          f"max_length {manifest.max_length}, dim {manifest.dim}, source {manifest.source.get('model_id')}"
          + (" (random weights)" if manifest.source.get("random_weights") else ""))
    for name, v in manifest.variants.items():
        gate = "passes" if v.passes_gate() else "FAILS/unmeasured"
        kind = variant_kind(v)
        where = ", ".join(
            f"{family} {'passed' if r.get('passed') else 'FAILED'}"
            + (f" (holds on {', '.join(covered(kind, family))})" if kind not in FLOAT_KINDS and covered(kind, family) else "")
            for family, r in sorted(folder_records(v).items()))
        print(f"  {name:<8} {v.file:<22} {v.total_bytes / 1e6:8.1f} MB  gate {gate}"
              + (f"; measured on {where}" if where else ""))
    for provider, ranking in manifest.speed_ranking.items():
        print(f"  fastest on {provider}: {', '.join(ranking)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
