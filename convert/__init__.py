"""gte_onnx.convert: torch-free model building. Numpy weights in, the same op-by-op ONNX graphs that
`gte-onnx export` writes out (numpy, onnx and onnxruntime only; never torch or transformers)."""
