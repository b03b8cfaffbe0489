"""The option groups and input readers the runtime's verbs share (embed, calibrate, rerank, embed-corpus,
serve, bench): one definition of each flag and its default."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gte_onnx.errors import UsageError
from gte_onnx import defaults

# ---- shared option groups ---------------------------------------------------------------------------
def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", default="auto", help="variant name (fp32, int8, q4, ...) or auto")
    parser.add_argument("--providers", default=None, help="comma-separated, e.g. cpu or cuda,cpu")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-batch-tokens", type=int, default=defaults.MAX_BATCH_TOKENS)
    parser.add_argument("--truncate", choices=("end", "start", "error"), default="end")
    add_model_source_options(parser)


def add_model_source_options(parser: argparse.ArgumentParser) -> None:
    """How a hub id or a non-gte-onnx folder becomes a model folder (see gte_onnx.sources.resolve)."""
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
    from gte_onnx.precision import PRECISIONS

    parser.add_argument(flag, dest="precision", choices=PRECISIONS, default="float32",
                        help="output vectors: float32 (default), int8/uint8 (per-dimension buckets of calibration "
                        "ranges), binary/ubinary (signs packed into dim/8 bytes); see docs/precision.md")
    parser.add_argument("--ranges", dest="ranges", default=None, metavar="FILE",
                        help="int8/uint8 ranges JSON (from `gte-onnx calibrate`); default: those recorded in the "
                        "model folder")


def load_ranges(path: str | None):
    from gte_onnx.precision import CalibrationRanges

    return None if path is None else CalibrationRanges.load(path)


def open_model(cls, args: argparse.Namespace):
    """Embedder or Reranker as the runtime and model-source options ask."""
    return cls(args.model, args.variant, providers_arg(args.providers), args.threads, args.max_batch_tokens,
               args.truncate, **model_source_kwargs(args))


def stderr(message: str) -> None:
    print(message, file=sys.stderr)


def providers_arg(value: str | None):
    return None if value is None else [p.strip() for p in value.split(",") if p.strip()]


def read_lines(items: list[str], file: str | None) -> list[str]:
    """Arguments win; then --file (or '-' for stdin); then stdin when it is piped."""
    if items:
        return list(items)
    if file is not None and file != "-":
        return read_text_file(file)
    if file == "-" or not sys.stdin.isatty():
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    return []


def read_text_file(file: str) -> list[str]:
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
