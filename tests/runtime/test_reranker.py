from __future__ import annotations

import warnings

import numpy as np
import pytest

from gte_onnx import Reranker
from gte_onnx.errors import InvalidInputError
from gte_onnx.folder.manifest import Manifest

from ..conftest import RERANKER_ID, TINY_OVERRIDES

QUERY = "what is the capital of China?"
DOCS = ["Beijing is the capital of China.", "how to implement quick sort in python?", "Paris", "sorting algorithms",
        "The Forbidden City lies in the centre of Beijing. " * 12]


@pytest.fixture(scope="module")
def reranker(tiny_reranker_dir):
    return Reranker(tiny_reranker_dir, threads=1)


def test_manifest_says_rerank(tiny_reranker_dir):
    manifest = Manifest.load(tiny_reranker_dir)
    assert manifest.task == "rerank" and manifest.output == "logits" and manifest.pooling == "none"
    assert manifest.max_length == 8192


def test_ranking_and_logits_match_pytorch(reranker):
    import torch

    from gte_onnx.export.checkpoint import load_checkpoint

    model = load_checkpoint(RERANKER_ID, random_weights=True, seed=0, config_overrides=TINY_OVERRIDES).model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(reranker.folder)
    enc = tok([QUERY] * len(DOCS), DOCS, padding=True, truncation=True, max_length=8192, return_tensors="pt")
    with torch.inference_mode():
        ref = model(**enc).logits[:, 0].numpy()
    ours = reranker.predict([(QUERY, d) for d in DOCS])
    assert ours.shape == (len(DOCS),)
    assert np.abs(ours - ref).max() < 1e-4
    ranked = reranker.rerank(QUERY, DOCS)
    assert [r["index"] for r in ranked] == list(np.argsort(-ref, kind="stable"))
    sig = reranker.predict([(QUERY, d) for d in DOCS], activation="sigmoid")
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-ours)), rtol=1e-6)


def test_rerank_top_k_and_documents(reranker):
    ranked = reranker.rerank(QUERY, DOCS, top_k=2, return_documents=True)
    assert len(ranked) == 2 and ranked[0]["score"] >= ranked[1]["score"]
    assert ranked[0]["text"] == DOCS[ranked[0]["index"]]


def test_tokenizer_json_padding_to_8000_is_overridden(reranker):
    # The shipped tokenizer.json pads every input to 8000 tokens; ours must be unpadded.
    import json

    assert json.loads((reranker.folder / "tokenizer.json").read_text())["padding"]["strategy"] == {"Fixed": 8000}
    enc = reranker.tokenizer.encode_pairs([(QUERY, "Beijing")])
    assert enc.lengths == [len(enc.ids[0])] and len(enc.ids[0]) < 20


def test_over_long_pairs_cut_the_document_not_the_query(tiny_reranker_dir, tmp_path):
    import shutil

    folder = tmp_path / "short"
    shutil.copytree(tiny_reranker_dir, folder)
    Manifest.load(folder).replace(max_length=64).save(folder)
    model = Reranker(folder, threads=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict([(QUERY, "word " * 200), (QUERY, "short")])
    assert model.last_truncated == (0,)
    assert any("1 of 2" in str(w.message) for w in caught)
    enc = model.tokenizer.encode_pairs([(QUERY, "word " * 200)])
    query_ids = model.tokenizer.encode([QUERY]).ids[0]
    assert len(enc.ids[0]) == 64
    assert enc.ids[0][: len(query_ids)].tolist() == query_ids.tolist()  # the query survives whole


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r: r.rerank(QUERY, []), "documents is empty"),
        (lambda r: r.rerank(QUERY, ["a", 3]), r"documents\[1\] is int"),
        (lambda r: r.rerank(None, ["a"]), "query must be a string"),
        (lambda r: r.rerank(QUERY, "one string"), "not one string"),
        (lambda r: r.predict([QUERY]), "a query alone cannot be scored"),
        (lambda r: r.predict([]), "pairs is empty"),
        (lambda r: r.predict([(QUERY, 5)]), "both must be str"),
        (lambda r: r.rerank(QUERY, ["a"], top_k=0), "top_k"),
    ],
)
def test_bad_input(reranker, call, message):
    with pytest.raises(InvalidInputError, match=message):
        call(reranker)
