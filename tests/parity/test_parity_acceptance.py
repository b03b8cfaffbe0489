"""The model card's acceptance test: export, card scores, sentence-transformers agreement, parity gates.

`test_card_acceptance_real_weights` needs the real gte-modernbert-base weights in a local folder named by
GTE_MODERNBERT_PATH (a hub snapshot: model.safetensors, config.json, tokenizer files, modules.json,
1_Pooling/); it is skipped otherwise. `test_card_pipeline_synthetic` runs the same pipeline on a tiny
random-weight ModernBERT every time, so that the code path stays alive.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from gte_onnx.parity.probes import CARD_SCORES, CARD_TEXTS  # noqa: E402

from ..conftest import GTE_ID, TINY_OVERRIDES  # noqa: E402

CARD_TOLERANCE = 0.01


def card_scores(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return 100.0 * v[0] @ v[1:].T


def run_card_pipeline(checkpoint: Path, onnx_dir: Path, work: Path, expected: list[float] | None) -> dict:
    """sentence-transformers on the checkpoint vs the runtime on every variant; then reference + parity."""
    from sentence_transformers import SentenceTransformer

    from gte_onnx import Embedder
    from gte_onnx.folder.manifest import Manifest
    from gte_onnx.parity.cli import parity_main, reference_main

    st_vectors = SentenceTransformer(str(checkpoint), device="cpu").encode(
        list(CARD_TEXTS), normalize_embeddings=True, convert_to_numpy=True
    )
    st_scores = card_scores(st_vectors)
    fp32 = Embedder(onnx_dir, variant="fp32", threads=2)
    onnx_vectors = fp32.encode(list(CARD_TEXTS), normalize=True)
    onnx_scores = card_scores(onnx_vectors)
    print(f"card scores: sentence-transformers {st_scores.tolist()}, onnx fp32 {onnx_scores.tolist()}")
    np.testing.assert_allclose(onnx_scores, st_scores, atol=CARD_TOLERANCE)
    np.testing.assert_allclose(onnx_vectors, st_vectors, atol=1e-4)
    if expected is not None:
        np.testing.assert_allclose(onnx_scores, expected, atol=CARD_TOLERANCE)

    ref = work / "reference.npz"
    assert reference_main([str(checkpoint), "--out", str(ref), "--backend", "sentence-transformers"]) == 0
    report_path = work / "parity.json"
    code = parity_main([str(onnx_dir), "--reference", str(ref), "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    variant_scores = {}
    for name in Manifest.load(onnx_dir).variants:
        scores = card_scores(Embedder(onnx_dir, variant=name, threads=2).encode(list(CARD_TEXTS)))
        variant_scores[name] = scores.tolist()
        print(f"{name}: card scores {variant_scores[name]}; gate "
              f"{'PASS' if report['variants'][name]['gate']['passed'] else 'FAIL'}")
    assert code == 0, {n: v["gate"]["failures"] for n, v in report["variants"].items()}
    return {"st": st_scores.tolist(), "variants": variant_scores, "report": report}


def test_card_pipeline_synthetic(tiny_gte_dir, tmp_path):
    """The tiny synthetic model of conftest (same seed and overrides) as a sentence-transformers folder."""
    from gte_onnx.export.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = save_checkpoint(
        load_checkpoint(GTE_ID, random_weights=True, seed=0, config_overrides=TINY_OVERRIDES), tmp_path / "ckpt"
    )
    result = run_card_pipeline(checkpoint, tiny_gte_dir, tmp_path, expected=None)
    fp32 = result["report"]["variants"]["fp32"]["figures"]
    assert fp32["max_abs_diff"] < 1e-4 and fp32["token_mismatches"] == 0
    # random weights: the scores are not the card's, which is exactly what the real-weight test checks
    assert not np.allclose(result["variants"]["fp32"], CARD_SCORES, atol=1.0)
    # The reference made from the saved synthetic checkpoint knows its weights are the seeded random ones,
    # so parity finds nothing suspect in comparing it with the folder exported from the same weights.
    assert result["report"]["reference"]["random_weights"] is True
    assert result["report"]["warnings"] == []


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("GTE_MODERNBERT_PATH"),
    reason="set GTE_MODERNBERT_PATH to a local folder with the real Alibaba-NLP/gte-modernbert-base weights "
    "(e.g. `huggingface-cli download Alibaba-NLP/gte-modernbert-base --local-dir DIR`) to run the card test",
)
def test_card_acceptance_real_weights(tmp_path):
    from gte_onnx.export import export_model

    checkpoint = Path(os.environ["GTE_MODERNBERT_PATH"]).expanduser()
    if not (checkpoint / "config.json").is_file() or not any(checkpoint.glob("*.safetensors")):
        pytest.fail(f"GTE_MODERNBERT_PATH={checkpoint} holds no config.json and *.safetensors")
    onnx_dir = export_model(str(checkpoint), tmp_path / "onnx", log=print)
    variants = os.environ.get("GTE_ACCEPTANCE_VARIANTS", "fp16,int8,q4")
    if variants:
        from gte_onnx.quantize.cli import main as quantize_main

        # Probe-set fidelity only: the data sets on the full-size model take tens of minutes on a CPU.
        assert quantize_main([str(onnx_dir), "--variants", variants, "--eval", "probe"]) in (0, 1)
    run_card_pipeline(checkpoint, onnx_dir, tmp_path, expected=CARD_SCORES)
