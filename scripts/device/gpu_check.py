"""The GPU check of issue 9, one phase per process (gpu_check.sh runs them in order on the lent machine).

  prep     export the full-size synthetic gte, make fp16/q4f16, PyTorch fp32 reference and fp32/fp16/bf16
           timings (PyTorch + the image's CPU onnxruntime; cached in the state folder between calls)
  install  onnxruntime-gpu from the carried payload, replacing the CPU wheel (device only)
  ort      the torch-free runtime on CUDA: provider errors, parity, NaN at 8192, timings
  report   the table, and gpu_check.json under $OUT

--cpu-dry-run runs the same stages on this machine: tiny model, CPU execution provider, short inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from checkkit import Run, Settings
from sources import use_sources

PHASES = ("prep", "install", "ort", "report")


def parse_args(argv: list[str] | None) -> tuple[str, Settings]:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=PHASES, required=True)
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny model on the CPU EP: exercises the logic without a GPU")
    parser.add_argument("--state", default=None, help="working folder kept between calls (default /tmp/gte-device)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "device-out", help="where gpu_check.json goes ($OUT)")
    parser.add_argument("--payload", default="slim", help="payload flavour the install phase uses (slim|full)")
    parser.add_argument("--shapes", help="comma-separated BxL, default 32x128,8x512,1x8192")
    parser.add_argument("--variants", help="comma-separated variants beside fp32, default fp16,q4f16")
    parser.add_argument("--config-overrides", help="JSON config overrides for the synthetic model")
    args = parser.parse_args(argv)
    changes: dict = {"out": args.out, "payload": args.payload}
    if args.state:
        changes["state"] = args.state
    if args.shapes:
        changes["shapes"] = tuple(s.strip() for s in args.shapes.split(",") if s.strip())
    if args.variants is not None:
        changes["variants"] = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    if args.config_overrides:
        changes["config_overrides"] = json.loads(args.config_overrides)
    settings = Settings.dry(**changes) if args.cpu_dry_run else Settings(**changes)
    return args.phase, settings


def main(argv: list[str] | None = None) -> int:
    phase, settings = parse_args(argv)
    Path(settings.state).mkdir(parents=True, exist_ok=True)
    use_sources(Path(settings.state) / "src")  # this checkout's gte_onnx, no pip install needed
    if phase == "report":
        from report import run_report

        return run_report(settings)
    run = Run(phase, settings)
    try:
        if phase == "prep":
            from prep_stages import run_prep

            run_prep(run)
        elif phase == "install":
            from install_stages import run_install

            run_install(run)
        else:
            from ort_stages import run_ort

            run_ort(run)
    finally:
        run.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
