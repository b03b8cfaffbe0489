"""Running a model folder: the ONNX Runtime session and its variant choice, the CPU's kernel family,
tokenization, token-budget batches, pooling, and the batched run loop Embedder, Reranker and the server share."""
