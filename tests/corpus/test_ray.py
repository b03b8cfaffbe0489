"""The Ray engine on a real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`),
started and stopped here; every process it started is stopped by id, within bounded waits."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from gte_onnx.corpus.engine import CorpusJob, ModelOptions  # noqa: E402
from gte_onnx.corpus.readers import CorpusFormat  # noqa: E402

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(args: list[str], env: dict) -> subprocess.Popen:
    # --block keeps `ray start` in the foreground as the parent of the node's processes, in a session of its own.
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(nodes: list[subprocess.Popen]) -> None:
    procs = []
    for node in nodes:
        try:
            parent = psutil.Process(node.pid)
            procs += [parent] + parent.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    for node in nodes:  # each node runs in a process group of its own (start_new_session)
        try:
            os.killpg(node.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=8)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    for node in nodes:
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait(timeout=5)
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def cluster():
    temp = tempfile.mkdtemp(prefix="gteray")  # short: Ray's unix socket paths must stay under ~100 bytes
    # A cluster of its own: no auth token from ~/.ray (another cluster's) may leak into this one.
    isolation = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                 "RAY_AUTH_TOKEN_PATH": os.path.join(temp, "no-token")}
    saved = {key: os.environ.get(key) for key in isolation}
    os.environ.update(isolation)  # the test process is the driver
    env = dict(os.environ)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes = [_start_node(["--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--temp-dir", temp,
                          "--include-dashboard", "false"], env)]
    try:
        _wait_nodes(address, 1, nodes)
        nodes.append(_start_node(["--address", address, "--node-ip-address", "127.0.0.1"], env))
        _wait_nodes(address, 2, nodes)
        yield address, nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop(nodes)
        shutil.rmtree(temp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _wait_nodes(address: str, n: int, nodes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(node.poll() is not None for node in nodes):
            raise RuntimeError("a ray node exited while starting")
        try:
            if not ray.is_initialized():
                ray.init(address=address, logging_level="WARNING", log_to_driver=False)
            if sum(1 for node in ray.nodes() if node.get("Alive")) >= n:
                return
        except Exception:  # the head is not up yet
            if ray.is_initialized():
                ray.shutdown()
        time.sleep(0.5)
    raise TimeoutError(f"the Ray cluster did not reach {n} node(s) in {timeout} s")


@pytest.fixture(scope="module")
def cisi_corpus(tmp_path_factory):
    from gte_onnx.parity.datasets import load_cisi

    documents = load_cisi().documents
    path = tmp_path_factory.mktemp("cisi") / "cisi.jsonl"
    import json

    with open(path, "w", encoding="utf-8") as fh:
        for doc_id, text in documents.items():
            fh.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return path, documents


def _job(model_dir, corpus, output, chunk_size):
    return CorpusJob(ModelOptions(str(model_dir), threads=1), corpus, output, CorpusFormat("jsonl", id_field="id"),
                     chunk_size=chunk_size, batch_size=16)


def _read(output: Path):
    table = pq.read_table(output)
    ids = table.column("id").to_pylist()
    return ids, np.asarray(table.column("vector").to_pylist(), dtype=np.float32), table


def _start_job(job, address) -> tuple[threading.Thread, dict]:
    """Run the Ray job in a thread, so a test can act while it runs and give up on it after a bounded wait."""
    from gte_onnx.corpus.ray import run_corpus_on_ray

    result: dict = {}

    def run():
        try:
            result["summary"] = run_corpus_on_ray(job, address=address, concurrency=2, cpus_per_actor=0.5)
        except BaseException as exc:  # handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _finish(thread, result, timeout=120) -> dict:
    thread.join(timeout=timeout)
    assert not thread.is_alive(), f"the Ray job did not finish in {timeout} s"
    if "error" in result:
        raise result["error"]
    return result["summary"]


def test_ray_cisi_matches_local_encode_row_by_row(cluster, cisi_corpus, tiny_gte, tiny_gte_dir, tmp_path):
    address, _ = cluster
    corpus, documents = cisi_corpus
    summary = _finish(*_start_job(_job(tiny_gte_dir, corpus, tmp_path / "out", 256), address))
    ids, vectors, table = _read(tmp_path / "out")
    assert summary["rows"] == len(documents) == 1460
    assert sorted(ids) == sorted(documents) and len(set(ids)) == len(ids)  # every id exactly once
    assert table.schema.field("vector").type == pa.list_(pa.float32(), tiny_gte.dim)
    assert table.schema.field("id").type == pa.string()
    expected = tiny_gte.encode([documents[i] for i in ids], batch_size=16)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert table.column("token_count").to_pylist() == tiny_gte.count_tokens([documents[i] for i in ids])


def _actor_processes(nodes) -> list:
    found = []
    for node in nodes:
        for proc in psutil.Process(node.pid).children(recursive=True):
            try:
                if "EmbedBatches" in " ".join(proc.cmdline()):
                    found.append(proc)
            except psutil.NoSuchProcess:
                pass
    return found


def test_a_killed_actor_is_retried_and_the_output_is_complete(cluster, cisi_corpus, tiny_gte_dir, tmp_path):
    address, nodes = cluster
    corpus, documents = cisi_corpus
    thread, result = _start_job(_job(tiny_gte_dir, corpus, tmp_path / "out", 20), address)
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        actors = [p for p in _actor_processes(nodes) if time.time() - p.create_time() > 2.0]
        if actors:
            killed = actors[0]
            os.kill(killed.pid, signal.SIGKILL)
        time.sleep(0.1)
    assert killed is not None, "no actor was running to kill"
    summary = _finish(thread, result)
    assert summary["rows"] == len(documents)
    ids, _, _ = _read(tmp_path / "out")
    assert len(ids) == len(documents) and sorted(ids) == sorted(documents)  # complete, no duplicates


def test_a_bad_document_raises_the_typed_error_on_the_driver(cluster, tiny_gte_dir, tmp_path):
    from gte_onnx.errors import InvalidInputError

    address, _ = cluster
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": ""}\n', encoding="utf-8")
    thread, result = _start_job(_job(tiny_gte_dir, corpus, tmp_path / "out", 8), address)
    with pytest.raises(InvalidInputError, match=r"id 'b'\) is an empty text"):
        _finish(thread, result)
