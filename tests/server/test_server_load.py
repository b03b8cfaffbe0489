"""The bounded load test on loopback: 500 requests in flight at once, mixed lengths and routes.

Zero 5xx, every answer equal to Embedder.encode of the same texts, server RSS bounded; the figures
(throughput against encode called directly, RSS peak, latency) are printed (pytest -s shows them).
The same run as a script: python load_tests/load_server.py MODEL_DIR --requests 600
"""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("psutil")

from load_tests.load_server import format_figures, run_load  # noqa: E402

pytestmark = pytest.mark.slow  # load tests: hundreds of requests, seconds of sustained load each

REQUESTS = 500


def test_500_concurrent_requests_on_loopback(tiny_gte_dir):
    figures = run_load(tiny_gte_dir, n_requests=REQUESTS, threads=1, max_words=200)
    print("\n" + format_figures(figures))
    assert figures["status_counts"] == {200: REQUESTS}, figures["status_counts"]
    assert figures["server_5xx"] == 0
    assert not figures["mismatched"], f"answers differing from encode: {figures['mismatched'][:10]}"
    assert figures["max_abs_diff"] < 1e-4
    # Bounded memory: the queue holds tokens, the model runs at most max_batch_tokens padded tokens.
    assert figures["rss_peak_mb"] - figures["rss_start_mb"] < 512, figures
    assert figures["exit_code"] in (0, -signal.SIGTERM)


def test_sustained_load_with_429s_on_loopback(tiny_gte_dir):
    """The soak script's run, small: 40 clients in a loop for 8 s against 8 request slots, so some are
    refused with 429 + Retry-After and come back; lengths from 1 to 8192 tokens."""
    from load_tests.soak_server import format_soak, soak_figures

    figures = soak_figures(tiny_gte_dir, clients=40, duration_s=8.0, max_tokens=8192, pool_size=24,
                           threads=1, max_concurrent_requests=8)
    print("\n" + format_soak(figures))
    assert figures["pool_min_tokens"] <= 3 and figures["pool_max_tokens"] >= 8000
    assert figures["server_5xx"] == 0 and figures["transport_error_count"] == 0, figures
    assert figures["answers"] > 0 and set(figures["status_counts"]) <= {200, 429}, figures["status_counts"]
    assert figures["status_counts"].get(429, 0) > 0 and figures["refused_without_retry_after"] == 0
    assert figures["within_1e-5"] == figures["answers"], figures["max_abs_diff"]
    assert figures["rss_peak_mb"] - figures["rss_start_mb"] < 512, figures
    assert figures["exit_code"] in (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def tiny_int8_dir(tiny_gte_dir, tmp_path_factory):
    """The tiny model with an int8 variant (probe gate only), in a private copy."""
    import shutil

    from gte_onnx.folder.manifest import Manifest
    from gte_onnx.quantize.build import QuantizeOptions, quantize_folder

    folder = tmp_path_factory.mktemp("load-int8") / "tiny-gte"
    shutil.copytree(tiny_gte_dir, folder, ignore=shutil.ignore_patterns("model_*.onnx"))
    manifest = Manifest.load(folder)
    manifest.replace(variants={"fp32": manifest.variants["fp32"]}).save(folder)
    quantize_folder(folder, ["int8"], QuantizeOptions(evaluation="probe", threads=1), log=lambda _m: None)
    return folder


def test_int8_answers_under_load_equal_encode(tiny_int8_dir):
    """int8 quantizes activations per token, so what the server batches together cannot move a vector:
    every answer equals encode of the text alone-or-batched to float32 rounding."""
    from load_tests.soak_server import format_soak, soak_figures

    figures = soak_figures(tiny_int8_dir, clients=24, duration_s=6.0, max_tokens=2048, pool_size=16,
                           variant="int8", threads=1, max_concurrent_requests=8)
    print("\n" + format_soak(figures))
    assert figures["server_5xx"] == 0 and figures["answers"] > 0, figures["status_counts"]
    assert figures["max_abs_diff"] <= 1e-6 and figures["encode_alone_vs_batched_diff"] <= 1e-6, figures
