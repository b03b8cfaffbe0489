"""`gte-onnx bench DIR ...`: the command line of the benchmark (dispatched to main(argv) by gte_onnx.cli)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from gte_onnx.cli.errors import verb_main
from ..errors import InvalidInputError, missing_dependency
from .measure import RepeatPolicy
from .shapes import DEFAULT_SHAPES, SHORT_SKIPS, parse_shapes

EPILOG = """\
examples:
  gte-onnx bench ./gte-onnx-model --short
  gte-onnx bench ./gte-onnx-model --threads 2 --torch auto --json bench.json --plot bench.png
  gte-onnx bench ./gte-onnx-model --variants fp32,int8 --shapes 32x128 --record
  gte-onnx bench ./gte-onnx-model --corpus cisi --short
  gte-onnx bench ./gte-onnx-model --torch auto --peers optimum,openvino --fidelity
  gte-onnx bench ./gte-onnx-model --short --twins            # is the schedule fair? the twins should agree
"""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gte-onnx bench",
        description="Measure a model folder's variants (and optionally PyTorch) on fixed shapes or a corpus: "
                    "latency median/p95, throughput, peak RSS per variant process, load time, file size, "
                    "recorded fidelity.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", metavar="MODEL", help="a gte-onnx model folder, or a hub id / folder that "
                   "gte-onnx converts or imports (see --source)")
    p.add_argument("--variants", type=_csv, help="comma-separated variant names (default: every variant "
                   "meant for the provider)")
    p.add_argument("--shapes", help=f"comma-separated BxL shapes (default: {','.join(DEFAULT_SHAPES)}; "
                   f"--short drops {','.join(SHORT_SKIPS)} unless listed here)")
    p.add_argument("--providers", type=_csv, default=["cpu"], help="execution providers, e.g. cpu,cuda (default cpu)")
    p.add_argument("--threads", type=int, help="intra-op threads for ONNX Runtime and PyTorch (default: "
                   "physical cores)")
    p.add_argument("--torch", metavar="MODEL", help="also time PyTorch fp32 (sdpa) and bf16 autocast: 'auto' "
                   "(the model the folder was exported from), a hub id, a checkpoint folder or random:<model>")
    p.add_argument("--torch-dtypes", type=_csv, default=["fp32", "bf16"], help="PyTorch baselines to run "
                   "(default fp32,bf16)")
    p.add_argument("--corpus", metavar="cisi|FILE", help="also embed a real corpus end to end with "
                   "Embedder.encode: 'cisi' or a text file (one document per line, or .jsonl with 'text')")
    p.add_argument("--corpus-limit", type=int, help="embed only the first N documents (--short default: 128)")
    p.add_argument("--batch-size", type=int, default=32, help="encode batch size in corpus mode (default 32)")
    p.add_argument("--short", action="store_true", help="fewer repeats and no 1x8192 unless asked "
                   "(under 5 minutes on the full-size gte, 2 cores)")
    p.add_argument("--warmups", type=int, help="exact warm-up runs per cell (default: adaptive)")
    p.add_argument("--repeats", type=int, help="exact timed runs per cell (default: adaptive)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic token ids (default 0)")
    p.add_argument("--peers", metavar="LIST", help="also build and time other engines from the same "
                   "checkpoint (--torch's model, default auto): optimum (plain ONNX export fp32 + dynamic int8), "
                   "openvino (default precision + NNCF int8), llamacpp (GGUF f16, q8_0, q4_k_m via llama-cpp-python), "
                   "hub (transformers.js' fp16/int8/uint8/quantized/q4/q4f16/bnb4 files on our runtime), or "
                   "single peers such as openvino-int8; needs the [peers] extra (and [llamacpp] for llamacpp)")
    p.add_argument("--peers-cache", metavar="DIR", help="where built peers are kept between runs (default "
                   "~/.cache/gte-onnx/bench-peers)")
    p.add_argument("--peers-calibration", type=int, default=300, metavar="N", help="calibration texts of "
                   "the OpenVINO NNCF int8 peer (default 300, as sentence-transformers)")
    p.add_argument("--fidelity", action="store_true", help="measure every contender's pooled outputs on the "
                   "parity probe texts against PyTorch fp32 (max |diff|, centred cosine); needs --torch")
    p.add_argument("--twins", nargs="?", const="best", metavar="NAME", help="run one contender twice, as two "
                   "workers, and report the twins' median ratio per shape (a check of the schedule's fairness; "
                   "default: the variant variant='auto' would pick)")
    p.add_argument("--gap", type=float, default=0.25, metavar="SECONDS", help="idle pause before every "
                   "timed run, so that nothing the previous call left running is timed (default 0.25)")
    p.add_argument("--spinning", choices=("stop", "off", "on"), default="stop", help="worker thread pools: "
                   "'stop' spins during a run only (default), 'off' never, 'on' is ONNX Runtime's default "
                   "(spinning on after a run, onto the next contender's cores)")
    p.add_argument("--schedule-seed", type=int, help="seed of the random order of each round (default: --seed)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one call may take before its "
                   "worker is stopped (default 1800)")
    p.add_argument("--json", metavar="OUT", help="write the full record (machine, settings, samples) as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="write a PNG of speed vs fidelity, the Pareto front marked "
                   "(needs matplotlib)")
    p.add_argument("--quality", metavar="JSON", help="with --plot: a second panel against each form's real-weights "
                   "STS-B drop, from dev/peer_data_fidelity.py --json on all-MiniLM-L6-v2")
    p.add_argument("--record", action="store_true", help="write the measured speed ranking into the "
                   "manifest's speed_ranking (used by variant='auto')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    from gte_onnx.cli.options import add_model_source_options

    add_model_source_options(p)
    return p


def config_from_args(args: argparse.Namespace, argv: Sequence[str]):
    from .measure import FULL_POLICY, SHORT_POLICY
    from .peers import parse_peers
    from .runner import BenchConfig

    for name in ("threads", "corpus_limit", "warmups", "repeats", "batch_size", "peers_calibration"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmups" else 1):
            raise InvalidInputError(f"--{name.replace('_', '-')} must be at least {0 if name == 'warmups' else 1}")
    if args.timeout <= 0:
        raise InvalidInputError("--timeout must be positive")
    if args.gap < 0:
        raise InvalidInputError("--gap must be >= 0 seconds")
    policy = None
    if args.warmups is not None or args.repeats is not None:
        base = SHORT_POLICY if args.short else FULL_POLICY
        warm = base.min_warmups if args.warmups is None else args.warmups
        reps = args.repeats
        min_reps = reps if reps is not None else base.min_repeats
        policy = RepeatPolicy(
            min_warmups=warm,
            max_warmups=warm if args.warmups is not None else base.max_warmups,
            warmup_budget_s=base.warmup_budget_s,
            min_repeats=min_reps,
            max_repeats=reps if reps is not None else base.max_repeats,
            budget_s=base.budget_s,
            heavy_min_repeats=min(base.heavy_min_repeats, min_reps),  # --repeats 1 is a valid request
        )
    from gte_onnx.cli.options import model_source_kwargs
    from gte_onnx.sources.resolve import resolve_model

    folder = resolve_model(args.folder, variant="all", **model_source_kwargs(args))
    return BenchConfig(
        folder=folder,
        variants=args.variants or None,
        providers=args.providers or ["cpu"],
        shapes=parse_shapes(args.shapes) if args.shapes else None,
        threads=args.threads,
        torch=args.torch,
        torch_dtypes=args.torch_dtypes,
        corpus=args.corpus,
        corpus_limit=args.corpus_limit,
        batch_size=args.batch_size,
        short=args.short,
        policy=policy,
        seed=args.seed,
        call_timeout_s=args.timeout,
        gap_s=args.gap,
        spinning=args.spinning,
        schedule_seed=args.schedule_seed,
        twins=args.twins,
        peers=parse_peers(args.peers),
        peers_cache=args.peers_cache,
        peers_calibration=args.peers_calibration,
        fidelity=args.fidelity,
        progress=not args.no_progress,
        command="gte-onnx bench " + shlex.join(list(argv)),
    )


@verb_main
def main(argv: Sequence[str]) -> int:
    """Entry point of `gte-onnx bench`. 0: every cell measured; 1: some failed; 2: bad input (the shared CLI
    policy of gte_onnx.cli.errors reports it)."""
    argv = list(argv)
    args = build_parser().parse_args(argv)
    from gte_onnx.inference.speed_ranking import record_ranking
    from .report import format_report, plot, write_json
    from .runner import run_bench

    config = config_from_args(args, argv)
    if args.plot:
        try:
            import matplotlib  # noqa: F401 - fail before a long run, not after it
        except ImportError:
            raise missing_dependency("matplotlib", "bench", "gte-onnx bench --plot") from None
    result = run_bench(config)
    print(format_report(result))
    twins = result.get("twins")
    if twins and twins["outside"]:
        print(f"gte-onnx bench: warning: the twins {twins['of']} and {twins['twin']} differ by more than "
              f"5% at {', '.join(twins['outside'])}: this run's small ratios are not trustworthy",
              file=sys.stderr)
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    if args.plot:
        quality = json.loads(Path(args.quality).read_text(encoding="utf-8")) if args.quality else None
        print(f"wrote {plot(result, args.plot, quality)}")
    if args.record:
        updated = record_ranking(config.folder, result["ranking"])
        for provider, names in result["ranking"].items():
            if names:
                print(f"recorded speed_ranking[{provider}] = {list(updated.speed_ranking[provider])}")
    # A peer that failed is reported, not a failure of the run: it is someone else's engine.
    failed = [r for r in result["results"] if r["error"] is not None and r["kind"] != "peer"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
