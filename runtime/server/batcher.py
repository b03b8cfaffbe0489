"""Dynamic batching: concurrent requests merged into token-budget batches, run by one worker thread.

A request becomes a job: its inputs, already tokenized, each with a cost in tokens, and a run key
(what to run and with which options, e.g. ("embed", normalize=True)). Each step the worker takes inputs
from the head of the queue, across every waiting job with the head's run key, while their tokens add up
to at most `max_batch_tokens`; a big job is split over several steps, so one long request never holds
the others back for long. The backend then sorts the step's inputs by length and runs them in padded
batches (rows x longest row within the same budget), so short and long texts from different requests
are not padded to each other's length and memory stays bounded.

The model runs in the worker thread: the event loop only enqueues and awaits a future, so it keeps
answering /health, /metrics and new requests while a batch runs. When a merged batch fails, each job in
it is re-run alone, so one request's bad input cannot fail its neighbours. A run that raises answers its
requests with a typed error (InferenceError 500, BackendUnavailableError 503) and the worker goes on with
the next batch; `failing` reports a backend whose runs keep failing, for /health.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from ..errors import GteOnnxError, OverloadedError
from .errors import ShuttingDownError, inference_error
from .metrics import Metrics

log = logging.getLogger("gte_onnx.server")

# run(key, items) -> one result row per item, in order (an (n, dim) array of vectors, or (n,) scores).
RunBatch = Callable[[Hashable, list], np.ndarray]


@dataclass(eq=False)
class _Job:
    key: Hashable
    items: Sequence[Any]
    costs: Sequence[int]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cursor: int = 0  # items before it have been handed to a batch
    parts: list[tuple[int, np.ndarray]] = field(default_factory=list)
    delivered: int = 0
    finished: bool = False  # result or error already sent to the future
    abandoned: bool = False  # the client went away; skip the rest of its items

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled while the batch ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    def __init__(
        self,
        run: RunBatch,
        max_batch_tokens: int,
        max_concurrent_requests: int,
        metrics: Metrics | None = None,
        unhealthy_after: int = 3,
    ):
        self._run = run
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_concurrent_requests = int(max_concurrent_requests)
        self._metrics = metrics
        self._pending: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.in_flight = 0  # admitted requests; touched only on the event loop thread
        self.unhealthy_after = int(unhealthy_after)
        self.consecutive_failures = 0  # model runs in a row that raised; a success resets it
        self._queued_tokens = 0  # tokens of the items not yet handed to a batch (under _cond)
        self._tokens_per_s: float | None = None  # the worker's recent rate, a moving average

    # ---- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="gte-onnx-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Run what is queued, then end the worker. True when it ended within the timeout."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def failing(self) -> bool:
        """The last `unhealthy_after` model runs all raised: the backend, not one input, is broken."""
        return self.consecutive_failures >= self.unhealthy_after

    @property
    def queued_items(self) -> int:
        with self._cond:
            return sum(len(job.items) - job.cursor for job in self._pending)

    def retry_after(self) -> int:
        """Seconds until a request slot is likely to free up: the queued tokens per admitted request at the
        worker's recent rate, 1..30. A refused client that waits this long does not retry in vain."""
        rate = self._tokens_per_s
        if not rate:
            return 1
        with self._cond:
            queued = self._queued_tokens
        return min(max(math.ceil(queued / max(self.in_flight, 1) / rate), 1), 30)

    # ---- the event-loop side --------------------------------------------------------------------------
    @contextlib.contextmanager
    def admit(self):
        """Hold one of `max_concurrent_requests` slots for the whole request, or refuse it with 429."""
        if not self.alive:
            raise ShuttingDownError("the server is shutting down and takes no new requests")
        if self.in_flight >= self.max_concurrent_requests:
            error = OverloadedError(
                f"the server is at its limit of {self.max_concurrent_requests} concurrent requests; "
                "retry shortly"
            )
            error.retry_after = self.retry_after()  # type: ignore[attr-defined]  # the Retry-After header
            raise error
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def submit(self, key: Hashable, items: Sequence[Any], costs: Sequence[int]) -> np.ndarray:
        """Queue the items and wait for their results, in the order given."""
        if len(items) != len(costs) or not items:
            raise ValueError("submit needs one cost per item and at least one item")
        loop = asyncio.get_running_loop()
        job = _Job(key, items, costs, loop, loop.create_future())
        with self._cond:
            if self._stopping or self._thread is None:
                raise ShuttingDownError("the server is shutting down and takes no new requests")
            self._pending.append(job)
            self._queued_tokens += sum(max(int(c), 1) for c in costs)
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.abandoned = True
            raise

    # ---- the worker thread ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:  # stopping, and the queue is drained
                    return
                key, taken = self._take_batch()
            if taken:
                self._run_batch(key, taken)

    def _take_batch(self) -> tuple[Hashable, list[tuple[_Job, int, int]]]:
        """Slices (job, start, stop) of the waiting jobs that share the head's key, within the budget."""
        key = self._pending[0].key
        taken: list[tuple[_Job, int, int]] = []
        tokens = 0
        full = False
        for job in list(self._pending):
            if job.abandoned:
                self._pending.remove(job)
                self._queued_tokens -= sum(max(int(c), 1) for c in job.costs[job.cursor :])
                continue
            if job.key != key:
                continue
            start = stop = job.cursor
            while stop < len(job.items):
                cost = max(int(job.costs[stop]), 1)
                if (taken or stop > start) and tokens + cost > self.max_batch_tokens:
                    full = True
                    break
                tokens, stop = tokens + cost, stop + 1
            if stop > start:
                taken.append((job, start, stop))
                job.cursor = stop
            if job.cursor == len(job.items):
                self._pending.remove(job)
            if full:
                break
        self._queued_tokens -= tokens
        return key, taken

    def _run_batch(self, key: Hashable, taken: list[tuple[_Job, int, int]]) -> None:
        items = [item for job, start, stop in taken for item in job.items[start:stop]]
        started = time.perf_counter()
        try:
            out = self._run(key, items)
        except Exception as exc:
            if not isinstance(exc, GteOnnxError):
                self.consecutive_failures += 1
            if len(taken) > 1:
                # Isolate the failure: each job's slice alone, so only the guilty job gets the error.
                for part in taken:
                    self._run_batch(key, [part])
                return
            job = taken[0][0]
            if not isinstance(exc, GteOnnxError):  # typed errors are the client's; others are the backend's
                log.exception("batch of %d inputs failed", len(items))
                exc = inference_error(exc)
            self._fail(job, exc)
            return
        self.consecutive_failures = 0
        tokens = sum(int(job.costs[i]) for job, start, stop in taken for i in range(start, stop))
        elapsed = max(time.perf_counter() - started, 1e-6)
        rate = tokens / elapsed
        self._tokens_per_s = rate if self._tokens_per_s is None else 0.8 * self._tokens_per_s + 0.2 * rate
        if self._metrics is not None:
            self._metrics.record_batch(len(items), tokens, elapsed)
        offset = 0
        for job, start, stop in taken:
            count = stop - start
            if not job.finished:
                job.parts.append((start, out[offset : offset + count]))
                job.delivered += count
                if job.delivered == len(job.items):
                    job.parts.sort(key=lambda part: part[0])
                    job.resolve(np.concatenate([part for _, part in job.parts]))
            offset += count

    def _fail(self, job: _Job, exc: BaseException) -> None:
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                self._queued_tokens -= sum(max(int(c), 1) for c in job.costs[job.cursor :])
        job.resolve(error=exc)
