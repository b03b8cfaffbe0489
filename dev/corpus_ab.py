"""Interleaved A/B of model folders on real documents: the same CISI documents through each folder's int8
`Embedder.encode`, chunk by chunk, in a fresh random order per chunk (so drift on a shared machine hits
every contender alike). A contender may force ORT's optimisation level with @LEVEL, and with +fill batch as
before the least-cost planner (each batch filled to the limits; dev/cisi_padding.py counts the padding).

    python dev/corpus_ab.py new=DIR_A old=DIR_B newall=DIR_A@ORT_ENABLE_ALL [--docs 600] [--chunk 100]
    python dev/corpus_ab.py plan=DIR fill=DIR+fill --docs 1460 --chunk 730

Prints each contender's total seconds and its ratio to the first.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time

from cisi_padding import fill


@contextlib.contextmanager
def planner(old: bool):
    import gte_onnx.loaded_model as loaded

    kept = loaded.plan_batches
    if old:
        loaded.plan_batches = lambda lengths, batch_size, budget, cost: fill(lengths, batch_size, budget)
    try:
        yield
    finally:
        loaded.plan_batches = kept


def open_model(spec: str, threads: int):
    from gte_onnx import Embedder

    name, _, rest = spec.partition("=")
    rest, plus, _ = rest.partition("+fill")
    folder, _, level = rest.partition("@")
    model = Embedder(folder, variant="int8", threads=threads)
    if level:  # the same file in a session at another optimisation level
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_mem_pattern = False
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        path = model.onnx.folder / model.onnx.variant.file
        model.onnx.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return name, (model, bool(plus))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("contenders", nargs="+", help="name=FOLDER or name=FOLDER@ORT_LEVEL")
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from gte_onnx.parity.datasets import load_cisi

    docs = list(load_cisi().documents.values())
    random.Random(0).shuffle(docs)
    chunks = [docs[i:i + args.chunk] for i in range(0, min(args.docs, len(docs)), args.chunk)]
    models = dict(open_model(spec, args.threads) for spec in args.contenders)
    for model, _ in models.values():
        model.encode(chunks[0][:8])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for chunk in chunks:
        order = list(models)
        random.shuffle(order)
        for name in order:
            model, old_planner = models[name]
            with planner(old_planner):
                start = time.perf_counter()
                model.encode(chunk, batch_size=32)
                times[name].append(time.perf_counter() - start)
    first = sum(times[next(iter(models))])
    for name, seconds in times.items():
        print(f"{name}: total {sum(seconds):.1f} s ({sum(seconds) / first:.3f}x), "
              f"per chunk median {statistics.median(seconds):.2f} s")


if __name__ == "__main__":
    main()
