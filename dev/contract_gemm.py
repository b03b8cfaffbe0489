"""One MLP down-projection (1152 -> 768) on ORT's CPU EP, quantized each way the int8 recipe could:
dynamic per-tensor activations (DynamicQuantizeMatMul), 8-bit MatMulNBits at accuracy level 4 with
several block sizes (activations per token and block), and per-token activation scales written as
plain ops in front of MatMulInteger.

    python dev/contract_gemm.py --tokens 128,4096
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

K, N = 1152, 768


def float_model():
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((K, N)).astype(np.float32) * 0.03
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"], name="down")], "down",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", "l", K])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", "l", N])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model, w


def per_token_model(w):
    """y = (MatMulInteger(q(x / s_row) + 128, W_q) ) * s_row * s_col, with s_row = max|x_row| / 127."""
    from onnx import TensorProto, helper, numpy_helper

    col = np.abs(w).max(axis=0) / 127.0
    wq = np.clip(np.rint(w / col), -127, 127).astype(np.int8)
    h = helper
    nodes = [
        h.make_node("Abs", ["X"], ["ax"]),
        h.make_node("ReduceMax", ["ax", "last"], ["peak"], keepdims=1),
        h.make_node("Max", ["peak", "tiny"], ["peak_safe"]),
        h.make_node("Div", ["c127", "peak_safe"], ["inv"]),
        h.make_node("Mul", ["X", "inv"], ["xs"]),
        h.make_node("QuantizeLinear", ["xs", "one", "zp"], ["xq"]),
        h.make_node("MatMulIntegerToFloat", ["xq", "Wq", "one", "col", "zp"], ["acc_col"], domain="com.microsoft"),
        h.make_node("Mul", ["acc_col", "peak_safe"], ["Y"]),
    ]
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "last"),
             numpy_helper.from_array(np.array(1e-8, np.float32), "tiny"),
             numpy_helper.from_array(np.array(127.0, np.float32), "c127"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(128, np.uint8), "zp"),
             numpy_helper.from_array(wq, "Wq"),
             numpy_helper.from_array((col / 127.0).astype(np.float32), "col")]
    graph = h.make_graph(nodes, "down", [h.make_tensor_value_info("X", TensorProto.FLOAT, ["b", "l", K])],
                         [h.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", "l", N])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model


def variants(tmp: Path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model, w = float_model()
    src = tmp / "float.onnx"
    onnx.save(model, str(src))
    yield "float32 MatMul", str(src)
    dyn = tmp / "dyn.onnx"
    quantize_dynamic(str(src), str(dyn), per_channel=True, weight_type=QuantType.QInt8)
    yield "dynamic per-tensor", str(dyn)
    for block in (32, 64, 128, 256):
        m, _ = float_model()
        q = MatMulNBitsQuantizer(m, bits=8, block_size=block, is_symmetric=True, accuracy_level=4)
        q.process()
        path = tmp / f"nbits{block}.onnx"
        onnx.save(q.model.model, str(path))
        yield f"MatMulNBits 8b blk{block}", str(path)
    path = tmp / "pertoken.onnx"
    onnx.save(per_token_model(w), str(path))
    yield "per-token ops + MatMulInteger", str(path)


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="128,4096")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sessions = []
        for label, path in variants(Path(tmp)):
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sessions.append((label, ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])))
        for m in (int(t) for t in args.tokens.split(",")):
            x = np.random.default_rng(1).standard_normal((1, m, K)).astype(np.float32)
            x[0, 0] *= 6  # an outlier token, as [CLS] is
            ref = sessions[0][1].run(None, {"X": x})[0]
            times = {label: [] for label, _ in sessions}
            for _ in range(args.repeats):
                for label, s in sessions:
                    t0 = time.perf_counter()
                    y = s.run(None, {"X": x})[0]
                    times[label].append(time.perf_counter() - t0)
            for label, s in sessions:
                y = s.run(None, {"X": x})[0]
                err = float(np.abs(y[0, 1:] - ref[0, 1:]).max() / np.abs(ref[0, 1:]).max())
                print(f"tokens {m:5d} {label:32s} {statistics.median(times[label]) * 1e3:8.2f} ms  "
                      f"rel err (non-outlier rows) {err:.4f}", flush=True)


if __name__ == "__main__":
    main()
