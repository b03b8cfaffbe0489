"""Fidelity of fp32 / int8 / q4 on every emulated CPU family against this CPU's vectors (docs/cpu-support.md).

    python dev/cpu_families.py MODEL=FOLDER [MODEL=FOLDER ...] [--pairs 200] [--cisi-docs 50]
        [--families x86-avx2,arm64,arm64-dot] [--x86-float-pairs 20]

Each FOLDER needs fp32, int8 and q4 variants (gte-onnx export + gte-onnx quantize). The first --pairs STS-B test
pairs are embedded natively and under each family (scripts/setup-emulation.sh builds the emulators; emulated
speed means nothing, the arithmetic is faithful). Printed per model, variant and family: max |diff| of the
normalised vectors to this CPU's, the mean centred cosine to this CPU's fp32, and the STS-B Spearman drop
(x100) against this CPU's fp32 on those pairs. One markdown table on stdout. x86 float GEMMs crawl under
qemu-x86_64 (softfloat), so there MiniLM-sized fp32 and q4 runs take only --x86-float-pairs pairs (n says).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gte_onnx.inference.kernel_family import detect_family
from gte_onnx.parity.datasets import load_cisi, load_sts_b
from gte_onnx.parity.metrics import centred_cosine_rows, spearman

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "quantize" / "emulated" / "vectors.py"
VARIANTS = ("fp32", "int8", "q4")


def _emulation():
    spec = importlib.util.spec_from_file_location("gte_onnx_emulation", ROOT / "scripts" / "emulation" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _sts(vectors: np.ndarray, gold: np.ndarray) -> float:
    a, b = vectors[0::2], vectors[1::2]
    return 100 * spearman(gold, (a * b).sum(axis=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", metavar="MODEL=FOLDER")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--families", default="x86-avx2,arm64,arm64-dot")
    parser.add_argument("--cisi-docs", type=int, default=50)
    parser.add_argument("--x86-float-pairs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="threads per run (1: spinning threads crawl under qemu)")
    args = parser.parse_args(argv)
    folders = dict(item.split("=", 1) for item in args.models)
    s1, s2, gold = load_sts_b("test")
    texts = [t for pair in zip(s1[: args.pairs], s2[: args.pairs]) for t in pair]
    gold = gold[: args.pairs]
    docs = list(load_cisi().documents.values())[: args.cisi_docs]
    n_sts = len(texts)
    emu = _emulation()
    work = Path(tempfile.mkdtemp(prefix="cpu-families-"))
    def spec(family: str) -> Path:
        limits = {}
        if family.startswith("x86") and family != native:
            small = 2 * args.x86_float_pairs
            limits = {f"{m}/{v}": small for m in folders for v in ("fp32", "q4") if m != "tiny"}
        path = work / f"spec-{family}.json"
        path.write_text(json.dumps({"folders": folders, "variants": list(VARIANTS), "texts": texts + docs,
                                    "alone": 0, "threads": args.threads, "limits": limits}))
        return path

    wheel_dir = work / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheel_dir), str(ROOT)],
                   check=True, capture_output=True)
    site = emu.install_wheel(next(wheel_dir.glob("gte_onnx-*.whl")))

    runs = {}
    native = detect_family()
    subprocess.run([sys.executable, str(CHILD), str(spec(native)), str(work / "native.npz")], check=True)
    runs[native + " (native)"] = _load(work / "native.npz")
    for family in args.families.split(","):
        started = time.perf_counter()
        out = work / f"{family}.npz"
        result = emu.run_python(family, [str(CHILD), str(spec(family)), str(out)],
                                extra_pythonpath=[site] if family.startswith("arm") else [], timeout=None)
        if result.returncode != 0:
            print(f"{family}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
            continue
        runs[family] = _load(out)
        print(f"{family}: {time.perf_counter() - started:.0f} s emulated", file=sys.stderr)

    reference = runs[native + " (native)"]
    print(f"STS-B test, first {args.pairs} pairs, and {len(docs)} CISI documents; reference: this CPU ({native}); "
          "vectors normalised; n = texts compared\n")
    print("| model | variant | family | route | n | max abs diff to native: STS-B / CISI | centred cosine to fp32 "
          "| STS-B x100 | drop |")
    print("|---|---|---|---|--:|--:|--:|--:|--:|")
    for model in folders:
        fp32 = reference[f"{model}/fp32/batch"]
        for variant in VARIANTS:
            key = f"{model}/{variant}/batch"
            for family, arrays in runs.items():
                meta = json.loads(str(arrays["meta"]))
                vectors = arrays[key]
                n = len(vectors)
                diff = np.abs(vectors - reference[key][:n]).max(axis=1)
                on_docs = f"{diff[n_sts:].max():.1e}" if n > n_sts else "-"
                pairs = min(n, n_sts) // 2
                sts = "- | -"  # too few pairs for a rank correlation (x86 float runs under --x86-float-pairs)
                if pairs >= 10:
                    score = _sts(vectors[: 2 * pairs], gold[:pairs])
                    sts = f"{score:.2f} | {_sts(fp32[: 2 * pairs], gold[:pairs]) - score:+.2f}"
                print(f"| {model} | {variant} | {family} | {meta['routes'][f'{model}/{variant}']} | {n} | "
                      f"{diff[:n_sts].max():.1e} / {on_docs} | {centred_cosine_rows(fp32[:n], vectors).mean():.5f} | "
                      f"{sts} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
