"""gte_onnx.ray, the public name of the Ray Data actor (extra [ray]); it lives in gte_onnx.corpus.ray.

    from gte_onnx.ray import EmbedBatches
"""

from gte_onnx.corpus.ray import EmbedBatches, import_ray, run_corpus_on_ray

__all__ = ["EmbedBatches", "import_ray", "run_corpus_on_ray"]
