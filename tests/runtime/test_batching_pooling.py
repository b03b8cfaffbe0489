from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gte_onnx.inference.batching import pad_batch, plan_batches
from gte_onnx.inference.pooling import cls_pool, l2_normalize, mean_pool


@given(
    lengths=st.lists(st.integers(1, 9000), min_size=1, max_size=200),
    batch_size=st.integers(1, 64),
    budget=st.integers(1, 40000),
)
@settings(max_examples=200, deadline=None)
def test_plan_batches_covers_everything_once_and_respects_the_budget(lengths, batch_size, budget):
    batches = plan_batches(lengths, batch_size, budget)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for rows in batches:
        assert 1 <= len(rows) <= batch_size
        longest = max(lengths[i] for i in rows)
        assert len(rows) == 1 or len(rows) * longest <= budget
    # sorted longest first, so short and long texts do not share a padded batch needlessly
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)


def _cost(batches, lengths, batch_cost):
    return sum(batch_cost + len(b) * max(lengths[i] for i in b) for b in batches)


def _greedy(lengths, batch_size, budget):
    """The old planner: fill each batch of the sorted inputs as far as the limits allow."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, start = [], 0
    while start < len(order):
        rows = max(1, min(batch_size, budget // lengths[order[start]]))
        batches.append(order[start:start + rows])
        start += rows
    return batches


def _least_cost(sorted_lengths, batch_size, budget, batch_cost):
    """Brute force over every way of cutting the sorted lengths into contiguous batches."""
    from functools import lru_cache

    @lru_cache(None)
    def best(i):
        if i == len(sorted_lengths):
            return 0
        options = []
        for rows in range(1, min(batch_size, len(sorted_lengths) - i) + 1):
            padded = rows * sorted_lengths[i]
            if rows > 1 and padded > budget:
                break
            options.append(batch_cost + padded + best(i + rows))
        return min(options)

    return best(0)


@given(
    lengths=st.lists(st.integers(1, 600), min_size=1, max_size=12),
    batch_size=st.integers(1, 8),
    budget=st.integers(1, 3000),
    batch_cost=st.sampled_from([0, 20, 500, 1 << 30]),
)
@settings(max_examples=300, deadline=None)
def test_plan_batches_finds_the_least_cost_cuts(lengths, batch_size, budget, batch_cost):
    batches = plan_batches(lengths, batch_size, budget, batch_cost)
    assert _cost(batches, lengths, batch_cost) == _least_cost(sorted(lengths, reverse=True), batch_size, budget, batch_cost)
    assert _cost(batches, lengths, batch_cost) <= _cost(_greedy(lengths, batch_size, budget), lengths, batch_cost)


def test_a_long_text_does_not_make_its_batch_mates_pad_to_it():
    lengths = [300] + [20] * 31
    assert len(_greedy(lengths, 32, 16384)) == 1  # the old planner: 32 x 300 = 9,600 tokens for 920 real ones
    batches = plan_batches(lengths, batch_size=32, max_batch_tokens=16384)
    assert [b.tolist() for b in batches] == [[0], list(range(1, 32))]


def test_at_a_gpu_batch_cost_the_fewest_batches_win():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, 400).tolist()
    gpu = plan_batches(lengths, 32, 4096, batch_cost_tokens=1 << 30)
    cpu = plan_batches(lengths, 32, 4096)
    assert len(gpu) == len(_greedy(lengths, 32, 4096)) < len(cpu)
    padded = lambda batches: _cost(batches, lengths, 0)  # noqa: E731
    assert padded(cpu) < padded(gpu) <= padded(_greedy(lengths, 32, 4096))


def test_long_and_short_texts_do_not_share_a_batch():
    batches = plan_batches([8000, 10, 12, 8000, 9], batch_size=32, max_batch_tokens=16384)
    assert [sorted(b.tolist()) for b in batches] == [[0, 3], [1, 2, 4]]


def test_pad_batch():
    ids, mask = pad_batch([np.array([1, 2, 3]), np.array([4])], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pooling_functions():
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    assert cls_pool(hidden, mask).tolist() == [[0, 1], [6, 7]]
    assert mean_pool(hidden, mask).tolist() == [[1, 2], [8, 9]]  # pad row (4, 5) excluded
    unit = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(unit, [[0.6, 0.8], [0, 0]])  # zero stays zero, no NaN
