"""Run under an emulated CPU (tests/test_cpu_families.py, dev/cpu_families.py): embed texts with each
variant of each model folder and save the vectors, batched and one text at a time, with what the runtime
detected (kernel family, route).

    python vectors.py SPEC.json OUT.npz
SPEC: {"folders": {name: path}, "variants": [...], "texts": [...], "alone": n, "threads": t}
"""

import json
import sys

import numpy as np

from gte_onnx import Embedder
from gte_onnx.kernel_family import detect_family


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(open(spec_path, encoding="utf-8").read())
    texts, alone = spec["texts"], spec.get("alone", 0)
    arrays, meta = {}, {"family": detect_family(), "routes": {}}
    for name, folder in spec["folders"].items():
        for variant in spec["variants"]:
            model = Embedder(folder, variant=variant, threads=spec.get("threads", 2))
            meta["routes"][f"{name}/{variant}"] = model.onnx.route.name
            arrays[f"{name}/{variant}/batch"] = model.encode(texts, batch_size=16, normalize=True)
            if alone:
                arrays[f"{name}/{variant}/alone"] = np.stack(
                    [model.encode([t], normalize=True)[0] for t in texts[:alone]])
    np.savez(out_path, meta=np.array(json.dumps(meta)), **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:3])
