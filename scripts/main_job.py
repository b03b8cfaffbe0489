"""The main job, end to end: export -> quantize -> parity -> benchmark -> embed the model card's texts.

Real weights are used when the hub answers; otherwise the job says so loudly and goes on with seeded
random weights, so every stage still runs (the similarity scores are then meaningless).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from gte_onnx.parity.probes import CARD_SCORES, CARD_TEXTS

MODEL = "Alibaba-NLP/gte-modernbert-base"


def banner(text: str) -> None:
    line = "!" * 100
    print(f"\n{line}\n!!! {text}\n{line}\n", flush=True)


def step(title: str, *argv: str) -> None:
    print(f"\n=== {title}: gte-onnx {' '.join(argv)}", flush=True)
    subprocess.run([sys.executable, "-m", "gte_onnx.cli", *argv], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out", help="working folder (default: out/)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--skip", default="", help="comma-separated stages to skip: quantize,parity,bench")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    folder = out / "gte-modernbert-base-onnx"
    checkpoint = out / "gte-modernbert-base-checkpoint"

    export = ["export", args.model, str(folder)]
    real = subprocess.run([sys.executable, "-m", "gte_onnx.cli", *export], check=False).returncode == 0
    if not real:
        banner(
            f"COULD NOT EXPORT THE REAL {args.model} WEIGHTS (offline?). FALLING BACK TO --random-weights: "
            "the pipeline runs, but the similarity scores below are NOT the model card's."
        )
        step("export (synthetic)", *export, "--random-weights", "--save-checkpoint", str(checkpoint))

    reference_source = args.model if real else str(checkpoint)
    if "quantize" not in skip:
        # Variants with their fidelity measured against fp32, and the CPU speed ranking variant="auto" reads.
        step("quantize", "quantize", str(folder), "--variants", "fp16,int8,q4", "--rank")
    if "parity" not in skip:
        ref = out / "reference.npz"
        step("reference", "reference", reference_source, "--out", str(ref))
        parity = subprocess.run(
            [sys.executable, "-m", "gte_onnx.cli", "parity", str(folder), "--reference", str(ref),
             "--json", str(out / "parity.json")], check=False,
        )
        if parity.returncode == 1:
            print("parity: at least one variant FAILS its gate (see the table); variant='auto' will not pick it")
        elif parity.returncode != 0:
            raise SystemExit(parity.returncode)
    if "bench" not in skip:
        step("benchmark", "bench", str(folder), "--short", "--torch", reference_source,
             "--json", str(out / "bench.json"))

    from gte_onnx import Embedder

    model = Embedder(folder)
    vectors = model.encode(list(CARD_TEXTS))
    scores = (100 * vectors[:1] @ vectors[1:].T).tolist()
    print(f"\nmodel card example ({'real weights' if real else 'RANDOM WEIGHTS'}, variant {model.variant}):")
    print(f"scores = {[[round(s, 2) for s in scores[0]]]}")
    if real:
        print(f"card   = {[[round(s, 2) for s in CARD_SCORES]]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
