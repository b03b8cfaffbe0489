"""gte-onnx: GTE-ModernBERT embeddings and reranking on ONNX Runtime, without PyTorch.

    from gte_onnx import Embedder, Reranker

Imports are lazy so that `import gte_onnx` costs nothing and never loads onnxruntime.
"""

from __future__ import annotations

from gte_onnx.defaults import VERSION as __version__
__all__ = ["Embedder", "Reranker", "Manifest", "__version__"]


def __getattr__(name: str):
    if name == "Embedder":
        from gte_onnx.embedder import Embedder

        return Embedder
    if name == "Reranker":
        from gte_onnx.reranker import Reranker

        return Reranker
    if name == "Manifest":
        from gte_onnx.folder.manifest import Manifest

        return Manifest
    raise AttributeError(f"module 'gte_onnx' has no attribute {name!r}")
