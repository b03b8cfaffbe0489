"""Cold start of the runtime: import + load + first embedding of one short text, each in a fresh process.

    python dev/cold_start.py MODEL_DIR --variant int8 [--runs 5]

Prints the median of each stage over `runs` fresh interpreters (the first run also fills the
verified-file cache; the medians are of the later runs, as a user's second start would see).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from gte_onnx import Embedder
import onnxruntime, tokenizers  # noqa: F401  (what Embedder imports on construction)
t1 = time.perf_counter()
model = Embedder(sys.argv[1], variant=sys.argv[2], threads=int(sys.argv[3]))
t2 = time.perf_counter()
model.encode(["a short query about embeddings"])
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first": t3 - t2, "total": t3 - t0}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = []
    for _ in range(args.runs + 1):
        out = subprocess.run([sys.executable, "-c", CHILD, args.model, args.variant, str(args.threads)],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, later = results[0], results[1:]
    print(f"first start (cache filled): total {first['total']:.3f} s (load {first['load']:.3f} s)")
    print("later starts, medians: " + ", ".join(
        f"{k} {statistics.median(r[k] for r in later):.3f} s" for k in ("import", "load", "first", "total")))


if __name__ == "__main__":
    main()
