"""`gte-onnx export MODEL OUT_DIR`."""

from __future__ import annotations

import argparse
import json
import sys

from ..clierrors import verb_main
from .validate import DEFAULT_ATOL, DEFAULT_LENGTHS


@verb_main
def main(argv: list[str]) -> int:
    """Entry point of `gte-onnx export`; failures are reported by the shared CLI policy (gte_onnx.clierrors)."""
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
    parser.add_argument("--validate-lengths", default=",".join(map(str, DEFAULT_LENGTHS)),
                        help="comma-separated probe lengths (add 8192 for the full check; it is slow on CPU)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    parser.add_argument("--attention", choices=("auto", "naive"), default="auto",
                        help="naive exports transformers' attention as is (for comparison only)")
    args = parser.parse_args(argv)
    try:
        overrides = json.loads(args.config_overrides) if args.config_overrides else None
    except ValueError as exc:
        parser.error(f"--config-overrides is not JSON: {exc}")
    if overrides is not None and not isinstance(overrides, dict):
        parser.error('--config-overrides must be a JSON object, e.g. \'{"num_hidden_layers": 2}\'')
    try:
        lengths = [int(x) for x in args.validate_lengths.split(",") if x.strip()]
    except ValueError as exc:
        parser.error(f"--validate-lengths takes comma-separated integers: {exc}")
    if not lengths or min(lengths) < 1:
        parser.error("--validate-lengths needs at least one length, each >= 1")
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
        validate_lengths=lengths,
        atol=args.atol,
        attention=args.attention,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    return 0
