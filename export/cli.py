"""`gte-onnx export MODEL OUT_DIR`: with torch, the export validated against PyTorch; without torch (or with
--no-torch), the numpy converter validated against its numpy reference."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from gte_onnx.convert.validation import DEFAULT_ATOL, DEFAULT_LENGTHS, WINDOW_EDGE_LENGTHS

from gte_onnx.cli.errors import verb_main


@verb_main
def main(argv: list[str]) -> int:
    """Entry point of `gte-onnx export`; failures are reported by the shared CLI policy (gte_onnx.cli.errors)."""
    parser = argparse.ArgumentParser(
        prog="gte-onnx export",
        description="Export a transformers checkpoint (hub id or local folder, safetensors) to a validated "
        "fp32 ONNX model folder with a gte-onnx.json manifest.",
    )
    parser.add_argument("model", help="hub id (e.g. Alibaba-NLP/gte-modernbert-base) or local folder")
    parser.add_argument("out_dir")
    parser.add_argument("--random-weights", action="store_true",
                        help="build the architecture from MODEL's config with seeded random weights (offline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-checkpoint", metavar="DIR", help="also write the PyTorch checkpoint here")
    parser.add_argument("--config-overrides", metavar="JSON", help='e.g. \'{"num_hidden_layers": 2}\'')
    parser.add_argument("--task", choices=("embedding", "rerank"), help="default: from the config's architectures")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pytorch_model.bin (pickle can run code: only for trusted sources)")
    parser.add_argument("--validate-lengths", default=None,
                        help="comma-separated probe lengths (default: %s with torch, %s without; add 8192 "
                             "for the full check, it is slow on CPU)" % (",".join(map(str, DEFAULT_LENGTHS)),
                                                                          ",".join(map(str, WINDOW_EDGE_LENGTHS))))
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    parser.add_argument("--attention", choices=("auto", "naive"), default="auto",
                        help="naive exports transformers' attention as is (for comparison only)")
    parser.add_argument("--no-torch", action="store_true",
                        help="convert with numpy alone and validate against the numpy reference (the default "
                             "when torch or transformers is not installed); ModernBERT and BERT only")
    args = parser.parse_args(argv)
    try:
        overrides = json.loads(args.config_overrides) if args.config_overrides else None
    except ValueError as exc:
        parser.error(f"--config-overrides is not JSON: {exc}")
    if overrides is not None and not isinstance(overrides, dict):
        parser.error('--config-overrides must be a JSON object, e.g. \'{"num_hidden_layers": 2}\'')
    lengths = None
    if args.validate_lengths:
        try:
            lengths = [int(x) for x in args.validate_lengths.split(",") if x.strip()]
        except ValueError as exc:
            parser.error(f"--validate-lengths takes comma-separated integers: {exc}")
        if not lengths or min(lengths) < 1:
            parser.error("--validate-lengths needs at least one length, each >= 1")
    if args.no_torch or not torch_available():
        return convert_main(parser, args, lengths)
    from .onnx_export import export_model

    export_model(
        args.model,
        args.out_dir,
        random_weights=args.random_weights,
        seed=args.seed,
        config_overrides=overrides,
        task=args.task,
        save_checkpoint_dir=args.save_checkpoint,
        revision=args.revision,
        allow_pickle=args.allow_pickle,
        validate_lengths=lengths or DEFAULT_LENGTHS,
        atol=args.atol,
        attention=args.attention,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    return 0


def torch_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def convert_main(parser: argparse.ArgumentParser, args, lengths) -> int:
    """The torch-free path: a local checkpoint folder or a hub id (safetensors), converted with numpy."""
    torch_only = {"--random-weights": args.random_weights, "--save-checkpoint": args.save_checkpoint,
                  "--config-overrides": args.config_overrides, "--attention naive": args.attention == "naive",
                  "--allow-pickle": args.allow_pickle}
    used = [name for name, value in torch_only.items() if value]
    if used:
        reason = "--no-torch was given" if args.no_torch else "torch and transformers are not installed"
        parser.error(f"{', '.join(used)} need PyTorch, but {reason} (pip install 'gte-onnx[export]')")
    from gte_onnx.convert.converter import convert_fp32

    from .checkpoint import locate

    folder, model_id, revision = locate(args.model, args.revision, need_weights=True)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    log(f"converting {args.model} without torch")
    convert_fp32(Path(folder), Path(args.out_dir), model_id=model_id, revision=revision,
                 log=log, task=args.task, validate_lengths=lengths or WINDOW_EDGE_LENGTHS, atol=args.atol)
    return 0
