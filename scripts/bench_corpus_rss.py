"""Peak RSS and throughput of `gte-onnx embed-corpus` on a synthetic corpus.

    python scripts/bench_corpus_rss.py MODEL --docs 200000 [--variant int8] [--workers 1 2] [--keep DIR]

Writes a synthetic plain-text corpus (short varied sentences), runs the CLI once per --workers value in a
fresh process, samples the RSS of the whole process tree every 50 ms, and prints peak RSS, wall time,
documents/s and the ratio between the worker counts measured in this run.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

WORDS = ("retrieval index query document corpus vector search library catalog author title abstract science "
         "information system user data relevance ranking model language text embedding journal paper").split()


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + f" {i}\n")


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run(cmd: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_rss(watched))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - start, peak, err.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--shard-size", type=int, default=10_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    try:
        corpus = work / "corpus.txt"
        write_corpus(corpus, args.docs)
        print(f"corpus: {args.docs} documents, {corpus.stat().st_size / 1e6:.1f} MB; model {args.model} "
              f"({args.variant}); {psutil.cpu_count(logical=False)} physical cores")
        rates = {}
        for workers in args.workers:
            out = work / f"out-{workers}"
            cmd = [sys.executable, "-m", "gte_onnx.cli", "embed-corpus", args.model, str(corpus), str(out),
                   "--variant", args.variant, "--workers", str(workers), "--shard-size", str(args.shard_size),
                   "--no-progress"]
            seconds, peak, summary = run(cmd)
            rates[workers] = args.docs / seconds
            print(f"workers {workers}: peak RSS (process tree) {peak / 2**30:.3f} GiB, wall {seconds:.1f} s, "
                  f"{rates[workers]:.1f} docs/s | {summary}")
            shutil.rmtree(out)
        base = rates[args.workers[0]]
        for workers, rate in rates.items():
            print(f"throughput ratio workers {workers} / workers {args.workers[0]}: {rate / base:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
