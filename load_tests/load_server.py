"""Load test of `gte-onnx serve` on loopback: a library for the tests and a script that prints figures.

    python load_tests/load_server.py MODEL_DIR [--requests 600] [--threads 1] [--seed 0]

It starts the server in a subprocess on 127.0.0.1 (a free port), fires every request at once from one
asyncio client (mixed lengths, mixed routes: OpenAI float, OpenAI base64, TEI /embed), checks each answer
against Embedder.encode of the same texts in this process, samples the server's RSS, and compares the
throughput with calling encode directly in one process. Loopback only: nothing leaves the machine.

Also home of the server tests' shared tools (tests/server/ imports them): free_port, ServerThread (uvicorn
in a thread, for an app built in the test), ServerProcess (`python -m gte_onnx.server` in a subprocess).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# ---- servers -----------------------------------------------------------------------------------------
class ServerThread:
    """uvicorn serving `app` in a daemon thread on a free loopback port."""

    def __init__(self, app, graceful_timeout: float = 30.0):
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(
            app, host=HOST, port=self.port, log_level="warning", timeout_graceful_shutdown=graceful_timeout
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """What SIGTERM does to `gte-onnx serve`: stop accepting, finish in-flight requests, run shutdown."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerProcess:
    """`python -m gte_onnx.server MODEL --port P ...` in a subprocess, ready once /health answers."""

    def __init__(self, model_dir: str | Path, *options: str, startup_timeout: float = 120.0):
        self.port = free_port()
        self.args = [sys.executable, "-m", "gte_onnx.server", str(model_dir), "--host", HOST,
                     "--port", str(self.port), "--log-level", "warning", *options]
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> "ServerProcess":
        import httpx

        import tempfile

        # A file, not a pipe: a pipe nobody reads would block the server once it fills.
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("the server did not answer /health in time")
            time.sleep(0.1)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the graceful exit; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read()

    def __exit__(self, *exc) -> None:
        try:
            self.terminate()
        finally:
            self.kill()
            self._log.close()


class RssSampler:
    """Peak resident memory of a process, sampled every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.02):
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = self.start = self.process.memory_info().rss
        self.samples = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
                self.samples += 1
            except Exception:  # the process ended
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---- the workload --------------------------------------------------------------------------------------
WORDS = (
    "the of and to in is was for on that with as by at from his her an which were are this be had not or "
    "have their but they one all been its more has who new would when there so can other also first after "
    "time year people city state world school government river music film team water house history "
    "system research language model search query document ranking embedding vector sentence meaning "
    "capital china beijing sorting algorithm python quick sort implement distance cosine similarity "
    "théâtre naïve café über straße 東京 北京 日本語 emoji 🙂 data-driven state-of-the-art 2024 3.14"
).split()


@dataclass
class Request:
    route: str  # "/v1/embeddings" | "/embed"
    texts: list[str]
    encoding: str = "float"  # OpenAI's encoding_format

    def body(self) -> dict:
        if self.route == "/embed":
            return {"inputs": self.texts}
        return {"input": self.texts, "encoding_format": self.encoding}


def mixed_requests(count: int, seed: int = 0, max_words: int = 300) -> list[Request]:
    """Requests of 1-4 texts each, lengths spread from 1 word to `max_words`, over three route styles."""
    rng = random.Random(seed)
    requests = []
    for i in range(count):
        texts = []
        for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
            # Mostly short texts, some long ones: the mix that makes padding and batching matter.
            n = rng.choice((rng.randint(1, 12), rng.randint(13, 60), rng.randint(61, max_words)))
            texts.append(" ".join(rng.choice(WORDS) for _ in range(n)))
        kind = i % 3
        route, encoding = [("/v1/embeddings", "float"), ("/v1/embeddings", "base64"), ("/embed", "float")][kind]
        requests.append(Request(route, texts, encoding))
    return requests


def decode(request: Request, payload) -> np.ndarray:
    if request.route == "/embed":
        return np.asarray(payload, dtype=np.float32)
    rows = []
    for item in sorted(payload["data"], key=lambda d: d["index"]):
        vec = item["embedding"]
        if isinstance(vec, str):
            rows.append(np.frombuffer(base64.b64decode(vec), dtype="<f4"))
        else:
            rows.append(np.asarray(vec, dtype=np.float32))
    return np.stack(rows)


@dataclass
class LoadResult:
    statuses: list[int]
    payloads: list
    wall_s: float
    latencies: list[float] = field(default_factory=list)


async def fire(url: str, requests: list[Request], timeout: float = 300.0) -> LoadResult:
    """Every request at once (one connection each), all in flight together."""
    import httpx

    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        latencies = [0.0] * len(requests)

        async def one(i: int, request: Request):
            started = time.perf_counter()
            response = await client.post(request.route, json=request.body())
            latencies[i] = time.perf_counter() - started
            try:
                payload = response.json()
            except ValueError:
                payload = response.text
            return response.status_code, payload

        started = time.perf_counter()
        answers = await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        wall = time.perf_counter() - started
    return LoadResult([s for s, _ in answers], [p for _, p in answers], wall, latencies)


def run_load(model_dir: str | Path, n_requests: int = 600, threads: int | None = 1, seed: int = 0,
             max_words: int = 300) -> dict:
    """Serve MODEL_DIR in a subprocess, load it, check every answer; the figures as a dict."""
    from gte_onnx import Embedder

    requests = mixed_requests(n_requests, seed, max_words)
    texts = [t for r in requests for t in r.texts]
    thread_opts = ["--threads", str(threads)] if threads else []
    options = [*thread_opts, "--max-concurrent-requests", str(max(1024, 2 * n_requests))]
    with ServerProcess(model_dir, *options) as server:
        # Warm the server (first runs grow ORT's memory arena) before measuring.
        asyncio.run(fire(server.url, mixed_requests(8, seed + 1, max_words)))
        with RssSampler(server.pid) as rss:
            cpu_before, client_cpu_before = rss.cpu_seconds(), time.process_time()
            result = asyncio.run(fire(server.url, requests))
            server_cpu_s = rss.cpu_seconds() - cpu_before
            client_cpu_s = time.process_time() - client_cpu_before
        exit_code = server.terminate()

    embedder = Embedder(model_dir, threads=threads)
    embedder.encode(texts[:16], normalize=True)  # warm-up, as the server had
    # CPU seconds as well as wall seconds: on a shared machine the wall clock measures the neighbours too.
    started, cpu = time.perf_counter(), time.process_time()
    expected = embedder.encode(texts, normalize=True)
    direct_batched_s, direct_batched_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    for r in requests:
        embedder.encode(r.texts, normalize=True)
    direct_per_request_s, direct_per_request_cpu_s = time.perf_counter() - started, time.process_time() - cpu

    max_diff = 0.0
    wrong = []
    offset = 0
    for i, (request, status, payload) in enumerate(zip(requests, result.statuses, result.payloads)):
        want = expected[offset : offset + len(request.texts)]
        offset += len(request.texts)
        if status != 200:
            continue
        got = decode(request, payload)
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        max_diff = max(max_diff, diff)
        if diff > 1e-4:
            wrong.append(i)
    lat = np.asarray(result.latencies)
    return {
        "requests": n_requests,
        "texts": len(texts),
        "status_counts": {s: result.statuses.count(s) for s in sorted(set(result.statuses))},
        "server_5xx": sum(s >= 500 for s in result.statuses),
        "mismatched": wrong,
        "max_abs_diff": max_diff,
        "wall_s": result.wall_s,
        "server_texts_per_s": len(texts) / result.wall_s,
        "server_requests_per_s": n_requests / result.wall_s,
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p99_s": float(np.percentile(lat, 99)),
        "server_cpu_s": server_cpu_s,
        "client_cpu_s": client_cpu_s,
        "direct_batched_s": direct_batched_s,
        "direct_batched_cpu_s": direct_batched_cpu_s,
        "direct_per_request_cpu_s": direct_per_request_cpu_s,
        "direct_batched_texts_per_s": len(texts) / direct_batched_s,
        "direct_per_request_s": direct_per_request_s,
        "direct_per_request_texts_per_s": len(texts) / direct_per_request_s,
        "rss_start_mb": rss.start / 2**20,
        "rss_peak_mb": rss.peak / 2**20,
        "exit_code": exit_code,
        "threads": threads,
    }


def format_figures(figures: dict) -> str:
    f = figures
    return "\n".join([
        f"requests {f['requests']} ({f['texts']} texts), all in flight at once, loopback; "
        f"threads {f['threads']}",
        f"status counts {f['status_counts']}; 5xx: {f['server_5xx']}; answers != encode: {len(f['mismatched'])} "
        f"(max |diff| {f['max_abs_diff']:.2e})",
        f"server: {f['wall_s']:.2f} s, {f['server_texts_per_s']:.1f} texts/s, {f['server_requests_per_s']:.1f} req/s, "
        f"latency p50 {f['latency_p50_s']:.2f} s p99 {f['latency_p99_s']:.2f} s; "
        f"CPU: server {f['server_cpu_s']:.1f} s, load client {f['client_cpu_s']:.1f} s",
        f"direct encode, one call of all texts: {f['direct_batched_s']:.2f} s, "
        f"{f['direct_batched_texts_per_s']:.1f} texts/s; CPU {f['direct_batched_cpu_s']:.1f} s",
        f"direct encode, one call per request: {f['direct_per_request_s']:.2f} s, "
        f"{f['direct_per_request_texts_per_s']:.1f} texts/s; CPU {f['direct_per_request_cpu_s']:.1f} s",
        f"server RSS: {f['rss_start_mb']:.0f} MB before the load, peak {f['rss_peak_mb']:.0f} MB; "
        f"graceful exit code {f['exit_code']}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a gte-onnx model folder (task embedding)")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1, help="ORT threads, server and direct alike (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-words", type=int, default=300)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    figures = run_load(args.model, args.requests, args.threads or None, args.seed, args.max_words)
    print(format_figures(figures))
    return 0 if figures["server_5xx"] == 0 and not figures["mismatched"] and figures["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
