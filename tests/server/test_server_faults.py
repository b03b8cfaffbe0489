"""Faults: a model run that raises fails only the requests in that batch (with a JSON error and a typed
status), the next batches are served, /health reports a backend that keeps failing and its recovery;
SIGTERM under load answers every request already accepted before the process exits."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from gte_onnx.errors import BackendUnavailableError, InferenceError  # noqa: E402
from gte_onnx.server.app import create_app  # noqa: E402
from gte_onnx.server.errors import inference_error  # noqa: E402
from gte_onnx.server.settings import ServerSettings  # noqa: E402
from load_tests.load_server import Request, ServerProcess, ServerThread, fire  # noqa: E402

NAME = "tiny-gte"
POISON = "zebra"  # an input whose model run raises, in FaultyBackend
TEXTS = ["what is the capital of China?", "Beijing", "sorting algorithms"]


class FaultyBackend:
    """The real backend, whose run raises for a batch holding the POISON token (or for every batch while
    `broken`), as ONNX Runtime raises for a kernel failure. `hold` keeps the next batch waiting, so
    the requests sent meanwhile merge into one batch."""

    def __init__(self, inner):
        self._inner = inner
        self.poison_id = int(inner.tokenize([POISON], "end").ids[0][1])
        self.broken = False
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.batches: list[tuple[int, bool]] = []  # (rows, raised)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def run(self, key, rows):
        self.entered.set()
        self.hold.wait(30)
        poisoned = any(self.poison_id in row[0] for row in rows)
        self.batches.append((len(rows), poisoned or self.broken))
        if self.broken:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code (injected)")
        if poisoned:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : kernel failed on a marked input (injected)")
        return self._inner.run(key, rows)


def post_in_thread(url: str, route: str, body: dict, results: dict, key) -> threading.Thread:
    def post():
        try:
            results[key] = httpx.post(f"{url}{route}", json=body, timeout=60)
        except Exception as exc:  # the assertion names it
            results[key] = exc

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def wait_for_queue(url: str, inputs: int) -> None:
    deadline = time.monotonic() + 30
    while f"gte_onnx_queue_inputs {inputs}" not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < deadline, "the requests did not queue"
        time.sleep(0.02)


def test_a_failing_batch_fails_only_its_requests(backend, tiny_gte):
    faulty = FaultyBackend(backend)
    with ServerThread(create_app(faulty, ServerSettings(model_name=NAME))) as live:
        # The first request holds the worker; three more queue behind it and merge into one batch.
        faulty.hold.clear()
        results: dict = {}
        threads = [post_in_thread(live.url, "/embed", {"inputs": TEXTS[0]}, results, "first")]
        assert faulty.entered.wait(30)
        threads.append(post_in_thread(live.url, "/embed", {"inputs": [TEXTS[1]]}, results, "good"))
        threads.append(post_in_thread(live.url, "/v1/embeddings", {"input": [POISON]}, results, "openai bad"))
        threads.append(post_in_thread(live.url, "/embed", {"inputs": [POISON, "x"]}, results, "tei bad"))
        wait_for_queue(live.url, 4)
        faulty.hold.set()
        for thread in threads:
            thread.join(60)
        # The merged batch raised; re-run alone, each poisoned request fails and the clean one is served.
        assert faulty.batches[1] == (4, True)
        assert results["first"].status_code == 200 and results["good"].status_code == 200
        np.testing.assert_allclose(results["good"].json(), tiny_gte.encode([TEXTS[1]], normalize=True), atol=1e-5)
        openai_bad, tei_bad = results["openai bad"], results["tei bad"]
        assert openai_bad.status_code == 500 and tei_bad.status_code == 500
        assert openai_bad.json()["error"]["code"] == "inference_error"
        assert openai_bad.json()["error"]["type"] == "server_error"
        assert "kernel failed on a marked input" in openai_bad.json()["error"]["message"]
        assert tei_bad.json()["error_type"] == "inference_error"
        # The next batches are served, and one poisoned request does not make the server unhealthy.
        after = httpx.post(f"{live.url}/embed", json={"inputs": TEXTS})
        assert after.status_code == 200
        np.testing.assert_allclose(after.json(), tiny_gte.encode(TEXTS, normalize=True), atol=1e-5)
        assert httpx.get(f"{live.url}/health").status_code == 200


def test_health_reports_a_backend_that_keeps_failing(backend):
    faulty = FaultyBackend(backend)
    with ServerThread(create_app(faulty, ServerSettings(model_name=NAME, unhealthy_after=3))) as live:
        faulty.broken = True
        for i in range(2):
            assert httpx.post(f"{live.url}/embed", json={"inputs": TEXTS[0]}).status_code == 500
            assert httpx.get(f"{live.url}/health").status_code == 200, f"unhealthy after {i + 1} failures"
        assert httpx.post(f"{live.url}/embed", json={"inputs": TEXTS[0]}).status_code == 500
        health = httpx.get(f"{live.url}/health")
        assert health.status_code == 503 and health.json()["status"] == "failing"
        assert "model runs failed" in health.json()["detail"]
        assert "gte_onnx_consecutive_failed_batches 4" in httpx.get(f"{live.url}/metrics").text  # 3 + the probe
        faulty.broken = False  # the backend recovers: the probe /health runs succeeds
        assert httpx.get(f"{live.url}/health").json() == {"status": "ok"}
        assert httpx.post(f"{live.url}/embed", json={"inputs": TEXTS[0]}).status_code == 200


def test_runtime_failures_map_to_typed_errors(backend):
    import onnxruntime as ort

    session = ort.InferenceSession(str(backend._model.folder / "model.onnx"), providers=["CPUExecutionProvider"])
    try:  # a real ONNX Runtime failure: a rank-1 input where the graph needs (batch, length)
        session.run(None, {i.name: np.zeros(3, dtype=np.int64) for i in session.get_inputs()})
    except Exception as exc:
        error = inference_error(exc)
    assert type(error) is InferenceError and error.http_status == 500 and "InvalidArgument" in str(error)
    full = inference_error(MemoryError("Failed to allocate memory for requested buffer of size 123"))
    assert isinstance(full, BackendUnavailableError) and full.http_status == 503
    assert "retry later" in str(full)


# ---- SIGTERM under load ------------------------------------------------------------------------------------
@pytest.mark.slow  # a server process under load
def test_sigterm_under_load_answers_every_accepted_request(tiny_gte_dir):
    """The real server process: requests in flight when SIGTERM arrives are all answered 200, then it exits."""
    text = " ".join(["state of the art embedding search"] * 300)  # ~1500 tokens
    requests = [Request("/embed", [f"{i} {text}"] * 4) for i in range(40)]
    with ServerProcess(tiny_gte_dir, "--threads", "1") as server:
        outcome: dict = {}
        loader = threading.Thread(target=lambda: outcome.update(result=asyncio.run(fire(server.url, requests))))
        loader.start()
        deadline = time.monotonic() + 60
        while True:  # until every request is admitted (and the first ones are still running)
            metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
            if f"gte_onnx_requests_in_flight {len(requests)}" in metrics:
                break
            assert time.monotonic() < deadline and loader.is_alive(), "the requests were not all admitted"
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        exit_code = server.proc.wait(120)
        loader.join(120)
    statuses = outcome["result"].statuses
    assert statuses == [200] * len(requests), statuses
    assert all(len(payload) == 4 for payload in outcome["result"].payloads)
    assert exit_code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
