"""gte_onnx.bench: benchmark a model folder's variants, and optionally PyTorch, reproducibly.

    gte-onnx bench DIR --short --torch auto --json out.json
    from gte_onnx.bench import rank_variants; rank_variants(folder)   # fastest first, on the CPU EP

Torch-free: only torch_baseline.py touches torch, inside a worker process of its own. Imports are lazy so
that importing the package loads neither onnxruntime nor matplotlib.
"""

from __future__ import annotations

__all__ = ["BenchConfig", "main", "rank_variants", "record_ranking", "run_bench"]


def __getattr__(name: str):
    if name in ("BenchConfig", "run_bench"):
        from . import runner

        return getattr(runner, name)
    if name == "rank_variants":
        from gte_onnx.inference.speed_ranking import rank_variants

        return rank_variants
    if name == "record_ranking":
        from gte_onnx.inference.speed_ranking import record_ranking

        return record_ranking
    if name == "main":
        from .cli import main

        return main
    raise AttributeError(f"module 'gte_onnx.bench' has no attribute {name!r}")
