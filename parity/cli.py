"""`gte-onnx reference` and `gte-onnx parity`.

Exit codes: 0 every gate passed; 1 a gate failed; 2 bad usage or input (argparse, typed errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gte_onnx.cli.errors import verb_main
from gte_onnx.errors import GteOnnxError, UsageError


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _read_texts(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--texts {path}: no such file")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UsageError(f"--texts {path} is not UTF-8 text: {exc}") from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise UsageError(f"--texts {path} holds no non-empty line")
    return texts


# ---- reference --------------------------------------------------------------------------------------------
@verb_main
def reference_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gte-onnx reference",
        description="Run the PyTorch model over the probe set (window edges, code, numbers, non-English, "
        "near-duplicates, the model card's texts) and save texts, token ids, outputs and provenance to .npz.",
    )
    parser.add_argument("model", help="hub id or local checkpoint folder (the one you exported)")
    parser.add_argument("--out", required=True, help="where to write the reference (.npz)")
    parser.add_argument("--texts", metavar="FILE", help="add these texts, one per line (rerank: query<TAB>document)")
    parser.add_argument("--long", action="store_true",
                        help="add long probes up to the max length (8192 tokens takes ~1 min per text on CPU)")
    parser.add_argument("--random-weights", action="store_true",
                        help="the seeded random model `gte-onnx export --random-weights` builds (same seed/overrides)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-overrides", metavar="JSON", help="as given to export")
    parser.add_argument("--task", choices=("embedding", "rerank"))
    parser.add_argument("--backend", choices=("auto", "sentence-transformers", "transformers"), default="auto",
                        help="auto: sentence-transformers when the folder has modules.json and real weights")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        overrides = json.loads(args.config_overrides) if args.config_overrides else None
    except json.JSONDecodeError as exc:
        parser.error(f"--config-overrides is not JSON: {exc}")
    if overrides is not None and not isinstance(overrides, dict):
        parser.error("--config-overrides must be a JSON object")
    texts = _read_texts(args.texts) if args.texts else None
    from .reference import compute_reference

    try:
        compute_reference(
            args.model, args.out, args.random_weights, args.seed, overrides, args.task, texts, args.long,
            args.backend, args.threads, log=_err,
        )
    except ValueError as exc:
        if isinstance(exc, GteOnnxError):
            raise
        raise UsageError(str(exc)) from None
    return 0


# ---- parity -----------------------------------------------------------------------------------------------
@verb_main
def parity_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gte-onnx parity",
        description="Compare each variant of a model folder with a reference (from `gte-onnx reference`) and "
        "check its fidelity gate. Exit 1 when a gate fails.",
    )
    parser.add_argument("folder", help="gte-onnx model folder")
    parser.add_argument("--reference", required=True, help="reference .npz")
    parser.add_argument("--variants", help="comma-separated (default: every variant in the folder)")
    parser.add_argument("--data", action="append", default=[], metavar="sts-b|cisi|PATH",
                        help="also score STS-B Spearman / CISI nDCG@10, MRR@10 (repeatable; PATH: your copy)")
    parser.add_argument("--max-queries", type=int, default=None, help="CISI: only the first N judged queries")
    parser.add_argument("--gate", action="append", default=[], metavar="KEY=VALUE",
                        help="override a gate limit for every variant, e.g. cosine_min=0.99 or sts_drop=off")
    parser.add_argument("--json", metavar="OUT", help="write the full report as JSON ('-' for stdout)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--providers", default=None, help="comma-separated, e.g. cpu or cuda,cpu")
    args = parser.parse_args(argv)

    from .gates import parse_overrides
    from .reference import Reference
    from .report import format_table, resolve_data, run_parity

    try:
        overrides = parse_overrides(args.gate)
        for name in args.data:
            resolve_data(name)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    if args.max_queries is not None and args.max_queries < 1:
        parser.error("--max-queries must be >= 1")
    reference = Reference.load(args.reference)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None
    report = run_parity(
        args.folder, reference, variants, args.data, overrides, args.threads, providers, args.max_queries,
        log=_err,
    )
    if args.json == "-":
        print(json.dumps(report.to_json(), indent=2))
        _err(format_table(report))
    else:
        print(format_table(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
            _err(f"wrote {args.json}")
    return 0 if report.passed else 1
