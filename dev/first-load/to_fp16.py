"""Copy a safetensors checkpoint folder with every float32 tensor stored as float16 (as the released gte
weights are). python to_fp16.py SRC DST"""
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
for path in src.rglob("*"):
    if path.is_file() and path.name != "model.safetensors":
        (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst / path.relative_to(src))
raw = (src / "model.safetensors").read_bytes()
size = struct.unpack("<Q", raw[:8])[0]
header, base = json.loads(raw[8:8 + size]), 8 + size
out, chunks, offset = {}, [], 0
for name, info in header.items():
    if name == "__metadata__":
        out[name] = info
        continue
    start, end = info["data_offsets"]
    data = raw[base + start: base + end]
    dtype = info["dtype"]
    if dtype == "F32":
        data, dtype = np.frombuffer(data, dtype="<f4").astype("<f2").tobytes(), "F16"
    out[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
encoded = json.dumps(out).encode()
encoded += b" " * ((8 - len(encoded) % 8) % 8)
with open(dst / "model.safetensors", "wb") as fh:
    fh.write(struct.pack("<Q", len(encoded)))
    fh.write(encoded)
    for chunk in chunks:
        fh.write(chunk)
