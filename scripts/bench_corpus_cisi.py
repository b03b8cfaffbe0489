"""CISI end to end: `embed-corpus` (local, and --engine ray) against sentence-transformers' OpenVINO and ONNX
backends on the same full-size model, each in a fresh process, one after the other, on the same documents.

    python scripts/bench_corpus_cisi.py MODEL_FOLDER CHECKPOINT --docs 300 --peers-python /path/to/python

MODEL_FOLDER is the gte-onnx folder (int8 variant used), CHECKPOINT the transformers checkpoint the peers load.
--peers-python runs the sentence-transformers contenders (they need optimum-intel/openvino/optimum-onnx,
which may want other transformers versions than this environment). Prints seconds per contender (ours: the
whole CLI run, model load included; peers: encode only, with their load/export time apart) and the ratios.

Before a time is reported, the contender's vectors are checked: every vector of the run finite, and the
vectors of --check documents (spread over the corpus) equal, within cosine 0.999, to the same documents
embedded one at a time by the same engine (no padding). A contender that fails the check is reported as
INVALID with the reason and left out of the ratios: a time of NaN vectors (sentence-transformers +
OpenVINO pads ModernBERT batches into NaN, openvinotoolkit/openvino#35959) is not a time.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECK_COSINE = 0.999


def check_vectors(vectors, alone, sample):
    """Every vector finite, and the sampled ones equal (cosine >= CHECK_COSINE) to the same texts alone.
    Also run by the peers' script in --peers-python (sent as source: numpy only)."""
    import numpy as np

    vectors, alone = np.asarray(vectors, dtype=np.float64), np.asarray(alone, dtype=np.float64)
    bad = int(np.sum(~np.all(np.isfinite(vectors), axis=1)))
    a, b = vectors[sample], alone
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    worst = float(np.min(np.where(np.isfinite(cos), cos, -1.0))) if len(cos) else 1.0
    why = []
    if bad:
        why.append(f"{bad} of {len(vectors)} vectors are not finite")
    if worst < CHECK_COSINE:
        why.append(f"a batched vector has cosine {worst:.4f} with the same document alone (< {CHECK_COSINE})")
    return {"nonfinite_rows": bad, "cosine_min_vs_alone": worst, "valid": not why, "why": "; ".join(why)}


PEER = f"CHECK_COSINE = {CHECK_COSINE}\n" + inspect.getsource(check_vectors) + r"""
import json, sys, time
import numpy as np
backend, ckpt, corpus, n_check = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
texts = [json.loads(l)["text"] for l in open(corpus, encoding="utf-8")]
t = time.perf_counter()
from sentence_transformers import SentenceTransformer
kwargs = {"file_name": "model.onnx"} if backend == "onnx" else {}
model = SentenceTransformer(ckpt, backend=backend, device="cpu", model_kwargs=kwargs or None)
load = time.perf_counter() - t
model.encode(texts[:4], batch_size=32)
t = time.perf_counter()
vectors = model.encode(texts, batch_size=32)
encode_s = time.perf_counter() - t
sample = sorted(set(np.linspace(0, len(texts) - 1, n_check).astype(int).tolist()))
alone = np.stack([model.encode([texts[i]], batch_size=1)[0] for i in sample])
print(json.dumps({"load_s": load, "encode_s": encode_s, "rows": len(vectors),
                  "check": check_vectors(vectors, alone, sample)}))
"""


def check_ours(output: Path, model: str, variant: str, corpus: Path, n_check: int) -> dict:
    """Our run's vectors (the Parquet output) against the same documents alone through Embedder."""
    import numpy as np
    import pyarrow.dataset as ds

    table = ds.dataset(str(output), format="parquet").to_table(columns=["vector"])
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float64)
    texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]
    sample = sorted(set(np.linspace(0, len(texts) - 1, n_check).astype(int).tolist()))
    from gte_onnx import Embedder

    embedder = Embedder(model, variant=variant)
    alone = np.stack([embedder.encode([texts[i]], batch_size=1)[0] for i in sample])
    return check_vectors(vectors, alone, sample)


def verdict(check: dict) -> str:
    return ("vectors ok (finite; cosine vs alone >= %.4f)" % check["cosine_min_vs_alone"] if check["valid"]
            else "INVALID: " + check["why"])


def write_subset(path: Path, n: int) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gte_onnx.parity.datasets import load_cisi

    documents = list(load_cisi().documents.items())[:n]
    with open(path, "w", encoding="utf-8") as fh:
        for doc_id, text in documents:
            fh.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return len(documents)


def timed(cmd: list[str], timeout: float) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout.strip() or done.stderr.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("checkpoint")
    parser.add_argument("--docs", type=int, default=1460)
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--peers-python", default=sys.executable)
    parser.add_argument("--only", nargs="*", default=["local", "workers", "ray", "openvino", "onnx"])
    parser.add_argument("--workers", type=int, default=2, help="processes of the 'workers' contender (each with "
                        "cores/N threads; the documents go out in shards of docs/(2N))")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--check", type=int, default=16, help="documents re-embedded one at a time to check "
                        "each contender's batched vectors (default 16)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cisi-"))
    try:
        corpus = work / "cisi.jsonl"
        n = write_subset(corpus, args.docs)
        print(f"CISI: {n} documents (file order); model {args.model} {args.variant}; checkpoint {args.checkpoint}")
        ours = [sys.executable, "-m", "gte_onnx.cli", "embed-corpus", args.model, str(corpus), "--variant", args.variant,
                "--id-field", "id", "--no-progress"]
        seconds = {}
        invalid = {}
        if "local" in args.only:
            seconds["local"], line = timed(ours[:6] + [str(work / "local")] + ours[6:], args.timeout)
            check = check_ours(work / "local", args.model, args.variant, corpus, args.check)
            print(f"ours local {args.variant}: {seconds['local']:.1f} s wall (load included) | {line} | {verdict(check)}")
            if not check["valid"]:
                invalid["local"] = seconds.pop("local")
        if "workers" in args.only:
            shard = max(1, -(-n // (2 * args.workers)))
            cmd = ours[:6] + [str(work / "workers")] + ours[6:] + ["--workers", str(args.workers), "--shard-size", str(shard)]
            seconds["workers"], line = timed(cmd, args.timeout)
            print(f"ours local --workers {args.workers} --shard-size {shard}: {seconds['workers']:.1f} s wall "
                  f"(load included) | {line}")
        if "ray" in args.only:
            ray = ours[:6] + [str(work / "ray")] + ours[6:] + ["--engine", "ray", "--concurrency", "1",
                                                           "--cpus-per-actor", "1.5", "--threads", "2"]
            seconds["ray"], line = timed(ray, args.timeout)
            print(f"ours --engine ray (local Ray, 1 actor x 2 threads): {seconds['ray']:.1f} s wall "
                  f"(Ray start included) | {line}")
        for backend in ("openvino", "onnx"):
            if backend in args.only:
                wall, line = timed([args.peers_python, "-c", PEER, backend, args.checkpoint, str(corpus),
                                    str(args.check)], args.timeout)
                result = json.loads(line.splitlines()[-1])
                print(f"sentence-transformers + {backend}: encode {result['encode_s']:.1f} s "
                      f"(load/export {result['load_s']:.1f} s apart; process {wall:.1f} s) | {verdict(result['check'])}")
                if result["check"]["valid"]:
                    seconds[backend] = result["encode_s"]
                else:
                    invalid[backend] = result["encode_s"]
        for name in invalid:
            print(f"{name}: its time is not compared (its vectors failed the check)")
        for name, value in seconds.items():
            if name != "local" and "local" in seconds:
                print(f"ratio {name} / ours local: {value / seconds['local']:.3f}")
            if name in ("openvino", "onnx") and "workers" in seconds:
                print(f"ratio {name} / ours --workers {args.workers}: {value / seconds['workers']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
