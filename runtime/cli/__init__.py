"""`gte-onnx <verb>`: one entry point. Each verb lives with its stage and is imported only when called,
so `gte-onnx embed` never loads torch, and `gte-onnx export` loads it only when it is installed."""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Sequence

from gte_onnx.cli.errors import debug_mode, one_line, run_verb, take_debug_flag
from gte_onnx.errors import MissingDependencyError

# verb -> ("module:function", one-line help). The function takes argv (after the verb) and returns an exit code.
VERBS: dict[str, tuple[str, str]] = {
    "export": ("gte_onnx.export.cli:main", "checkpoint -> validated ONNX model folder (torch-free with --no-torch)"),
    "quantize": ("gte_onnx.quantize.cli:main", "add fp16 / int8 / q4 variants to a model folder [quantize]"),
    "embed": ("gte_onnx.cli.verbs:embed_main", "embed texts with a model folder"),
    "embed-corpus": ("gte_onnx.corpus.cli:main", "embed a corpus file into resumable Parquet shards [corpus]"),
    "calibrate": ("gte_onnx.cli.verbs:calibrate_main", "int8/uint8 output ranges from sample texts; --record keeps them in the folder"),
    "rerank": ("gte_onnx.cli.verbs:rerank_main", "score documents against a query with a reranker folder"),
    "reference": ("gte_onnx.parity.cli:reference_main", "PyTorch reference outputs for parity [parity]"),
    "parity": ("gte_onnx.parity.cli:parity_main", "fidelity report of each variant against a reference"),
    "verify": ("gte_onnx.quantize.verify:main", "measure quantized variants' gates on this CPU's family [quantize]"),
    "bench": ("gte_onnx.bench.cli:main", "benchmark variants x providers x shapes [bench]"),
    "serve": ("gte_onnx.server.main:main", "HTTP server: OpenAI, TEI and Cohere APIs [server]"),
    "info": ("gte_onnx.cli.verbs:info_main", "print a model folder's manifest summary"),
    "import": ("gte_onnx.pipeline:import_main", "a repo's own ONNX files (transformers.js, optimum) -> model folder"),
    "doctor": ("gte_onnx.cli.doctor:main", "onnxruntime wheels, providers, CUDA libraries, CPU flags; auto's pick"),
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
        from gte_onnx.defaults import VERSION

        print(VERSION)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}; one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    target = VERBS[verb][0]
    with debug_mode(debug):
        return run_verb(lambda args: _load(verb, target)(args), rest, _install_hint(target))
