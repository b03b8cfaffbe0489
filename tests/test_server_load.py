"""The bounded load test on loopback: 500 requests in flight at once, mixed lengths and routes.

Zero 5xx, every answer equal to Embedder.encode of the same texts, server RSS bounded; the figures
(throughput against encode called directly, RSS peak, latency) are printed (pytest -s shows them).
The same run as a script: python tests/load_server.py MODEL_DIR --requests 600
"""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("psutil")

from tests.load_server import format_figures, run_load  # noqa: E402

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
