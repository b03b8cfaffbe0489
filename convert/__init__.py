"""gte_onnx.convert: torch-free model building. Numpy weights in, the same op-by-op ONNX graphs that
`gte-onnx export` writes out (numpy, onnx and onnxruntime only; never torch or transformers).

    from gte_onnx.convert import convert_checkpoint
    convert_checkpoint(Path("gte-modernbert-base"), Path("gte-modernbert-base-onnx"), variants=("int8",))
"""

from __future__ import annotations

__all__ = ["convert_checkpoint", "supported_architecture"]


def __getattr__(name: str):
    if name in __all__:
        from . import converter

        return getattr(converter, name)
    raise AttributeError(f"module 'gte_onnx.convert' has no attribute {name!r}")
