"""Metrics against hand-computed values (no scipy), gates passing and failing, data loaders."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gte_onnx.parity import metrics
from gte_onnx.parity.datasets import DataFormatError, load_cisi, load_sts_b
from gte_onnx.parity.gates import DEFAULT_GATES, check_gate, gate_kind, parse_overrides


# ---- metrics -----------------------------------------------------------------------------------------
def test_cosine_rows_hand_values():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [0.0, 0.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0], [-3.0, -4.0], [0.0, 0.0]])
    np.testing.assert_allclose(metrics.cosine_rows(a, b), [0.0, 1.0, -1.0, 1.0], atol=1e-12)
    # one zero row against a non-zero row: 0, never NaN
    assert metrics.cosine_rows([[0.0, 0.0]], [[1.0, 0.0]])[0] == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.cosine_rows(np.ones((2, 3)), np.ones((3, 3)))


def test_centred_cosine_sees_what_plain_cosine_hides():
    rng = np.random.default_rng(0)
    common = np.full(16, 10.0)  # every row nearly parallel, like random-weight CLS vectors
    ref = common + 0.1 * rng.standard_normal((50, 16))
    noisy = ref + 0.1 * rng.standard_normal((50, 16))
    assert metrics.cosine_rows(ref, noisy).min() > 0.999
    centred = metrics.centred_cosine_rows(ref, noisy)
    assert centred.mean() < 0.8  # the error is as large as the spread between texts
    np.testing.assert_allclose(metrics.centred_cosine_rows(ref, ref), 1.0)
    # hand case: center (1, 1); (2, 1)-(1,1) = (1, 0) and (1, 2)-(1,1) = (0, 1) -> orthogonal
    got = metrics.centred_cosine_rows([[2.0, 1.0]], [[1.0, 2.0]], center=np.array([1.0, 1.0]))
    assert got[0] == pytest.approx(0.0)


def test_max_abs_diff_and_relative_error():
    assert metrics.max_abs_diff([[1.0, 2.0]], [[1.5, 1.0]]) == pytest.approx(1.0)
    assert metrics.relative_error(np.array([0.0, 2.0]), np.array([0.5, 2.0])) == pytest.approx(0.5)


def test_rankdata_averages_ties():
    np.testing.assert_allclose(metrics.rankdata([10, 20, 20, 5]), [2.0, 3.5, 3.5, 1.0])
    np.testing.assert_allclose(metrics.rankdata([1, 1, 1]), [2.0, 2.0, 2.0])


def test_spearman_known_values():
    assert metrics.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    assert metrics.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)); ranks (1,2,3,4) vs (2,1,4,3): d^2 = 4 -> 1 - 24/60 = 0.6
    assert metrics.spearman([1, 2, 3, 4], [20, 10, 40, 30]) == pytest.approx(0.6)
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(metrics.spearman([1, float("nan"), 3], [1, 2, 3]))


def test_topk_overlap():
    ref = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4]])
    cand = np.array([[0.9, 0.0, 0.8, 0.1], [0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(metrics.topk_overlap(ref, cand, 2), [0.5, 1.0])
    # k larger than the number of documents is capped
    np.testing.assert_allclose(metrics.topk_overlap(ref, cand, 10), [1.0, 1.0])


def test_ndcg_and_mrr_hand_values():
    # relevant at ranks 1 and 3 of 2 relevant: DCG = 1 + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3)
    expected = 1.5 / (1 + 1 / math.log2(3))
    assert metrics.ndcg_at_k(["a", "x", "b"], {"a", "b"}, 10) == pytest.approx(expected)
    assert metrics.ndcg_at_k(["a", "b"], {"a", "b"}, 10) == pytest.approx(1.0)
    assert metrics.ndcg_at_k(["x", "y"], {"a"}, 10) == 0.0
    assert metrics.ndcg_at_k(["x", "a"], {"a"}, 1) == 0.0  # the hit is below the cut-off
    # graded: gains 3 then 1 in the wrong order
    graded = metrics.ndcg_at_k(["b", "a"], {"a": 3, "b": 1}, 2)
    assert graded == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    assert metrics.mrr_at_k(["x", "y", "a"], {"a"}, 10) == pytest.approx(1 / 3)
    assert metrics.mrr_at_k(["x", "y", "a"], {"a"}, 2) == 0.0


# ---- gates -------------------------------------------------------------------------------------------
GOOD_INT8 = {
    "cosine_mean": 0.995, "cosine_p1": 0.99, "centred_cosine_mean": 0.97, "topk_overlap": 0.9,
    "score_spearman": 0.97, "sts_drop": 0.1, "cisi_ndcg_drop": 0.2,
}


def test_gate_passes_and_fails():
    assert check_gate("int8", GOOD_INT8).passed
    bad = dict(GOOD_INT8, sts_drop=0.5)
    result = check_gate("int8", bad)
    assert not result.passed and result.failures == ["sts_drop 0.5 > 0.3"]
    # q4 tolerates the same drop
    assert check_gate("q4", bad).passed
    nan = dict(GOOD_INT8, centred_cosine_mean=float("nan"))
    assert check_gate("int8", nan).failures == ["centred_cosine_mean is NaN"]


def test_gate_skips_unmeasured_but_never_passes_empty():
    partial = {"cosine_mean": 0.999}
    result = check_gate("int8", partial)
    assert result.passed and "sts_drop" in result.skipped
    empty = check_gate("int8", {})
    assert not empty.passed and "no figure" in empty.failures[0]


def test_gate_overrides():
    bad = dict(GOOD_INT8, sts_drop=0.5)
    assert check_gate("int8", bad, parse_overrides(["sts_drop=0.6"])).passed
    assert check_gate("int8", bad, parse_overrides(["sts_drop=off"])).passed
    assert not check_gate("int8", GOOD_INT8, {"cosine_mean": 0.999}).passed
    for wrong in (["nope=1"], ["cosine_mean"], ["cosine_mean=abc"], ["cosine_mean=inf"]):
        with pytest.raises(ValueError):
            parse_overrides(wrong)


def test_rerank_gates_and_kinds():
    good = {"logit_relative_error": 0.05, "logit_spearman": 0.99, "rerank_topk_overlap": 1.0}
    assert check_gate("int8", good, task="rerank").passed
    assert not check_gate("int8", dict(good, logit_spearman=0.5), task="rerank").passed
    assert gate_kind("int8") == "int8" and gate_kind("model_int8_static") == "int8"
    assert gate_kind("q4f16") == "q4f16" and gate_kind("q4") == "q4" and gate_kind("fp16") == "fp16"
    assert gate_kind("fp32") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        gate_kind("mystery")
    assert set(DEFAULT_GATES) >= {"fp32", "fp16", "int8", "q4", "q4f16"}


# ---- data --------------------------------------------------------------------------------------------
def test_sts_b_loader():
    s1, s2, gold = load_sts_b("test")
    assert len(s1) == len(s2) == len(gold) == 1379
    assert s1[0] == "A girl is styling her hair." and gold[0] == 2.5
    assert 0.0 <= gold.min() and gold.max() <= 5.0
    assert len(load_sts_b("dev")[0]) == 1500


def test_sts_b_malformed(tmp_path):
    bad = tmp_path / "sts-test.csv"
    bad.write_text("genre\tfile\tyear\t1\tnot-a-number\ta\tb\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="not a number"):
        load_sts_b("test", bad)
    bad.write_text("only\tthree\tfields\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="7 tab-separated"):
        load_sts_b("test", tmp_path)
    with pytest.raises(DataFormatError, match="does not exist"):
        load_sts_b("test", tmp_path / "missing.csv")


def test_cisi_loader():
    rs = load_cisi()
    assert len(rs.documents) == 1460 and len(rs.queries) == 76
    assert sum(len(v) for v in rs.qrels.values()) == 3114
    assert rs.documents["1"].startswith("18 Editions of the Dewey Decimal Classifications. The present study")
    assert set(rs.queries) == set(rs.qrels)


def test_cisi_malformed(tmp_path):
    (tmp_path / "CISI.ALL").write_text(".I 1\n.T\nTitle\n.W\nAbstract\n", encoding="utf-8")
    (tmp_path / "CISI.QRY").write_text(".I 1\n.W\nquery text\n", encoding="utf-8")
    (tmp_path / "CISI.REL").write_text("1 2 0 0\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="document 2 is not in CISI.ALL"):
        load_cisi(tmp_path)
    (tmp_path / "CISI.REL").write_text("1 1 0 0\n", encoding="utf-8")
    rs = load_cisi(tmp_path)
    assert rs.documents == {"1": "Title. Abstract"} and rs.qrels == {"1": {"1"}}
    (tmp_path / "CISI.QRY").unlink()
    with pytest.raises(DataFormatError, match="lacks CISI.QRY"):
        load_cisi(tmp_path)
