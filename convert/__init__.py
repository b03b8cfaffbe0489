"""gte_onnx.convert: torch-free model building. Numpy weights in, the same op-by-op ONNX graphs that
`gte-onnx export` writes out (numpy, onnx and onnxruntime only; never torch or transformers).

    from gte_onnx.convert import convert_checkpoint
    convert_checkpoint(Path("gte-modernbert-base"), Path("gte-modernbert-base-onnx"), variants=("int8",))
"""

from __future__ import annotations

# name -> module that defines it; loaded on first use, so importing the package costs nothing
_EXPORTS = {
    "convert_fp32": "converter",
    "CheckpointFormatError": "safetensors_io",
    "ExportValidationError": "validation",
}
__all__ = sorted([*_EXPORTS, "convert_checkpoint", "supported_architecture"])


def __getattr__(name: str):
    if name == "convert_checkpoint":
        # The public name of the whole first-load build (convert, quantize, rank), which the pipeline drives:
        # the one sanctioned arrow from a stage to the pipeline (docs/architecture.md).
        from gte_onnx.pipeline import convert_checkpoint

        return convert_checkpoint
    if name == "supported_architecture":
        from gte_onnx.folder.forms import supported_architecture

        return supported_architecture
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'gte_onnx.convert' has no attribute {name!r}")
