"""`gte-onnx serve` on a reranker folder: TEI /rerank and Cohere /v1/rerank equal Reranker's own scores."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from gte_onnx.server.app import create_app  # noqa: E402
from gte_onnx.server.backend import OnnxBackend  # noqa: E402
from gte_onnx.server.settings import ServerSettings  # noqa: E402
from load_tests.load_server import ServerThread  # noqa: E402

QUERY = "what is the capital of China?"
DOCS = ["Beijing", "sorting algorithms", "how to implement quick sort in python?", "Beijing is the capital of China."]
NAME = "tiny-reranker"


@pytest.fixture(scope="module")
def reranker(tiny_reranker_dir):
    from gte_onnx import Reranker

    return Reranker(tiny_reranker_dir, threads=1)


@pytest.fixture(scope="module")
def http(tiny_reranker_dir):
    backend = OnnxBackend(tiny_reranker_dir, threads=1)
    # Strict names here, so the 404 for another model name is covered on Cohere's route too.
    settings = ServerSettings(model_name=NAME, max_client_batch_size=8, strict_model_name=True)
    with ServerThread(create_app(backend, settings)) as live:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            yield client


def test_tei_rerank_matches_reranker(http, reranker):
    response = http.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True})
    assert response.status_code == 200, response.text
    got = response.json()
    want = reranker.rerank(QUERY, DOCS, return_documents=True)
    assert [r["index"] for r in got] == [r["index"] for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-5)
    assert [r["text"] for r in got] == [DOCS[r["index"]] for r in got]
    assert all(0.0 < r["score"] < 1.0 for r in got)


def test_tei_rerank_raw_scores_are_logits(http, reranker):
    got = http.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    logits = reranker.predict([(QUERY, d) for d in DOCS])
    np.testing.assert_allclose([r["score"] for r in got], logits[[r["index"] for r in got]], atol=1e-5)
    assert "text" not in got[0]


def test_cohere_rerank(http, reranker):
    documents = [DOCS[0], {"text": DOCS[1]}, DOCS[2], {"text": DOCS[3]}]
    response = http.post(
        "/v1/rerank", json={"model": NAME, "query": QUERY, "documents": documents, "top_n": 2, "return_documents": True}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    want = reranker.rerank(QUERY, DOCS, top_k=2)
    assert [r["index"] for r in body["results"]] == [r["index"] for r in want]
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], [r["score"] for r in want], atol=1e-5)
    assert body["results"][0]["document"] == {"text": DOCS[want[0]["index"]]}
    assert body["id"] and body["meta"]["billed_units"]["search_units"] == 1


@pytest.mark.parametrize(
    "route, body, status, words",
    [
        ("/rerank", {"query": QUERY, "texts": []}, 422, "no documents"),
        ("/rerank", {"query": "", "texts": ["a"]}, 422, "query is an empty string"),
        ("/rerank", {"query": QUERY, "texts": ["a", ""]}, 422, "documents[1] is an empty string"),
        ("/rerank", {"query": QUERY, "texts": ["a"] * 9}, 413, "limit of 8"),
        ("/rerank", {"query": QUERY, "texts": "a"}, 422, "texts"),
        ("/rerank", {"query": QUERY, "texts": ["a"], "raw_scores": 1}, 422, "raw_scores"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": 0}, 422, "top_n"),
        ("/v1/rerank", {"query": QUERY, "documents": [{"txt": "a"}]}, 422, "documents must be"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a"], "model": "other"}, 404, "not served here"),
        ("/embed", {"inputs": "a"}, 400, "needs a 'embedding' model"),
        ("/v1/embeddings", {"input": "a"}, 400, "needs a 'embedding' model"),
        ("/", {"inputs": "a"}, 400, "needs a 'embedding' model"),
    ],
)
def test_rerank_errors(http, route, body, status, words):
    response = http.post(route, json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    message = payload["error"]["message"] if route.startswith("/v1/") else payload["error"]
    assert words in message


def test_over_long_pair_refused_when_truncate_is_false(http, reranker):
    long_doc = " ".join(["word"] * (reranker.max_length + 10))
    refused = http.post("/rerank", json={"query": QUERY, "texts": [long_doc], "truncate": False})
    assert refused.status_code == 413 and refused.json()["error_type"] == "input_too_long"
    cut = http.post("/rerank", json={"query": QUERY, "texts": [long_doc, "Beijing"]})
    assert cut.status_code == 200 and len(cut.json()) == 2
