"""`python -m gte_onnx.server` / `gte-onnx serve` as a process: options, auth, SIGTERM, start-up errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from load_tests.load_server import HOST, ServerProcess  # noqa: E402

SERVE = [sys.executable, "-m", "gte_onnx.server"]
FORBIDDEN = ("torch", "transformers", "onnx", "gte_onnx.export", "gte_onnx.quantize", "gte_onnx.parity")


def test_serve_process_end_to_end(tiny_gte_dir):
    openai = pytest.importorskip("openai")
    from gte_onnx import Embedder

    key = "k-123"
    options = ["--threads", "1", "--model-name", "gte", "--alias", "text-embedding-3-small", "--api-key", key]
    with ServerProcess(tiny_gte_dir, *options) as server:
        auth = {"Authorization": f"Bearer {key}"}
        models = httpx.get(f"{server.url}/v1/models", headers=auth).json()
        assert [m["id"] for m in models["data"]] == ["gte", "text-embedding-3-small"]
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        response = client.embeddings.create(model="text-embedding-3-small", input=["Beijing", "sorting algorithms"])
        want = Embedder(tiny_gte_dir, threads=1).encode(["Beijing", "sorting algorithms"], normalize=True)
        np.testing.assert_allclose([d.embedding for d in response.data], want, atol=1e-5)
        code = server.terminate()
        log = server.output()
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the process ends "by SIGTERM" (as
    # process managers expect); it must not be a crash.
    assert code in (0, -signal.SIGTERM), log
    assert "Traceback" not in log


def test_bad_model_folder_is_one_clear_line(tmp_path):
    result = subprocess.run([*SERVE, str(tmp_path), "--port", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "gte-onnx.json" in result.stderr and "Traceback" not in result.stderr


def test_taken_port_is_a_clear_error(tiny_gte_dir):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*SERVE, str(tiny_gte_dir), "--host", HOST, "--port", str(port), "--threads", "1"],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "already in use" in result.stderr
    assert f"could not serve on {HOST}:{port}" in result.stderr


def test_server_stays_torch_free(tiny_gte_dir):
    """Building the app and serving a request imports none of the export-side stacks."""
    code = f"""
import sys
from gte_onnx.server.main import build_app, build_parser
from starlette.testclient import TestClient
app, _, _ = build_app(build_parser().parse_args([{str(tiny_gte_dir)!r}, "--threads", "1"]))
with TestClient(app) as client:
    assert client.post("/embed", json={{"inputs": "x"}}).status_code == 200
print(sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r} or m in {FORBIDDEN!r}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("value, words", [("bert", "expected 'auto', 'model', 'tiktoken'"),
                                          ("tiktoken:no_such_encoding", "tiktoken encoding 'no_such_encoding'")])
def test_bad_token_ids_option_is_one_clear_line(tiny_gte_dir, value, words):
    pytest.importorskip("tiktoken")
    result = subprocess.run([*SERVE, str(tiny_gte_dir), "--port", "0", "--threads", "1", "--token-ids", value],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr


def test_embed_precision_without_ranges_is_one_clear_line(tiny_gte_dir):
    result = subprocess.run([*SERVE, str(tiny_gte_dir), "--port", "0", "--threads", "1", "--embed-precision", "int8"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--embed-precision int8 needs calibration ranges" in result.stderr


def test_embed_precision_option_reaches_the_app(tiny_gte_dir, tmp_path):
    from gte_onnx.precision import calibrate
    from gte_onnx.server.main import build_app, build_parser

    sample = np.random.default_rng(0).normal(size=(40, 64)).astype(np.float32)
    ranges_file = calibrate(sample / np.linalg.norm(sample, axis=1, keepdims=True)).save(tmp_path / "r.json")
    args = build_parser().parse_args([str(tiny_gte_dir), "--threads", "1", "--embed-precision", "uint8",
                                      "--embed-ranges", str(ranges_file)])
    _, _, settings = build_app(args)
    assert settings.embed_precision == "uint8" and settings.embed_ranges.dim == 64
