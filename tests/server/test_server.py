"""`gte-onnx serve` on loopback, called by clients no one here wrote (openai, huggingface_hub), plus the
error contract, auth, metrics, admission (429) and graceful shutdown.

Servers run in a thread (uvicorn on a free 127.0.0.1 port); answers are compared with Embedder.encode
of the same folder in this process.
"""

from __future__ import annotations

import base64
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from gte_onnx.server.app import create_app  # noqa: E402
from gte_onnx.server.settings import ServerSettings  # noqa: E402
from load_tests.load_server import ServerThread  # noqa: E402

TEXTS = ["what is the capital of China?", "how to implement quick sort in python?", "Beijing", "sorting algorithms"]
NAME = "tiny-gte"
ALIAS = "text-embedding-3-small"


@pytest.fixture(scope="module")
def server(backend):
    settings = ServerSettings(model_name=NAME, aliases=(ALIAS,), max_client_batch_size=8, payload_limit=64 * 1024)
    with ServerThread(create_app(backend, settings)) as live:
        yield live


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def openai_client(url: str, api_key: str = "unused"):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)


# ---- real clients ------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_openai_client_matches_encode(server, tiny_gte, encoding_format):
    """The official client; None lets it pick (it asks for base64 and decodes it with numpy)."""
    client = openai_client(server.url)
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    response = client.embeddings.create(model=NAME, input=TEXTS, **kwargs)
    if encoding_format == "base64":
        got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in response.data])
    else:
        got = np.asarray([d.embedding for d in response.data], dtype=np.float32)
    want = tiny_gte.encode(TEXTS, normalize=True)
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert response.usage.prompt_tokens == sum(tiny_gte.count_tokens(TEXTS)) == response.usage.total_tokens
    assert response.model == NAME


def test_openai_client_single_string_and_alias(server, tiny_gte):
    response = openai_client(server.url).embeddings.create(model=ALIAS, input="Beijing")
    assert len(response.data) == 1 and response.model == ALIAS
    np.testing.assert_allclose(response.data[0].embedding, tiny_gte.encode("Beijing", normalize=True), atol=1e-5)


def test_openai_token_ids_equal_text(server, backend, tiny_gte):
    ids = [row.tolist() for row in backend.tokenize(TEXTS[:2], "end").ids]
    client = openai_client(server.url)
    several = client.embeddings.create(model=NAME, input=ids, encoding_format="float")
    one = client.embeddings.create(model=NAME, input=ids[0], encoding_format="float")
    want = tiny_gte.encode(TEXTS[:2], normalize=True)
    np.testing.assert_allclose([d.embedding for d in several.data], want, atol=1e-5)
    np.testing.assert_allclose(one.data[0].embedding, want[0], atol=1e-5)
    assert several.usage.prompt_tokens == len(ids[0]) + len(ids[1])


def test_openai_client_errors(server, backend):
    openai = pytest.importorskip("openai")
    client = openai_client(server.url)
    with pytest.raises(openai.UnprocessableEntityError, match="Matryoshka"):
        client.embeddings.create(model=NAME, input="x", dimensions=backend.dim // 2)
    # The model's own width is accepted.
    assert len(client.embeddings.create(model=NAME, input="x", dimensions=backend.dim).data[0].embedding) == backend.dim
    with pytest.raises(openai.UnprocessableEntityError, match="empty"):
        client.embeddings.create(model=NAME, input=[])


def test_huggingface_inference_client_speaks_tei(server, tiny_gte):
    hub = pytest.importorskip("huggingface_hub")
    client = hub.InferenceClient(base_url=server.url)
    got = client.feature_extraction("Beijing")
    assert got.shape == (1, tiny_gte.dim)
    np.testing.assert_allclose(got[0], tiny_gte.encode("Beijing", normalize=True), atol=1e-5)
    raw = client.feature_extraction("Beijing", normalize=False)
    np.testing.assert_allclose(raw[0], tiny_gte.encode("Beijing", normalize=False), atol=1e-5)


# ---- TEI options ---------------------------------------------------------------------------------------
def test_tei_embed_batch_and_normalize(http, tiny_gte):
    response = http.post("/embed", json={"inputs": TEXTS, "normalize": False})
    assert response.status_code == 200
    np.testing.assert_allclose(response.json(), tiny_gte.encode(TEXTS, normalize=False), atol=1e-5)


def test_tei_truncation(http, backend, tiny_gte):
    long_text = " ".join(["word"] * (backend.max_length + 20))
    refused = http.post("/embed", json={"inputs": long_text, "truncate": False})
    assert refused.status_code == 413
    assert "max length" in refused.json()["error"] and refused.json()["error_type"] == "input_too_long"
    left = http.post("/embed", json={"inputs": [long_text + " tail"], "truncate": True, "truncation_direction": "Left"})
    assert left.status_code == 200
    from gte_onnx.inference.tokenize import TruncationWarning

    with pytest.warns(TruncationWarning):
        want = tiny_gte.encode([long_text + " tail"], normalize=True, truncate="start")
    np.testing.assert_allclose(left.json(), want, atol=1e-5)


# ---- the error contract: JSON bodies, 4xx for bad input, never a 500 ---------------------------------------
BAD_REQUESTS = [
    # (route, body: dict to send as JSON, or bytes sent raw as JSON, expected status, words in the message)
    ("/v1/embeddings", b"{not json", 422, "not valid JSON"),
    ("/v1/embeddings", b"[1, 2]", 422, "JSON object"),
    ("/v1/embeddings", {"model": NAME}, 422, "input"),
    ("/v1/embeddings", {"input": None}, 422, "input must be"),
    ("/v1/embeddings", {"input": ["a", 1]}, 422, "input must be"),
    ("/v1/embeddings", {"input": [True, False]}, 422, "input must be"),  # not token ids 1 and 0
    ("/v1/embeddings", {"input": ["1", "2"], "encoding_format": "int8"}, 422, "encoding_format"),
    ("/v1/embeddings", {"input": ""}, 422, "empty string"),
    ("/v1/embeddings", {"input": ["ok", ""]}, 422, "input[1] is an empty string"),
    ("/v1/embeddings", {"input": [[]]}, 422, "no token ids"),
    ("/v1/embeddings", {"input": [[-1, 5]]}, 422, "not a token id"),
    ("/v1/embeddings", {"input": [10**12]}, 422, "not a token id"),
    ("/v1/embeddings", {"input": [[5, 2**70]]}, 422, "input[0][1]"),  # beyond int64 (found by fuzzing)
    ("/v1/embeddings", {"input": ["a"] * 9}, 413, "limit of 8"),
    ("/v1/embeddings", {"input": "x" * 70_000}, 413, "larger than the server's limit"),
    ("/v1/embeddings", {"input": "x", "dimensions": "64"}, 422, "dimensions"),
    ("/embed", b"\xff\xfe\x00", 400, "send UTF-8 JSON"),
    ("/embed", {"inputs": []}, 422, "inputs is empty"),
    ("/embed", {"inputs": "x", "normalize": "yes"}, 422, "normalize"),
    ("/embed", {"inputs": "x", "truncation_direction": "up"}, 422, "truncation_direction"),
    ("/embed", {"inputs": "x", "prompt_name": "query"}, 422, "no prompts"),
    ("/embed", {"inputs": "x", "dimensions": 3}, 422, "Matryoshka"),
    ("/rerank", {"query": "q", "texts": ["a"]}, 400, "needs a 'rerank' model"),
    ("/v1/rerank", {"query": "q", "documents": ["a"]}, 400, "needs a 'rerank' model"),
]


@pytest.mark.parametrize("route, body, status, words", BAD_REQUESTS)
def test_bad_requests_get_json_errors(http, route, body, status, words):
    if isinstance(body, bytes):
        response = http.post(route, content=body, headers={"content-type": "application/json"})
    else:
        response = http.post(route, json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    if route.startswith("/v1/"):  # OpenAI's shape
        message = payload["error"]["message"]
        assert payload["error"]["type"] and payload["error"]["code"]
    else:  # TEI's shape
        message = payload["error"]
        assert payload["error_type"]
    assert words in message


def test_unknown_routes_and_methods_are_json(http):
    missing = http.get("/v2/whatever")
    assert missing.status_code == 404 and "no route" in missing.json()["error"]
    wrong_method = http.get("/v1/embeddings")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_body_over_limit_without_content_length_is_refused(http):
    def chunks():
        for _ in range(40):
            yield b" " * 4096  # 160 KiB of whitespace, streamed (chunked encoding, no Content-Length)

    response = http.post("/embed", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error_type"] == "payload_too_large"


# ---- operations ----------------------------------------------------------------------------------------
def test_health_models_info(http, backend):
    assert http.get("/health").json() == {"status": "ok"}
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [NAME, ALIAS] and models["object"] == "list"
    info = http.get("/info").json()
    assert info["dim"] == backend.dim and info["task"] == "embedding" and info["max_input_length"] == backend.max_length
    schema = http.get("/openapi.json").json()
    assert {"/v1/embeddings", "/embed", "/rerank", "/v1/rerank", "/health", "/metrics"} <= set(schema["paths"])


def test_metrics_count_requests_and_batches(http):
    def counter(text: str, series: str) -> float:
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    ok = 'gte_onnx_requests_total{route="/embed",status="200"}'
    before = http.get("/metrics").text
    for _ in range(3):
        assert http.post("/embed", json={"inputs": ["a b", "c"]}).status_code == 200
    assert http.post("/embed", json={"inputs": []}).status_code == 422
    response = http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    assert counter(after, ok) - counter(before, ok) == 3
    bad = 'gte_onnx_requests_total{route="/embed",status="422"}'
    assert counter(after, bad) - counter(before, bad) == 1
    assert counter(after, "gte_onnx_inputs_total") - counter(before, "gte_onnx_inputs_total") == 6
    assert "# TYPE gte_onnx_request_duration_seconds histogram" in after
    assert 'gte_onnx_model_info{' in after


# ---- auth ------------------------------------------------------------------------------------------------
def test_api_key(backend):
    openai = pytest.importorskip("openai")
    hub = pytest.importorskip("huggingface_hub")
    key = "s3cret-key"
    with ServerThread(create_app(backend, ServerSettings(model_name=NAME, api_key=key))) as live:
        with httpx.Client(base_url=live.url) as http:
            assert http.get("/health").status_code == 200  # probes need no key
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {key}"},
                            {"Authorization": f"Bearer {key}x"}, {"Authorization": "Bearer"}):
                response = http.post("/embed", json={"inputs": "x"}, headers=headers)
                assert response.status_code == 401, headers
                assert response.headers["www-authenticate"] == "Bearer"
                assert "API key" in response.json()["error"]
            assert http.get("/metrics").status_code == 401
            assert http.post("/v1/embeddings", json={"input": "x"}).json()["error"]["code"] == "unauthorized"
            ok = http.post("/embed", json={"inputs": "x"}, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai_client(live.url, "wrong").embeddings.create(model=NAME, input="x")
        assert openai_client(live.url, key).embeddings.create(model=NAME, input="x").data
        assert hub.InferenceClient(base_url=live.url, api_key=key).feature_extraction("x").shape == (1, backend.dim)


# ---- admission and shutdown ---------------------------------------------------------------------------------
class GatedBackend:
    """The real backend, but each batch waits for `gate` to open: requests pile up deterministically."""

    def __init__(self, inner):
        self._inner = inner
        self.gate = threading.Event()
        self.batches: list[int] = []
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def run(self, key, rows):
        self.entered.set()
        self.gate.wait(30)
        self.batches.append(len(rows))
        return self._inner.run(key, rows)


def _post_in_thread(url: str, body: dict, results: list) -> threading.Thread:
    def post():
        try:
            results.append(httpx.post(f"{url}/embed", json=body, timeout=60))
        except Exception as exc:  # the assertion names it
            results.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def test_over_capacity_is_429_and_queued_requests_merge(backend, tiny_gte):
    gated = GatedBackend(backend)
    settings = ServerSettings(model_name=NAME, max_concurrent_requests=3)
    with ServerThread(create_app(gated, settings)) as live:
        results: list = []
        threads = [_post_in_thread(live.url, {"inputs": TEXTS[0]}, results)]
        assert gated.entered.wait(30)  # the first batch is in the worker, holding its slot
        threads += [_post_in_thread(live.url, {"inputs": [t]}, results) for t in TEXTS[1:3]]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until both wait in the queue behind the gated batch
            metrics = httpx.get(f"{live.url}/metrics").text
            if "gte_onnx_queue_inputs 2" in metrics and "gte_onnx_requests_in_flight 3" in metrics:
                break
            time.sleep(0.02)
        # The worker is held inside a batch, yet the event loop answers at once.
        assert httpx.get(f"{live.url}/health", timeout=5).json() == {"status": "ok"}
        refused = httpx.post(f"{live.url}/embed", json={"inputs": "one too many"})
        assert refused.status_code == 429 and refused.json()["error_type"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        gated.gate.set()
        for thread in threads:
            thread.join(60)
    assert all(getattr(r, "status_code", None) == 200 for r in results), results
    # The two requests that queued behind the first batch ran together in one batch.
    assert gated.batches == [1, 2]
    got = sorted(tuple(np.round(r.json()[0], 5)) for r in results)
    want = sorted(tuple(np.round(v, 5)) for v in tiny_gte.encode(TEXTS[:3], normalize=True))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_graceful_shutdown_finishes_in_flight_requests(backend):
    gated = GatedBackend(backend)
    live = ServerThread(create_app(gated, ServerSettings(model_name=NAME))).__enter__()
    results: list = []
    thread = _post_in_thread(live.url, {"inputs": ["in flight", "too"]}, results)
    assert gated.entered.wait(30)
    live.server.should_exit = True  # what uvicorn's SIGTERM handler does
    deadline = time.monotonic() + 30
    while True:  # the listening socket closes: no new connections once shutdown has begun
        try:
            socket.create_connection(("127.0.0.1", live.port), timeout=1).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "the server still accepts connections"
        time.sleep(0.05)
    assert live.thread.is_alive()  # still waiting for the in-flight request
    gated.gate.set()
    thread.join(60)
    live.thread.join(60)
    assert not live.thread.is_alive()
    assert len(results) == 1 and results[0].status_code == 200, results
    assert len(results[0].json()) == 2


# ---- quantized vectors on TEI's /embed (--embed-precision) ------------------------------------------------
@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_tei_embed_serves_the_configured_precision(backend, tiny_gte, precision):
    from gte_onnx.precision import output_dtype, vector_width

    ranges = tiny_gte.calibrate_ranges(TEXTS * 3) if precision in ("int8", "uint8") else None
    settings = ServerSettings(model_name=NAME, embed_precision=precision, embed_ranges=ranges)
    want = tiny_gte.encode(TEXTS, precision=precision, ranges=ranges)
    dtype, width = output_dtype(precision), vector_width(precision, tiny_gte.dim)
    with ServerThread(create_app(backend, settings)) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        plain = http.post("/embed", json={"inputs": TEXTS})
        assert plain.status_code == 200, plain.text
        rows = plain.json()
        assert len(rows) == 4 and all(len(row) == width for row in rows)
        if precision == "float32":
            np.testing.assert_allclose(np.asarray(rows, dtype=np.float32), want, atol=1e-6)
        else:
            assert all(isinstance(x, int) for row in rows for x in row)  # TEI-style JSON of ints
            np.testing.assert_array_equal(np.asarray(rows, dtype=dtype), want)
        packed = http.post("/embed", json={"inputs": TEXTS, "encoding_format": "base64"})
        assert packed.status_code == 200, packed.text
        got = np.stack([np.frombuffer(base64.b64decode(b), dtype=dtype.newbyteorder("<")) for b in packed.json()])
        assert got.shape == (4, width)
        if precision == "float32":
            np.testing.assert_allclose(got, want, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)
        openai = http.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"}).json()  # unchanged
        floats = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in openai["data"]])
        np.testing.assert_allclose(floats, tiny_gte.encode(TEXTS, normalize=True), atol=1e-6)
        info = http.get("/info").json()
        assert info["embed_precision"] == precision
        assert (info["embed_ranges"] is None) == (ranges is None)
        if precision == "int8":
            refused = http.post("/embed", json={"inputs": TEXTS, "normalize": False})
            assert refused.status_code == 422 and "normalised" in refused.text


def test_int8_settings_without_ranges_are_refused():
    from gte_onnx.errors import PrecisionError

    with pytest.raises(PrecisionError, match="--embed-precision int8 needs calibration ranges"):
        ServerSettings(model_name=NAME, embed_precision="int8")
    with pytest.raises(PrecisionError, match="precision must be one of"):
        ServerSettings(model_name=NAME, embed_precision="int4")
