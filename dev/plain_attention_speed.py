"""Latency of an int8 file with ORT's fused attention against the same file with attention as plain ops.

    python dev/plain_attention_speed.py MODEL_INT8.onnx [--shapes 1x16,1x128,32x128,8x512,1x2048]
        [--threads 2] [--repeats 7]

MODEL_INT8.onnx is an int8 file built with `gte-onnx quantize DIR --variants int8 --int8-attention fused`;
the plain version is quantize.attention.plain_attention applied to it, what the default recipe does (the
form that computes the same vectors on AVX-512 and AVX2: docs/cpu-support.md). Both are run as the runtime
loads int8 (optimisation off: the file is saved optimised), interleaved after a warm-up, with the rows after
the first padded to 3/4 of the length in batches (so ModernBERT's padded global-attention branch runs);
printed: the median of --repeats runs per shape, the ratio plain / fused, and their outputs' max |diff|.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    import onnx
    import onnxruntime as ort

    from gte_onnx.quantize.attention import plain_attention

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--shapes", default="1x16,1x128,32x128,8x512,1x2048")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    model = onnx.load(args.model)
    report = plain_attention(model)

    def session(source):
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    sessions = {"fused": session(args.model), "plain": session(model.SerializeToString())}
    inputs = {i.name for i in sessions["fused"].get_inputs()}
    print(f"attention: {report.record()}; {args.threads} threads, median of {args.repeats}")
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        batch, length = (int(x) for x in shape.split("x"))
        ids = rng.integers(1000, 5000, (batch, length)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1:, length * 3 // 4:] = 0
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feed = {k: v for k, v in feed.items() if k in inputs}
        outputs = {name: s.run(None, feed)[0] for name, s in sessions.items()}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(args.repeats):
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feed)
                times[name].append(time.perf_counter() - start)
        fused, plain = (float(np.median(times[k])) * 1e3 for k in ("fused", "plain"))
        diff = float(np.abs(outputs["plain"] - outputs["fused"]).max())
        print(f"{shape}: fused {fused:.1f} ms, plain {plain:.1f} ms, plain / fused {plain / fused:.2f}x, "
              f"max |diff| {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
