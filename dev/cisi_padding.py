"""How much padding each batch plan costs on CISI's documents, chunk by chunk as `embed-corpus` reads them.

    python dev/cisi_padding.py MODEL_FOLDER [--chunk-size 1024] [--batch-size 32]

Prints, per plan, the batches, the padded tokens against the real ones, and the plan's cost in tokens
(padded + the CPU per-batch cost): the CPU plan `encode` uses, the GPU plan (fewest batches), and "fill",
the plan before the least-cost planner (each batch filled to the limits in sorted order).
"""

from __future__ import annotations

import argparse

import numpy as np

from gte_onnx.defaults import MAX_BATCH_TOKENS
from gte_onnx.inference.batching import CPU_BATCH_COST_TOKENS, GPU_BATCH_COST_TOKENS, plan_batches


def fill(lengths, batch_size, budget):
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        rows = max(1, min(batch_size, budget // max(int(lengths[order[start]]), 1)))
        batches.append(order[start:start + rows])
        start += rows
    return batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    from gte_onnx.parity.datasets import load_cisi
    from gte_onnx.inference.tokenize import TextTokenizer
    from gte_onnx.folder.manifest import Manifest

    manifest = Manifest.load(args.model)
    tokenizer = TextTokenizer.from_folder(args.model, manifest.max_length, manifest.tokenizer.get("pad_token_id"))
    lengths = np.asarray(tokenizer.encode(list(load_cisi().documents.values())).lengths)
    plans = {
        "cpu": lambda l: plan_batches(l, args.batch_size, MAX_BATCH_TOKENS, CPU_BATCH_COST_TOKENS),
        "gpu": lambda l: plan_batches(l, args.batch_size, MAX_BATCH_TOKENS, GPU_BATCH_COST_TOKENS),
        "fill": lambda l: fill(l, args.batch_size, MAX_BATCH_TOKENS),
    }
    real = int(lengths.sum())
    print(f"CISI: {len(lengths)} documents, {real:,} tokens, chunks of {args.chunk_size}, batch_size {args.batch_size}")
    for name, plan in plans.items():
        batches = padded = 0
        for start in range(0, len(lengths), args.chunk_size):
            chunk = lengths[start:start + args.chunk_size]
            for rows in plan(chunk):
                batches += 1
                padded += len(rows) * int(chunk[rows].max())
        cost = padded + CPU_BATCH_COST_TOKENS * batches
        print(f"{name:>5}: {batches:4d} batches, {padded:,} padded tokens ({padded / real - 1:+.1%} padding), "
              f"CPU cost {cost:,} tokens")


if __name__ == "__main__":
    main()
