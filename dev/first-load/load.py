"""One load of a hub id with the torch-free runtime: time, chosen variant, whether torch was imported."""
import json
import resource
import sys
import time

started = time.perf_counter()
from gte_onnx import Embedder  # noqa: E402

model = Embedder(sys.argv[1] if len(sys.argv) > 1 else "Alibaba-NLP/gte-modernbert-base")
loaded = time.perf_counter()
vectors = model.encode(["what is the capital of China?", "Beijing"])
done = time.perf_counter()
print(json.dumps({
    "load_s": round(loaded - started, 2), "first_encode_s": round(done - loaded, 3), "variant": model.variant,
    "shape": list(vectors.shape), "folder": str(model.folder),
    "torch_loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
}))
