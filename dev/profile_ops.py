"""Where an ONNX graph spends its time on ORT's CPU EP: ORT's profiler, summed by op type and by layer kind.

    python dev/profile_ops.py MODEL.onnx --shapes 1x128,32x128 [--runs 5]

Node names carry the writer's scope ("layers.3.global/..."), which ORT keeps in fused nodes' names, so
time is grouped by layer kind (global, local, other). Ops inside If branches are profiled as nodes of
their own and grouped the same way. Prints ms per run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import tempfile

import numpy as np

GEMMS = {"MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "FusedMatMul",
         "Gemm", "QGemm", "QLinearMatMul"}


def layer_kind(name: str) -> str:
    match = re.search(r"layers\.\d+\.(global|local)", name)
    return match.group(1) if match else "other"


def profile(path: str, shape: tuple[int, int], runs: int, threads: int):
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        ids = rng.integers(1000, 50000, shape).astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        names = {i.name for i in session.get_inputs()}
        feed = {k: v for k, v in feed.items() if k in names}
        session.run(None, feed)
        session.run(None, feed)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "prof")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        session.run(None, feed)  # warm-up inside the profile, dropped below
        for _ in range(runs):
            session.run(None, feed)
        events = json.load(open(session.end_profiling()))
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    runs_seen = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    keep_from = runs_seen[1]["ts"] if len(runs_seen) > 1 else 0
    nodes = [e for e in nodes if e["ts"] >= keep_from]
    total = sum(e["dur"] for e in runs_seen[1:]) / 1e3 / max(1, len(runs_seen) - 1)
    by_op = collections.Counter()
    by_kind = collections.Counter()
    for e in nodes:
        op = e["args"].get("op_name", "?")
        if op == "If":  # an If's time includes its branch's nodes, which are listed too
            continue
        by_op[op] += e["dur"]
        by_kind[(layer_kind(e["name"]), "gemm" if op in GEMMS else "other")] += e["dur"]
    scale = 1e3 * runs
    return total, {k: v / scale for k, v in by_op.items()}, {k: v / scale for k, v in by_kind.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--shapes", default="1x128,32x128")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for text in args.shapes.split(","):
        shape = tuple(int(v) for v in text.split("x"))
        total, by_op, by_kind = profile(args.model, shape, args.runs, args.threads)
        nodes = sum(by_op.values())
        print(f"== {text}: {total:.1f} ms per run, {nodes:.1f} ms in nodes")
        for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1]):
            if ms >= 0.005 * nodes:
                print(f"  {op:28s} {ms:8.2f} ms  {100 * ms / nodes:5.1f}%")
        print("  by layer kind:", ", ".join(f"{k}/{g} {ms:.1f}" for (k, g), ms in sorted(by_kind.items())))


if __name__ == "__main__":
    main()
