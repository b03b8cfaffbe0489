"""Run under an emulated CPU (tests/quantize/test_cpu_families.py, dev/cpu_families.py): embed texts with each
variant of each model folder and save the vectors, batched and one text at a time, with what the runtime
detected (kernel family, route).

    python vectors.py SPEC.json OUT.npz
SPEC: {"folders": {name: path}, "variants": [...], "texts": [...], "alone": n, "threads": t,
       "limits": {"name/variant": n}}   (embed only the first n texts: fp32 GEMMs crawl under qemu's softfloat)
"""

import json
import sys
import time

import numpy as np

from gte_onnx import Embedder
from gte_onnx.inference.kernel_family import detect_family


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(open(spec_path, encoding="utf-8").read())
    texts, alone = spec["texts"], spec.get("alone", 0)
    arrays, meta = {}, {"family": detect_family(), "routes": {}}
    for name, folder in spec["folders"].items():
        for variant in spec["variants"]:
            started = time.perf_counter()
            model = Embedder(folder, variant=variant, threads=spec.get("threads", 1))
            meta["routes"][f"{name}/{variant}"] = model.onnx.route.name
            limit = spec.get("limits", {}).get(f"{name}/{variant}", len(texts))
            arrays[f"{name}/{variant}/batch"] = model.encode(texts[:limit], batch_size=16, normalize=True)
            if alone:
                arrays[f"{name}/{variant}/alone"] = np.stack(
                    [model.encode([t], normalize=True)[0] for t in texts[:min(alone, limit)]])
            print(f"{name} {variant}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    np.savez(out_path, meta=np.array(json.dumps(meta)), **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:3])
