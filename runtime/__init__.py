"""gte-onnx: GTE-ModernBERT embeddings and reranking on ONNX Runtime, without PyTorch.

    from gte_onnx import Embedder, Reranker

Imports are lazy so that `import gte_onnx` costs nothing and never loads onnxruntime.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Embedder", "Reranker", "Manifest", "__version__"]


def __getattr__(name: str):
    if name == "Embedder":
        from .embedder import Embedder

        return Embedder
    if name == "Reranker":
        from .reranker import Reranker

        return Reranker
    if name == "Manifest":
        from .manifest import Manifest

        return Manifest
    raise AttributeError(f"module 'gte_onnx' has no attribute {name!r}")
