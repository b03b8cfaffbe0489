"""`gte-onnx quantize DIR --variants fp16,int8,q4`: the command line of gte_onnx.quantize."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gte_onnx.cli.errors import verb_main
from gte_onnx.errors import GteOnnxError, UsageError

EPILOG = """examples:
  gte-onnx quantize ./gte-modernbert-base-onnx                      # fp16, int8, q4
  gte-onnx quantize ./gte-modernbert-base-onnx --variants int8 --rank
  gte-onnx quantize ./minilm-onnx --variants int8 --int8-method static --eval full

Each variant is written beside model.onnx and recorded in gte-onnx.json with its recipe and its fidelity
against the fp32 model (probe set; STS-B and CISI too when the model has real weights). The command exits
with 1 when a variant fails its fidelity gate (it is still recorded, and variant="auto" will skip it).
"""


def build_parser() -> argparse.ArgumentParser:
    from .build import DEFAULT_VARIANTS, EVALUATIONS, VARIANTS
    from .int8 import ATTENTION_FORMS, METHODS, PER_TOKEN_KERNELS, Int8Options
    from .q4 import ACCURACY_LEVELS, BLOCK_SIZES, ROUNDINGS, Q4Options

    p = argparse.ArgumentParser(
        prog="gte-onnx quantize",
        description="Add fp16 / int8 / q4 variants to an exported model folder, each measured against fp32.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", help="model folder made by `gte-onnx export` (holds gte-onnx.json and model.onnx)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: %(default)s)")
    p.add_argument("--eval", dest="evaluation", choices=EVALUATIONS, default="auto",
                   help="fidelity measurement: probe set only, full (+ STS-B and CISI), auto (full when the "
                        "model has real weights), none (the variant is recorded untrusted)")
    p.add_argument("--threads", type=int, default=None, help="threads for the fidelity runs (default: physical cores)")
    p.add_argument("--gate", action="append", default=[], metavar="FIGURE=LIMIT",
                   help="override a gate limit, e.g. --gate sts_drop=0.5 or --gate cisi_ndcg_drop=off")
    p.add_argument("--rank", action="store_true",
                   help="afterwards, measure every variant's speed on the CPU and record the manifest's "
                        "speed_ranking (what variant='auto' reads)")
    g = p.add_argument_group("int8")
    g.add_argument("--int8-method", choices=METHODS, default="dynamic")
    g.add_argument("--no-per-channel", action="store_true", help="one weight scale per tensor (less faithful)")
    g.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights, for AVX2 CPUs without VNNI (avoids u8 x s8 saturation)")
    g.add_argument("--per-token-roles", default=",".join(Int8Options.per_token_roles), metavar="ROLES",
                   help="layers whose activations are quantized per token instead of per tensor: "
                        "comma-separated from square, expand, contract, or 'none' (default: %(default)s)")
    g.add_argument("--per-token-kernel", choices=PER_TOKEN_KERNELS, default=Int8Options.per_token_kernel,
                   help="integer: per-token scales + integer GEMM; nbits: 8-bit MatMulNBits at accuracy level 4, "
                        "blocks of 128 (default: %(default)s)")
    g.add_argument("--smooth-alpha", type=float, default=None,
                   help="apply SmoothQuant with this alpha before quantizing (off by default)")
    g.add_argument("--int8-attention", choices=ATTENTION_FORMS, default=Int8Options.attention,
                   help="plain: attention as plain ops, the same vectors on every x86 CPU (default); "
                        "fused: ORT's attention kernels, faster on long inputs on this CPU family only")
    g.add_argument("--int8-table-bits", type=int, choices=(4, 8), default=Int8Options.embedding_bits,
                   help="bits of the token embedding table in the int8 file (default: %(default)s)")
    g = p.add_argument_group("q4")
    g.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=Q4Options.block_size)
    g.add_argument("--accuracy-level", type=int, choices=ACCURACY_LEVELS, default=Q4Options.accuracy_level)
    g.add_argument("--symmetric", action="store_true", help="4-bit weights without zero points")
    g.add_argument("--q4-8bit-roles", default=",".join(Q4Options.int8_roles) or "none", metavar="ROLES",
                   help="layers given 8-bit weights in the q4 file: comma-separated from square, expand, "
                        "contract, or 'none' (default: %(default)s)")
    g.add_argument("--no-awq", action="store_true", help="no activation-aware scales before rounding")
    g.add_argument("--rounding", choices=ROUNDINGS, default=Q4Options.rounding,
                   help="gptq: error-feedback rounding on real-text Hessians; rtn: round to nearest "
                        "(default: %(default)s)")
    g.add_argument("--q4-table-bits", type=int, choices=(4, 8), default=Q4Options.embedding_bits,
                   help="bits of the token embedding table in the q4 file (default: %(default)s)")
    g = p.add_argument_group("both")
    g.add_argument("--min-weight-elements", type=int, default=None,
                   help="weights with fewer elements stay in float (default: 4096)")
    g.add_argument("--float-embeddings", action="store_true", help="keep the embedding table in float32")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def _roles(text: str) -> tuple[str, ...]:
    """'expand,contract' -> ('expand', 'contract'); 'none' or '' -> ()."""
    names = tuple(r.strip() for r in text.split(",") if r.strip())
    return () if names in ((), ("none",)) else names


def _options(args):
    """QuantizeOptions from the parsed arguments; a bad value is a UsageError naming the option."""
    from gte_onnx.parity.gates import parse_overrides

    from .build import QuantizeOptions
    from .graph import MIN_WEIGHT_ELEMENTS
    from .int8 import Int8Options
    from .q4 import Q4Options

    min_elements = args.min_weight_elements if args.min_weight_elements is not None else MIN_WEIGHT_ELEMENTS
    if min_elements < 1:
        raise UsageError("--min-weight-elements must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be >= 1")
    try:
        return QuantizeOptions(
            int8=Int8Options(method=args.int8_method, per_channel=not args.no_per_channel,
                             reduce_range=args.reduce_range, min_weight_elements=min_elements,
                             quantize_embeddings=not args.float_embeddings,
                             per_token_roles=_roles(args.per_token_roles),
                             per_token_kernel=args.per_token_kernel, smooth_alpha=args.smooth_alpha,
                             embedding_bits=args.int8_table_bits, attention=args.int8_attention),
            q4=Q4Options(block_size=args.block_size, accuracy_level=args.accuracy_level, symmetric=args.symmetric,
                         min_weight_elements=min_elements, quantize_embeddings=not args.float_embeddings,
                         int8_roles=_roles(args.q4_8bit_roles), activation_aware=not args.no_awq,
                         rounding=args.rounding, embedding_bits=args.q4_table_bits),
            evaluation=args.evaluation,
            threads=args.threads,
            gate_overrides=parse_overrides(args.gate),
        )
    except ValueError as exc:  # the options' own checks (roles, gate overrides, ...)
        if isinstance(exc, GteOnnxError):
            raise
        raise UsageError(str(exc)) from None


@verb_main
def main(argv: Sequence[str]) -> int:
    """Entry point of `gte-onnx quantize`; errors are reported by the shared CLI policy (gte_onnx.cli.errors)."""
    args = build_parser().parse_args(list(argv))
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    from .build import parse_variants, quantize_folder

    options = _options(args)
    try:
        names = parse_variants(args.variants)
    except ValueError as exc:
        raise UsageError(f"--variants: {exc}") from None
    try:
        manifest = quantize_folder(args.folder, names, options, log)
    except ValueError as exc:  # the recipe does not fit this model (no weight large enough, table width...)
        if isinstance(exc, GteOnnxError):
            raise
        raise UsageError(f"cannot quantize {args.folder}: {exc}") from exc
    if args.rank:
        from gte_onnx.inference.speed_ranking import rank_variants

        log("ranking the variants' speed on the CPU")
        rank_variants(args.folder, threads=args.threads, record=True, log=log)
    failed = [n for n in names if manifest.variants[n].fidelity and not manifest.variants[n].passes_gate()]
    if failed:
        print(f"gte-onnx quantize: variant(s) {', '.join(failed)} failed their fidelity gate; recorded, "
              "but variant='auto' will not pick them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
