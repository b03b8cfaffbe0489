"""OpenVINO peers of a ModernBERT checkpoint for speed comparisons: the plain IR and NNCF int8 (static
activations, model_type TRANSFORMER, calibrated on STS-B sentences), as optimum-intel's int8 path makes it.

    python dev/build_ov_peer.py CHECKPOINT_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def calibration(checkpoint: Path, count: int = 128):
    from tokenizers import Tokenizer

    import csv

    rows = Path(__file__).resolve().parents[1] / "parity" / "data" / "stsbenchmark" / "sts-dev.csv"
    texts = []
    with open(rows, encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                texts += [row[5], row[6]]
    tok = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    feeds = []
    for text in texts[:count]:
        ids = np.array([tok.encode(text).ids], dtype=np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return feeds


def main(checkpoint: str, out: str) -> None:
    import nncf
    import openvino as ov
    import torch
    import transformers

    checkpoint, out = Path(checkpoint), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = transformers.AutoModel.from_pretrained(checkpoint, attn_implementation="sdpa", dtype=torch.float32).eval()
    example = {"input_ids": torch.ones(2, 40, dtype=torch.long), "attention_mask": torch.ones(2, 40, dtype=torch.long)}
    with torch.inference_mode():
        ov_model = ov.convert_model(model, example_input=example,
                                    input=[("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)])
    ov.save_model(ov_model, out / "fp32.xml", compress_to_fp16=False)
    quantized = nncf.quantize(ov_model, nncf.Dataset(calibration(checkpoint)), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=128)
    ov.save_model(quantized, out / "nncf_int8.xml", compress_to_fp16=False)
    print("wrote", sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main(*sys.argv[1:])
