"""gte_onnx.export: PyTorch checkpoint -> validated fp32 ONNX model folder (needs the [export] extra)."""

from __future__ import annotations

__all__ = ["export_model"]


def __getattr__(name: str):
    if name == "export_model":
        from .onnx_export import export_model

        return export_model
    raise AttributeError(f"module 'gte_onnx.export' has no attribute {name!r}")
