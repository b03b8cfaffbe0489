"""Sustained load on `gte-onnx serve`: many clients in a loop for minutes, mixed lengths, 429s honoured.

    python load_tests/soak_server.py MODEL_DIR --variant int8 \\
        --clients 200 --duration 150 --max-tokens 8192 --max-concurrent-requests 48 --threads 2

The server runs in a subprocess on 127.0.0.1. Each client posts one text at a time (OpenAI float, OpenAI
base64 and TEI /embed in turn) drawn from a pool of texts whose lengths spread log-uniformly from 1 token
to --max-tokens; a 429 makes it wait the Retry-After the server sent, as OpenAI's clients do. Meanwhile the
server's RSS is sampled. Afterwards, in this process: Embedder.encode of the pool (the same folder and
variant, the same threads) gives the reference vectors and the direct-encode throughput. Printed: status
counts, 5xx, 429s without Retry-After, answers differing from encode, latency p50/p95/p99, texts/s and
tokens/s against direct encode, RSS peak. Loopback only, bounded in clients and time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `load_tests.load_server` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from load_tests.load_server import WORDS, RssSampler, ServerProcess  # noqa: E402

ROUTES = (("/v1/embeddings", "float"), ("/v1/embeddings", "base64"), ("/embed", "float"))


# ---- the text pool -------------------------------------------------------------------------------------
def pool_lengths(count: int, max_tokens: int, rng: random.Random) -> list[int]:
    """Body lengths (tokens without [CLS]/[SEP]) log-uniform over 1..max_tokens-2, both ends included."""
    top = max_tokens - 2
    inner = [int(round(math.exp(rng.uniform(0.0, math.log(top))))) for _ in range(max(count - 2, 0))]
    return [1, top, *inner][:count]


def text_pool(model_dir: str | Path, count: int, max_tokens: int, seed: int) -> list[str]:
    """Texts cut from one long random word stream at the token lengths of pool_lengths."""
    from tokenizers import Tokenizer

    rng = random.Random(seed)
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    lengths = pool_lengths(count, max_tokens, rng)
    stream = " ".join(rng.choice(WORDS) for _ in range(2 * max_tokens))
    ids = tokenizer.encode(stream, add_special_tokens=False).ids
    texts = []
    for length in lengths:
        start = rng.randrange(0, max(len(ids) - length, 1))
        while True:  # decoding and re-encoding can merge differently: cut until it fits
            text = tokenizer.decode(ids[start : start + length]).strip() or "word"
            if len(tokenizer.encode(text).ids) <= max_tokens:
                break
            length -= 1
        texts.append(text)
    return texts


# ---- the clients -----------------------------------------------------------------------------------------
@dataclass
class Answer:
    text: int  # index in the pool
    route: str
    status: int
    latency_s: float
    vector: np.ndarray | None = None


@dataclass
class Soak:
    answers: list[Answer] = field(default_factory=list)
    refused: int = 0  # 429s
    refused_without_retry_after: int = 0
    errors: list[str] = field(default_factory=list)  # transport errors (no HTTP answer)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0


def vector_of(route: str, encoding: str, payload) -> np.ndarray:
    if route == "/embed":
        return np.asarray(payload[0], dtype=np.float32)
    embedding = payload["data"][0]["embedding"]
    if encoding == "base64":
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


async def one_client(http, pool: list[str], seed: int, deadline: float, soak: Soak) -> None:
    rng = random.Random(seed)
    turn = seed
    while time.monotonic() < deadline:
        index = rng.randrange(len(pool))
        route, encoding = ROUTES[turn % len(ROUTES)]
        turn += 1
        body = {"inputs": pool[index]} if route == "/embed" else {"input": pool[index], "encoding_format": encoding}
        started = time.perf_counter()
        try:
            response = await http.post(route, json=body)
        except Exception as exc:  # counted and printed: a transport error is a failure of the run
            soak.errors.append(f"{type(exc).__name__}: {exc}")
            continue
        latency = time.perf_counter() - started
        if response.status_code == 429:
            soak.refused += 1
            retry_after = response.headers.get("retry-after")
            if retry_after is None:
                soak.refused_without_retry_after += 1
            await asyncio.sleep(float(retry_after or 1.0) * rng.uniform(0.5, 1.5))  # jitter, as clients do
            continue
        vector = vector_of(route, encoding, response.json()) if response.status_code == 200 else None
        soak.answers.append(Answer(index, route, response.status_code, latency, vector))


async def run_clients(url: str, pool: list[str], clients: int, duration_s: float, seed: int) -> Soak:
    import httpx

    soak = Soak()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=900.0) as http:
        deadline = time.monotonic() + duration_s
        await asyncio.gather(*(one_client(http, pool, seed * 1000 + i, deadline, soak) for i in range(clients)))
    return soak


# ---- the run -------------------------------------------------------------------------------------------------
def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def warm_up(url: str, pool: list[str]) -> None:
    """A short and the longest text first: the first runs of a process grow ORT's arenas, which is not
    what a long-running server does per request."""
    import httpx

    for text in (min(pool, key=len), max(pool, key=len), *pool[2:4]):
        httpx.post(f"{url}/embed", json={"inputs": text}, timeout=900.0).raise_for_status()


def serve_and_soak(model_dir, pool, options: list[str], clients: int, duration_s: float, seed: int):
    with ServerProcess(model_dir, *options, startup_timeout=300.0) as server:
        progress("server up; warming up")
        warm_up(server.url, pool)
        progress(f"{clients} clients for {duration_s:.0f} s")
        with RssSampler(server.pid, interval=0.1) as rss:
            # CPU seconds too: on a shared machine the wall clock measures the neighbours (and the clients).
            server_cpu, client_cpu, started = rss.cpu_seconds(), time.process_time(), time.perf_counter()
            soak = asyncio.run(run_clients(server.url, pool, clients, duration_s, seed))
            wall_s = time.perf_counter() - started
            soak.server_cpu_s, soak.client_cpu_s = rss.cpu_seconds() - server_cpu, time.process_time() - client_cpu
        progress(f"load done in {wall_s:.0f} s: {len(soak.answers)} answers, {soak.refused} refused, "
                 f"RSS peak {rss.peak / 2**20:.0f} MB; SIGTERM")
        exit_code = server.terminate()
    return soak, wall_s, rss, exit_code


def direct_encode(model_dir, pool: list[str], variant: str, threads: int | None):
    """Reference vectors and the throughput of encode called in one process on the same pool."""
    from gte_onnx import Embedder

    embedder = Embedder(model_dir, variant=variant, threads=threads)
    embedder.encode(pool[:4], normalize=True)  # warm-up, as the server had
    progress(f"direct encode of the {len(pool)} texts")
    started, cpu = time.perf_counter(), time.process_time()
    vectors = embedder.encode(pool, normalize=True)
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    # A variant whose vectors depend on their batch-mates (per-batch activation scales, as int8 once had)
    # would show here: the same texts alone against the pool's batches.
    shortest = sorted(range(len(pool)), key=lambda i: len(pool[i]))[:8]
    alone = np.stack([embedder.encode([pool[i]], normalize=True)[0] for i in shortest])
    self_diff = float(np.abs(alone - vectors[shortest]).max())
    return vectors, wall_s, cpu_s, self_diff, embedder.count_tokens(pool)


def soak_figures(model_dir, clients=200, duration_s=150.0, max_tokens=8192, pool_size=96, variant="auto",
                 threads: int | None = 2, max_concurrent_requests=48, seed=0) -> dict:
    pool = text_pool(model_dir, pool_size, max_tokens, seed)
    options = ["--variant", variant, "--max-concurrent-requests", str(max_concurrent_requests)]
    options += ["--threads", str(threads)] if threads else []
    soak, wall_s, rss, exit_code = serve_and_soak(model_dir, pool, options, clients, duration_s, seed)
    reference, direct_s, direct_cpu_s, self_diff, tokens = direct_encode(model_dir, pool, variant, threads)
    ok = [a for a in soak.answers if a.status == 200]
    diffs = np.asarray([float(np.abs(a.vector - reference[a.text]).max()) for a in ok] or [0.0])
    latencies = np.asarray([a.latency_s for a in ok] or [float("nan")])
    served_tokens = sum(tokens[a.text] for a in ok)
    statuses = [a.status for a in soak.answers] + [429] * soak.refused
    return {
        "clients": clients, "duration_s": wall_s, "pool": len(pool), "pool_tokens": sum(tokens),
        "pool_min_tokens": min(tokens), "pool_max_tokens": max(tokens), "variant": variant, "threads": threads,
        "max_concurrent_requests": max_concurrent_requests,
        "status_counts": {s: statuses.count(s) for s in sorted(set(statuses))},
        "server_5xx": sum(s >= 500 for s in statuses), "transport_errors": soak.errors[:5],
        "transport_error_count": len(soak.errors), "refused_without_retry_after": soak.refused_without_retry_after,
        "answers": len(ok), "max_abs_diff": float(diffs.max()), "within_1e-5": int((diffs <= 1e-5).sum()),
        "within_1e-4": int((diffs <= 1e-4).sum()),
        "latency_p50_s": float(np.percentile(latencies, 50)), "latency_p95_s": float(np.percentile(latencies, 95)),
        "latency_p99_s": float(np.percentile(latencies, 99)),
        "server_texts_per_s": len(ok) / wall_s, "server_tokens_per_s": served_tokens / wall_s,
        "server_cpu_s": soak.server_cpu_s, "client_cpu_s": soak.client_cpu_s,
        "server_cpu_per_1k_tokens": 1000 * soak.server_cpu_s / max(served_tokens, 1),
        "direct_cpu_per_1k_tokens": 1000 * direct_cpu_s / max(sum(tokens), 1),
        "encode_alone_vs_batched_diff": self_diff,
        "direct_s": direct_s, "direct_texts_per_s": len(pool) / direct_s, "direct_tokens_per_s": sum(tokens) / direct_s,
        "rss_start_mb": rss.start / 2**20, "rss_peak_mb": rss.peak / 2**20, "rss_samples": rss.samples,
        "exit_code": exit_code,
    }


def format_soak(f: dict) -> str:
    ratio = f["server_tokens_per_s"] / f["direct_tokens_per_s"] if f["direct_tokens_per_s"] else float("nan")
    return "\n".join([
        f"{f['clients']} clients for {f['duration_s']:.0f} s, loopback; variant {f['variant']}, "
        f"threads {f['threads']}, "
        f"max concurrent requests {f['max_concurrent_requests']}; pool of {f['pool']} texts, "
        f"{f['pool_min_tokens']}..{f['pool_max_tokens']} tokens ({f['pool_tokens']} in all)",
        f"status counts {f['status_counts']}; 5xx: {f['server_5xx']}; transport errors: {f['transport_error_count']} "
        f"{f['transport_errors']}; 429 without Retry-After: {f['refused_without_retry_after']}",
        f"answers {f['answers']}: max |diff| to encode {f['max_abs_diff']:.3g}; within 1e-5: {f['within_1e-5']}, "
        f"within 1e-4: {f['within_1e-4']}",
        f"latency of answered requests: p50 {f['latency_p50_s']:.2f} s, p95 {f['latency_p95_s']:.2f} s, "
        f"p99 {f['latency_p99_s']:.2f} s",
        f"server: {f['server_texts_per_s']:.2f} texts/s, {f['server_tokens_per_s']:.0f} tokens/s; direct encode of "
        f"the pool: {f['direct_s']:.1f} s, {f['direct_texts_per_s']:.2f} texts/s, {f['direct_tokens_per_s']:.0f} "
        f"tokens/s; server/direct tokens/s {ratio:.2f}",
        f"CPU: server {f['server_cpu_s']:.0f} s ({f['server_cpu_per_1k_tokens']:.2f} s per 1000 tokens served), "
        f"load clients {f['client_cpu_s']:.0f} s; direct encode {f['direct_cpu_per_1k_tokens']:.2f} s per 1000 tokens",
        f"encode itself, the 8 shortest texts alone vs in the pool's batches: max |diff| "
        f"{f['encode_alone_vs_batched_diff']:.3g}",
        f"server RSS: {f['rss_start_mb']:.0f} MB after warm-up, peak {f['rss_peak_mb']:.0f} MB over "
        f"{f['rss_samples']} samples; exit code after SIGTERM {f['exit_code']}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a gte-onnx model folder (task embedding)")
    parser.add_argument("--variant", default="auto")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=150.0, help="seconds of load")
    parser.add_argument("--max-tokens", type=int, default=8192, help="the longest text of the pool, in tokens")
    parser.add_argument("--pool", type=int, default=96, help="distinct texts the clients draw from")
    parser.add_argument("--threads", type=int, default=2, help="ORT threads, server and direct alike (0: default)")
    parser.add_argument("--max-concurrent-requests", type=int, default=48)
    parser.add_argument("--rss-limit-mb", type=float, default=2048.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    figures = soak_figures(args.model, args.clients, args.duration, args.max_tokens, args.pool, args.variant,
                           args.threads or None, args.max_concurrent_requests, args.seed)
    print(format_soak(figures))
    healthy = (figures["server_5xx"] == 0 and figures["transport_error_count"] == 0
               and figures["refused_without_retry_after"] == 0 and figures["rss_peak_mb"] < args.rss_limit_mb)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
