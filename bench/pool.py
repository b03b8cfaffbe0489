"""The parent's side of the worker processes: start, ask, wait with a timeout, stop.

Replies are read by a thread into a queue, so a worker that hangs or dies (the OOM killer at 8192 tokens)
turns into a WorkerError naming the worker and the tail of its log, never a hang of the whole bench.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import GteOnnxError

LOG_TAIL_CHARS = 1500


class WorkerError(GteOnnxError, RuntimeError):
    """A benchmark worker process failed, timed out or died."""

    code = "bench_worker_error"


# OpenMP (PyTorch's thread pool) has no "stop spinning after the call" switch: with spinning "stop" or
# "off" its threads sleep as soon as they are idle (GNU and Intel OpenMP both read these).
OPENMP_PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def _child_env(threads: int | None, spinning: str = "stop") -> dict[str, str]:
    env = dict(os.environ)
    if spinning != "on":
        env.update(OPENMP_PASSIVE)
    # The worker must import the very same gte_onnx as the parent (a checkout, an editable install...).
    paths = [p for p in sys.path if p]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if threads:
        # PyTorch's OpenMP pool reads this at start; ORT gets its count from the session options.
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class WorkerProcess:
    """One `python -m gte_onnx.bench.worker` child and its JSON-lines conversation."""

    def __init__(self, name: str, spec: Mapping[str, Any], threads: int | None = None,
                 start_timeout_s: float = 120.0):
        """`spec["spinning"]` ("stop", "off", "on") also sets the child's OpenMP wait policy."""
        self.name = name
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the worker; close() ends it
            prefix=f"gte-onnx-bench-{_safe(name)}-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "gte_onnx.bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=_child_env(threads, str(spec.get("spinning", "stop"))),
            text=True,
            encoding="utf-8",
        )
        self._replies: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._send(dict(spec))
        hello = self._receive(start_timeout_s, "start")
        self.pid = hello.get("pid")
        self.import_s = hello.get("import_s")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._replies.put(line)
        self._replies.put(None)  # EOF: the worker exited

    def _send(self, payload: Mapping[str, Any]) -> None:
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps(payload) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died("sending a command") from None

    def _receive(self, timeout_s: float, what: str) -> dict[str, Any]:
        try:
            line = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            self.kill()
            raise WorkerError(
                f"worker {self.name}: no answer to {what} within {timeout_s:.0f} s; it was stopped"
                f"{self._log_tail()}"
            ) from None
        if line is None:
            raise self._died(what)
        reply = json.loads(line)
        if not reply.get("ok"):
            raise WorkerError(f"worker {self.name}: {what} failed: {reply.get('error')}")
        return reply

    def request(self, op: str, timeout_s: float, **fields: Any) -> dict[str, Any]:
        self._send({"op": op, **fields})
        return self._receive(timeout_s, op)

    def _died(self, what: str) -> WorkerError:
        code = self._proc.wait(timeout=10)
        why = " (killed: out of memory?)" if code in (-9, 137) else ""
        return WorkerError(f"worker {self.name} exited with code {code}{why} during {what}{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            self._log.flush()
            text = self.log_path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""
        return f"\n--- end of its log ---\n{text[-LOG_TAIL_CHARS:]}" if text else ""

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def close(self, timeout_s: float = 10.0) -> None:
        if self.alive:
            try:
                self.request("quit", timeout_s)
            except WorkerError:
                pass
        self.kill()
        self._log.close()
        try:
            self.log_path.unlink()
        except OSError:
            pass

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
