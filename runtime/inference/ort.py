"""onnxruntime is imported here and only here, inside a function, so `import gte_onnx` works without it and
a missing install is a typed error that says which extra to install."""

from __future__ import annotations

from gte_onnx.errors import MissingDependencyError

INSTALL_HINT = "pip install 'gte-onnx[cpu]' (CPU) or pip install 'gte-onnx[gpu]' (NVIDIA GPUs; not both)"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            f"gte-onnx needs ONNX Runtime to run models, and it is not installed. Install it with: {INSTALL_HINT}"
        ) from None
    return onnxruntime
