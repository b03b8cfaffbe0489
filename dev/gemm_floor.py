"""The int8 GEMM floor of gte-modernbert-base on this CPU: u8 x s8 MatMulInteger alone, at the model's
linear-layer shapes, times the number of layers.

    python dev/gemm_floor.py --tokens 128,4096 [--threads 2]

tokens = batch x length (32x128 = 4096). Per layer: Wqkv 768x2304, Wo 768x768, Wi 768x2304 and
Wo_mlp 1152x768; also the same layer with q, k, v and the two Wi halves as separate GEMMs, which shows
what one wide GEMM saves over narrow ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

LAYERS = 22
FUSED = [(768, 2304), (768, 768), (768, 2304), (1152, 768)]
SEPARATE = [(768, 768)] * 3 + [(768, 768)] + [(768, 1152)] * 2 + [(1152, 768)]


def session(k: int, n: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "B")
    node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", TensorProto.UINT8, ["m", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, ["m", n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def seconds(k: int, n: int, m: int, threads: int, repeats: int) -> float:
    run = session(k, n, threads)
    a = np.random.default_rng(1).integers(0, 256, (m, k)).astype(np.uint8)
    run.run(None, {"A": a})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run.run(None, {"A": a})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="128,4096")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    for m in (int(t) for t in args.tokens.split(",")):
        cache: dict = {}
        for label, shapes in (("fused", FUSED), ("separate", SEPARATE)):
            total = 0.0
            ops = 0
            for k, n in shapes:
                if (k, n) not in cache:
                    cache[(k, n)] = seconds(k, n, m, args.threads, args.repeats)
                total += cache[(k, n)]
                ops += 2 * m * k * n
            print(f"tokens {m:5d} {label:8s}: int8 GEMM floor {total * LAYERS * 1e3:8.1f} ms for {LAYERS} layers "
                  f"({ops * LAYERS / 1e9:.0f} GOP, {ops / total / 1e9:.0f} GOP/s)", flush=True)


if __name__ == "__main__":
    main()
