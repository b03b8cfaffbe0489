"""gte_onnx.parity: PyTorch reference outputs, fidelity metrics, gates and the parity report.

metrics / gates / datasets / evaluate need only numpy (and the runtime for the report); reference.py
imports torch and transformers lazily.
"""
