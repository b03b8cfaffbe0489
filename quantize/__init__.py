"""gte_onnx.quantize: fp16, int8 and q4 variants of an exported model folder, each measured and recorded.

    from gte_onnx.quantize import quantize_folder
    quantize_folder("gte-modernbert-base-onnx", ["fp16", "int8", "q4"])

Recipes (one module each): fp16.py (GPUs), int8.py (x86 CPUs), q4.py (4-bit MatMulNBits, GPTQ rounding
from gptq.py, activation-aware scales from smooth.py); embedding.py quantizes the embedding table; fidelity.py measures a variant against fp32 with gte_onnx.parity; build.py
writes the files and the manifest; cli.py is `gte-onnx quantize`. Needs onnx and onnxruntime, never torch.
"""

from __future__ import annotations

__all__ = ["VARIANTS", "QuantizeOptions", "quantize_folder"]


def __getattr__(name: str):
    if name in __all__:
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module 'gte_onnx.quantize' has no attribute {name!r}")
