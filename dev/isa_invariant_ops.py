"""Which float ops ONNX Runtime computes to the bit alike on this CPU and on an emulated family.

    python dev/isa_invariant_ops.py [--family x86-avx2]

One small graph of the ops an int8 encoder's attention and layers are made of (MatMul, Softmax, the same
softmax written as ReduceMax/Sub/Exp/ReduceSum/Div, LayerNormalization, Erf, BiasGelu) on seeded random inputs of
attention's shape (12 heads x 171 tokens x 32), one thread, optimisations off, run natively and under the
family's emulator (scripts/setup-emulation.sh); prints each output's max |diff|. An op at 0 adds in the same
order on both instruction sets. The finding is in docs/cpu-support.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("matmul", "softmax", "exp", "reduce_sum", "softmax_by_ops", "probs_matmul", "layer_norm", "erf", "bias_gelu")


def child(out: str) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto
    from onnx import helper as h

    rng = np.random.default_rng(0)
    b, heads, s, d = 1, 12, 171, 32
    q = rng.standard_normal((b, heads, s, d)).astype(np.float32)
    k = rng.standard_normal((b, heads, d, s)).astype(np.float32)
    x = (rng.standard_normal((b, heads, s, s)) * 3).astype(np.float32)
    nodes = [
        h.make_node("MatMul", ["q", "k"], ["matmul"]),
        h.make_node("Softmax", ["x"], ["softmax"], axis=-1),
        h.make_node("ReduceMax", ["x", "axis"], ["peak"], keepdims=1),
        h.make_node("Sub", ["x", "peak"], ["shifted"]),
        h.make_node("Exp", ["shifted"], ["exp"]),
        h.make_node("ReduceSum", ["exp", "axis"], ["reduce_sum"], keepdims=1),
        h.make_node("Div", ["exp", "reduce_sum"], ["softmax_by_ops"]),
        h.make_node("MatMul", ["softmax_by_ops", "q"], ["probs_matmul"]),
        h.make_node("LayerNormalization", ["x", "gamma", "beta"], ["layer_norm"], axis=-1, epsilon=1e-12),
        h.make_node("Erf", ["x"], ["erf"]),
        h.make_node("BiasGelu", ["x", "beta"], ["bias_gelu"], domain="com.microsoft"),
    ]
    consts = [onnx.numpy_helper.from_array(np.array([-1], np.int64), "axis"),
              onnx.numpy_helper.from_array(np.ones(s, np.float32), "gamma"),
              onnx.numpy_helper.from_array(np.zeros(s, np.float32), "beta")]
    graph = h.make_graph(nodes, "ops", [h.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "qkx"],
                         [h.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in OUTPUTS], consts)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    np.savez(out, **dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"q": q, "k": k, "x": x}))))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="x86-avx2")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="isa-ops-"))
    subprocess.run([sys.executable, __file__, "--child", str(work / "native.npz")], check=True)
    spec = importlib.util.spec_from_file_location("emu", ROOT / "scripts" / "emulation" / "run.py")
    emu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emu)
    result = emu.run_python(args.family, [__file__, "--child", str(work / "emulated.npz")], timeout=None)
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        return 1
    a, b = np.load(work / "native.npz"), np.load(work / "emulated.npz")
    for name in OUTPUTS:
        print(f"{name:<16} max |diff| {float(np.abs(a[name].astype(np.float64) - b[name]).max()):.3g}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        raise SystemExit(main(sys.argv[1:]))
