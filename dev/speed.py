"""Interleaved latency of several contenders in one process: ONNX files on ORT's CPU EP and OpenVINO IRs.

    python dev/speed.py --shapes 1x16,1x128,32x128 ours=ort:/tmp/m/model_int8.onnx nncf=ov:/tmp/ov/nncf_int8.xml
    python dev/speed.py native=gte:FOLDER#int8 avx2-route=gte:FOLDER#int8@x86-avx2

`gte:FOLDER#VARIANT` runs the variant through the runtime's own session (gte_onnx.inference.session.OnnxModel: the
manifest's optimisation level and the CPU route of this machine's kernel family); `@FAMILY` takes the route of
another family (e.g. the u8-weights route int8 takes on x86 without VNNI), to price it on this CPU.

Every round runs each contender once, in a fresh random order, after a short pause, so no contender
always follows the same neighbour (ORT's spinning threads bias whoever runs next; spinning is off here
too). Prints the median and p90 per shape and the ratio of each contender's median to the first's.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np


def ort_runner(path: str, threads: int, provider: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    session = ort.InferenceSession(path, options, providers=providers)
    names = [i.name for i in session.get_inputs()]
    output = session.get_outputs()[0].name

    def run(ids, mask):
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return session.run([output], {n: feed[n] for n in names})[0]

    return run


def ov_runner(path: str, threads: int, hint: str | None):
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    compiled = ov.Core().compile_model(path, "CPU", config)
    request = compiled.create_infer_request()

    def run(ids, mask):
        return request.infer({"input_ids": ids, "attention_mask": mask})[0]

    return run


def gte_runner(target: str, threads: int):
    from gte_onnx.inference import kernel_family
    from gte_onnx.folder.manifest import Manifest
    from gte_onnx.inference.session import OnnxModel

    target, _, family = target.partition("@")
    folder, _, variant = target.partition("#")
    detect = kernel_family.detect_family
    if family:  # the session is built with that family's route
        kernel_family.detect_family = lambda: family
    try:
        model = OnnxModel(folder, Manifest.load(folder), variant or "auto", "cpu", threads,
                          session_config={"session.intra_op.allow_spinning": "0"})
    finally:
        kernel_family.detect_family = detect
    print(f"{target}@{family or model.family}: variant {model.variant.name}, route {model.route.name}", flush=True)
    return lambda ids, mask: model.run(model.feed(ids, mask))


def make(spec: str, threads: int):
    name, _, target = spec.partition("=")
    kind, _, path = target.partition(":")
    if kind == "ort":
        return name, ort_runner(path, threads, "CPUExecutionProvider")
    if kind == "gte":
        return name, gte_runner(path, threads)
    if kind == "ortov":  # onnxruntime-openvino's execution provider
        return name, ort_runner(path, threads, "OpenVINOExecutionProvider")
    if kind in ("ov", "ovf32"):
        return name, ov_runner(path, threads, "f32" if kind == "ovf32" else None)
    raise SystemExit(f"unknown contender kind {kind!r} in {spec!r}")


def measure(runners, shape, budget_s: float, min_rounds: int):
    batch, length = shape
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 50000, (batch, length)).astype(np.int64)
    mask = np.ones_like(ids)
    for _, run in runners:  # warm-up: arenas, kernels
        run(ids, mask)
        run(ids, mask)
    times = {name: [] for name, _ in runners}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - start < budget_s and rounds < 200):
        order = list(runners)
        random.shuffle(order)
        for name, run in order:
            time.sleep(0.05)
            t0 = time.perf_counter()
            run(ids, mask)
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("contenders", nargs="+", help="name=ort:FILE.onnx | name=ov:FILE.xml | name=ortov:FILE.onnx | name=gte:FOLDER#VARIANT[@FAMILY]")
    parser.add_argument("--shapes", default="1x16,1x128,32x128,8x512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per shape")
    parser.add_argument("--min-rounds", type=int, default=3)
    args = parser.parse_args()
    random.seed(0)
    runners = [make(spec, args.threads) for spec in args.contenders]
    first = runners[0][0]
    for text in args.shapes.split(","):
        shape = tuple(int(v) for v in text.split("x"))
        times = measure(runners, shape, args.budget, args.min_rounds)
        base = statistics.median(times[first])
        cells = []
        for name, _ in runners:
            median = statistics.median(times[name])
            p90 = sorted(times[name])[int(0.9 * (len(times[name]) - 1))]
            cells.append(f"{name} {median * 1e3:8.1f} ms (p90 {p90 * 1e3:.1f}, x{median / base:.2f})")
        print(f"{text:>7} n={len(times[first]):3d}  " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
