"""Latency of an int8 file with its fused attention against the same file with attention as plain ops.

    python dev/plain_attention_speed.py MODEL_INT8.onnx [--threads 2] [--repeats 7]

The plain-ops version is dev/op_divergence.py's plain_attention() rewrite (MatMul, a ReduceMax/Sub/Exp/
ReduceSum/Div softmax, MatMul), the form that computes the same vectors on AVX-512 and AVX2
(docs/cpu-support.md). Both run with optimisations off, as the int8 file loads; interleaved, after a warm-up,
the median of --repeats runs per shape (1x128, 32x128, 8x512) and the ratio plain / fused.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import onnx
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("op_divergence", ROOT / "dev" / "op_divergence.py")
    divergence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(divergence)
    model = onnx.load(args.model)
    rewritten = divergence.plain_attention(model)

    def session(source):
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    sessions = {"fused": session(args.model), "plain": session(model.SerializeToString())}
    inputs = {i.name for i in sessions["fused"].get_inputs()}
    print(f"{rewritten} attention nodes rewritten; {args.threads} threads, median of {args.repeats}")
    rng = np.random.default_rng(0)
    for batch, length in ((1, 128), (32, 128), (8, 512)):
        ids = rng.integers(1000, 5000, (batch, length)).astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feed = {k: v for k, v in feed.items() if k in inputs}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for s in sessions.values():
            s.run(None, feed)
        for _ in range(args.repeats):
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feed)
                times[name].append(time.perf_counter() - start)
        fused, plain = (float(np.median(times[k])) * 1e3 for k in ("fused", "plain"))
        print(f"{batch}x{length}: fused {fused:.1f} ms, plain {plain:.1f} ms, plain / fused {plain / fused:.2f}x")


if __name__ == "__main__":
    main()
