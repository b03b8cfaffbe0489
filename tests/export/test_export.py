from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gte_onnx.export.checkpoint import CheckpointError, load_checkpoint, read_max_length
from gte_onnx.export.validate import ExportValidationError, validate_export
from gte_onnx.folder.manifest import Manifest

from ..conftest import GTE_ID, TINY_OVERRIDES, minilm_checkpoint


def test_minilm_matches_sentence_transformers(exported_minilm_dir):
    """BERT-family path on real trained weights: mean pooling + normalisation against sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    from gte_onnx import Embedder

    texts = ["A man is playing a guitar.", "A woman slices tomatoes.", "The cat sits on the mat", "x " * 300]
    ours = Embedder(exported_minilm_dir, threads=1).encode(texts)
    ref = SentenceTransformer(str(minilm_checkpoint()), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.abs(ours - ref).max() < 1e-5
    assert ours.truncated == (3,)  # 300 words > max_seq_length 256, as sentence-transformers cuts too


def test_gte_shipped_files_need_no_network(exported_tiny_gte_dir):
    manifest = Manifest.load(exported_tiny_gte_dir)
    assert manifest.source["random_weights"] is True and manifest.source["seed"] == 0
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest.tools)
    assert (exported_tiny_gte_dir / "tokenizer.json").is_file()
    for n in ("5", "127", "128", "129", "600"):
        assert manifest.validation["lengths"][n] <= 1e-4
    assert manifest.validation["alone_vs_batch"] <= 1e-4


def test_max_length_ignores_the_1e30_sentinel():
    from gte_onnx.export.checkpoint import shipped_files

    ckpt_dir = shipped_files(GTE_ID)
    from transformers import AutoConfig

    assert read_max_length(ckpt_dir, AutoConfig.from_pretrained(ckpt_dir)) == 8192


def test_pickle_checkpoints_are_refused(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(minilm_checkpoint(), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(str(folder))


def test_unknown_config_override_is_refused():
    with pytest.raises(CheckpointError, match="no such field"):
        load_checkpoint(GTE_ID, random_weights=True, config_overrides={"hiden_size": 8})


def test_random_weights_are_seeded():
    import torch

    a = load_checkpoint(GTE_ID, random_weights=True, seed=3, config_overrides=TINY_OVERRIDES).model
    b = load_checkpoint(GTE_ID, random_weights=True, seed=3, config_overrides=TINY_OVERRIDES).model
    c = load_checkpoint(GTE_ID, random_weights=True, seed=4, config_overrides=TINY_OVERRIDES).model
    wa, wb, wc = (m.embeddings.tok_embeddings.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_validation_fails_with_a_typed_error_naming_output_and_length(exported_tiny_gte_dir):
    """A graph that disagrees with PyTorch must fail export: compare the exported tiny graph against a
    PyTorch model with other weights."""
    import onnxruntime as ort

    other = load_checkpoint(GTE_ID, random_weights=True, seed=1, config_overrides=TINY_OVERRIDES).model
    session = ort.InferenceSession(str(exported_tiny_gte_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(ExportValidationError) as info:
        validate_export(other, session, "embedding", ["input_ids", "attention_mask"], "last_hidden_state",
                        8192, 50368, [50280, 50281, 50282, 50283, 50284], 50281, 50282, 50283, lengths=[5, 129])
    err = info.value
    assert err.output == "last_hidden_state" and err.case == "length 5" and err.max_diff > 1e-4
    assert "max |diff|" in str(err)


def test_save_checkpoint_reproduces_the_model(tmp_path):
    from gte_onnx.export import export_model

    out = export_model(GTE_ID, tmp_path / "onnx", random_weights=True, seed=0, config_overrides=TINY_OVERRIDES,
                       save_checkpoint_dir=tmp_path / "ckpt", validate_lengths=[5, 70], log=lambda _m: None,
                       attention="naive")
    source = json.loads((tmp_path / "ckpt" / "gte-onnx-source.json").read_text())
    assert source["random_weights"] and source["seed"] == 0
    reloaded = load_checkpoint(str(tmp_path / "ckpt"))
    original = load_checkpoint(GTE_ID, random_weights=True, seed=0, config_overrides=TINY_OVERRIDES)
    import torch

    for (name, p), (_, q) in zip(reloaded.model.named_parameters(), original.model.named_parameters()):
        assert torch.equal(p, q), name
    assert Manifest.load(out).pooling == "cls"


@pytest.mark.parametrize("exported, converted", [("exported_tiny_gte_dir", "tiny_gte_dir"),
                                                 ("exported_minilm_dir", "minilm_dir")])
def test_the_export_and_the_torch_free_conversion_of_the_same_weights_embed_alike(exported, converted, request):
    """The runtime's fixtures are converted without torch; the exporter must agree with them."""
    from gte_onnx import Embedder

    texts = ["what is the capital of China?", "Beijing is the capital of China.", "sorting algorithms " * 150]
    by_torch, by_numpy = (Embedder(request.getfixturevalue(name), threads=1) for name in (exported, converted))
    assert by_torch.manifest.validation["reference"] == "pytorch"
    assert by_numpy.manifest.validation["reference"] == "numpy"
    np.testing.assert_allclose(by_torch.encode(texts), by_numpy.encode(texts), atol=1e-5)
