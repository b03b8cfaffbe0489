from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gte_onnx import Embedder
from gte_onnx.errors import InputTooLongError, InvalidInputError, ProviderError
from gte_onnx.inference.tokenize import TruncationWarning

TEXTS = ["what is the capital of China?", "how to implement quick sort in python?", "Beijing", "sorting algorithms"]


def test_shapes_dtype_and_single_string(tiny_gte):
    batch = tiny_gte.encode(TEXTS)
    assert batch.shape == (4, tiny_gte.dim) and batch.dtype == np.float32
    one = tiny_gte.encode(TEXTS[2])
    assert one.shape == (tiny_gte.dim,)
    np.testing.assert_allclose(one, batch[2], atol=1e-5)


def test_normalize_default_comes_from_the_manifest(tiny_gte):
    assert tiny_gte.manifest.normalize is True
    unit = tiny_gte.encode(TEXTS)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    raw = tiny_gte.encode(TEXTS, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)


def test_a_text_alone_equals_the_same_text_in_a_padded_batch(tiny_gte):
    long_text = "the quick brown fox jumps over the lazy dog " * 40  # ~360 tokens: crosses local windows
    texts = ["hi", long_text, "Beijing", "a medium length sentence about sorting algorithms in python"]
    together = tiny_gte.encode(texts, batch_size=4)
    for i, text in enumerate(texts):
        alone = tiny_gte.encode([text])[0]
        np.testing.assert_allclose(alone, together[i], atol=1e-5, err_msg=f"text {i}")


def test_order_is_restored_after_length_sorting(tiny_gte):
    texts = [("word " * n).strip() for n in (50, 1, 300, 7, 120)]
    batched = tiny_gte.encode(texts, batch_size=2)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(batched[i], tiny_gte.encode(text), atol=1e-5)


def test_token_budget_bounds_the_padded_batch(tiny_gte_dir):
    """Every padded batch the session sees stays within max_batch_tokens (a text longer than the budget runs
    alone), and the vectors do not depend on how the texts were batched."""
    small = Embedder(tiny_gte_dir, threads=1, max_batch_tokens=256)
    shapes = []
    run = small.onnx.run
    small.onnx.run = lambda feed: shapes.append(feed["input_ids"].shape) or run(feed)
    texts = ["word " * 200, "x", "y", "z"] + ["a few words of text"] * 40
    a = small.encode(texts, batch_size=32)
    assert len(shapes) > 2
    assert all(rows * width <= 256 or rows == 1 for rows, width in shapes), shapes
    b = Embedder(tiny_gte_dir, threads=1).encode(texts, batch_size=32)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_truncation_is_reported_never_silent(tiny_gte_short):
    model = tiny_gte_short  # max_length 256
    long_text = " ".join(["token"] * 300)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.encode(["short", long_text])
    assert out.truncated == (1,)
    assert out.token_counts[1] == 302 and out.token_counts[0] == 3  # [CLS] short [SEP]
    assert any(issubclass(w.category, TruncationWarning) and "1 of 2" in str(w.message) for w in caught)
    with pytest.raises(InputTooLongError, match="exceed the max length of 256 tokens.*302 tokens"):
        model.encode(["short", long_text], truncate="error")
    start = model.encode("BEGIN " + long_text, truncate="start")
    end = model.encode("BEGIN " + long_text, truncate="end")
    assert not np.allclose(start, end)
    ids = model.tokenizer.encode(["BEGIN " + long_text], "start").ids[0]
    assert len(ids) == 256 and ids[0] == 50281 and ids[-1] == 50282  # specials kept when cutting


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "empty"),
        (None, "must be a string or a list"),
        ([1, "a"], r"texts\[0\] is int"),
        (["a", None], r"texts\[1\] is NoneType"),
        (b"bytes", "not bytes"),
        (42, "must be a string or a list"),
    ],
)
def test_bad_input_gets_a_clear_error(tiny_gte, bad, message):
    with pytest.raises(InvalidInputError, match=message):
        tiny_gte.encode(bad)


def test_bad_options(tiny_gte, tiny_gte_dir):
    with pytest.raises(InvalidInputError, match="truncate must be one of"):
        tiny_gte.encode("x", truncate="middle")
    with pytest.raises(InvalidInputError, match="batch_size"):
        tiny_gte.encode("x", batch_size=0)
    with pytest.raises(ProviderError, match="CUDAExecutionProvider is not available"):
        Embedder(tiny_gte_dir, providers=["cuda"])


def test_a_reranker_folder_is_not_an_embedder(tiny_reranker_dir):
    from gte_onnx.errors import ModelFolderError

    with pytest.raises(ModelFolderError, match="use Reranker"):
        Embedder(tiny_reranker_dir)


UNICODE = st.text(
    alphabet=st.characters(blacklist_categories=(), min_codepoint=0, max_codepoint=0x10FFFF), max_size=300
)


@given(texts=st.lists(UNICODE | st.sampled_from(["", " ", "\t\n\r", "\x00\x01\x7f", "\ud800", "a\udfffb"]), min_size=1, max_size=4))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_unicode_never_crashes(tiny_gte, texts):
    out = tiny_gte.encode(texts)
    assert out.shape == (len(texts), tiny_gte.dim)
    assert np.isfinite(out).all()


def test_huge_and_whitespace_inputs(tiny_gte_short):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        out = tiny_gte_short.encode(["x" * 100_000, "   ", "\u3000\u00a0", "é" * 100_000])
    assert out.shape == (4, tiny_gte_short.dim) and np.isfinite(out).all()
    assert out.truncated == (0, 3)


def test_full_max_length_input_runs(tiny_gte):
    """One real 8192-token input through the full graph: finite, truncated and reported."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        out = tiny_gte.encode("word " * 9000)
    assert out.truncated == (0,) and np.isfinite(out).all()
