"""Where a model folder comes from: a local folder or a hub repo listed and fetched file by file (hub.py),
the cache that keeps folders built from them (cache.py), and the choice of path for each form (resolve.py):
a gte-onnx folder is used as it is, a checkpoint is converted and an ONNX repo imported by gte_onnx.pipeline."""
