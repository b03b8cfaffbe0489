from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gte_onnx.batching import pad_batch, plan_batches
from gte_onnx.pooling import cls_pool, l2_normalize, mean_pool


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
