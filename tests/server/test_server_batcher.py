"""The dynamic batcher on its own, with a fake model: merging, splitting, order, isolation, limits."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from gte_onnx.errors import InvalidInputError, OverloadedError
from gte_onnx.server.batcher import Batcher


class FakeModel:
    """Returns each item as its result; the first call waits for `gate`, so later jobs pile up."""

    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[tuple] = []

    def __call__(self, key, items):
        self.entered.set()
        self.gate.wait(10)
        self.calls.append((key, list(items)))
        if any(item < 0 for item in items):
            raise InvalidInputError(f"negative item in {items}")
        return np.asarray(items, dtype=np.float32)


async def _wait_for(event: threading.Event):
    assert await asyncio.to_thread(event.wait, 10)


async def _queued(batcher: Batcher, count: int):
    for _ in range(500):
        if batcher.queued_items == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} queued items, have {batcher.queued_items}")


def test_concurrent_jobs_merge_within_the_token_budget_and_keep_order():
    model = FakeModel()
    batcher = Batcher(model, max_batch_tokens=10, max_concurrent_requests=10)

    async def scenario():
        batcher.start()
        first = asyncio.create_task(batcher.submit("a", [1], [5]))
        await _wait_for(model.entered)
        big = asyncio.create_task(batcher.submit("a", [10, 11, 12, 13], [3, 3, 3, 3]))
        await _queued(batcher, 4)
        other_key = asyncio.create_task(batcher.submit("b", [30], [1]))
        await _queued(batcher, 5)
        small = asyncio.create_task(batcher.submit("a", [20, 21], [2, 2]))
        await _queued(batcher, 7)
        model.gate.set()
        return await asyncio.gather(first, big, other_key, small)

    results = asyncio.run(scenario())
    batcher.stop(10)
    assert [r.tolist() for r in results] == [[1], [10, 11, 12, 13], [30], [20, 21]]
    # Step 2 fills the budget with 3 of big's items (9 tokens); step 3 merges big's last item with the
    # later job of the same key (7 tokens), passing over the job with another key; then that one runs.
    assert model.calls == [("a", [1]), ("a", [10, 11, 12]), ("a", [13, 20, 21]), ("b", [30])]


def test_a_failing_job_does_not_fail_its_batch_neighbours():
    model = FakeModel()
    batcher = Batcher(model, max_batch_tokens=100, max_concurrent_requests=10)

    async def scenario():
        batcher.start()
        head = asyncio.create_task(batcher.submit("k", [0], [1]))
        await _wait_for(model.entered)
        jobs = [asyncio.create_task(batcher.submit("k", items, [1] * len(items))) for items in ([1, 2], [-1], [3])]
        await _queued(batcher, 4)
        model.gate.set()
        return await asyncio.gather(head, *jobs, return_exceptions=True)

    head, good, bad, also_good = asyncio.run(scenario())
    batcher.stop(10)
    assert good.tolist() == [1, 2] and also_good.tolist() == [3] and head.tolist() == [0]
    assert isinstance(bad, InvalidInputError)
    assert ("k", [1, 2, -1, 3]) in model.calls  # merged first, then isolated


def test_admission_limit_and_stop():
    model = FakeModel()
    model.gate.set()
    batcher = Batcher(model, max_batch_tokens=100, max_concurrent_requests=2)

    async def scenario():
        batcher.start()
        with batcher.admit(), batcher.admit():
            with pytest.raises(OverloadedError, match="limit of 2"):
                with batcher.admit():
                    pass
        assert batcher.in_flight == 0
        with batcher.admit():  # slots come back
            return await batcher.submit("k", [4, 5], [1, 1])

    assert asyncio.run(scenario()).tolist() == [4, 5]
    assert batcher.stop(10)
    assert not batcher.alive


def test_stop_runs_what_is_queued_then_refuses():
    model = FakeModel()
    batcher = Batcher(model, max_batch_tokens=100, max_concurrent_requests=10)

    async def scenario():
        batcher.start()
        head = asyncio.create_task(batcher.submit("k", [1], [1]))
        await _wait_for(model.entered)
        queued = asyncio.create_task(batcher.submit("k", [2], [1]))
        await _queued(batcher, 1)
        stopping = asyncio.create_task(asyncio.to_thread(batcher.stop, 10))
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(head, queued)
        assert await stopping
        return results

    assert [r.tolist() for r in asyncio.run(scenario())] == [[1], [2]]
    with pytest.raises(Exception, match="shutting down"):
        with batcher.admit():
            pass


def test_abandoned_jobs_are_skipped():
    model = FakeModel()
    batcher = Batcher(model, max_batch_tokens=100, max_concurrent_requests=10)

    async def scenario():
        batcher.start()
        head = asyncio.create_task(batcher.submit("k", [1], [1]))
        await _wait_for(model.entered)
        gone = asyncio.create_task(batcher.submit("k", [2], [1]))
        kept = asyncio.create_task(batcher.submit("k", [3], [1]))
        await _queued(batcher, 2)
        gone.cancel()  # the client disconnected
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(head, kept)

    assert [r.tolist() for r in asyncio.run(scenario())] == [[1], [3]]
    batcher.stop(10)
    assert model.calls == [("k", [1]), ("k", [3])]


def test_retry_after_follows_the_queue_and_the_workers_rate():
    """Refused with the time a slot is likely to take to free up: queued tokens per admitted request at
    the worker's measured rate, between 1 and 30 s."""
    import time

    def slow_model(key, items):
        time.sleep(0.2)  # 1000 tokens in 0.2 s: about 5000 tokens/s
        return np.asarray(items, dtype=np.float32)

    batcher = Batcher(slow_model, max_batch_tokens=1000, max_concurrent_requests=2)

    async def scenario():
        batcher.start()
        assert batcher.retry_after() == 1  # no rate measured yet
        await batcher.submit("a", [1], [1000])
        with batcher.admit(), batcher.admit():
            queued = [asyncio.create_task(batcher.submit("a", list(range(40)), [1000] * 40)) for _ in range(2)]
            await asyncio.sleep(0.05)
            with pytest.raises(OverloadedError) as refused:
                with batcher.admit():
                    pass
            # ~80,000 tokens queued for 2 requests at ~5000 tokens/s: ~8 s until a slot frees up.
            assert 4 <= refused.value.retry_after <= 12, refused.value.retry_after
            for task in queued:
                task.cancel()
        await asyncio.sleep(0.3)
        assert batcher._queued_tokens >= 0

    try:
        asyncio.run(scenario())
    finally:
        batcher.stop(10)
    assert batcher._queued_tokens == 0  # cancelled jobs leave the count when the worker drops them
