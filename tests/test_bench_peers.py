"""`gte-onnx bench --peers optimum,openvino --fidelity` on the tiny ModernBERT: the peers are built from
the same checkpoint into a cache, timed in their own workers next to our variants, measured against
PyTorch fp32 like them, and a broken peer is reported without sinking the run."""

from __future__ import annotations

import json
import shutil

import pytest
from gte_onnx.bench.cli import main
from gte_onnx.bench.peers import PEER_FAMILIES, parse_peers
from gte_onnx.errors import InvalidInputError

PEERS = ["optimum-fp32", "optimum-int8", "openvino", "openvino-int8"]


def test_parse_peers_families_and_single_peers():
    assert parse_peers("optimum,openvino") == PEERS
    assert parse_peers("openvino-int8,optimum") == ["openvino-int8", "optimum-fp32", "optimum-int8"]
    assert parse_peers(None) == [] and set(PEER_FAMILIES) == {"optimum", "openvino"}
    with pytest.raises(InvalidInputError, match="unknown peer 'fastembed'"):
        parse_peers("optimum,fastembed")


def _argv(folder, cache, out, peers="optimum,openvino", with_torch=True):
    torch = ["--torch", "auto", "--torch-dtypes", "fp32", "--fidelity"] if with_torch else []
    return [str(folder), "--shapes", "1x16", "--threads", "1", "--peers", peers, "--peers-cache", str(cache),
            "--peers-calibration", "4", "--repeats", "2", "--warmups", "1", "--gap", "0", "--json", str(out),
            "--no-progress", *torch]


@pytest.fixture(scope="module")
def peers_run(tiny_gte_dir, tmp_path_factory):
    pytest.importorskip("openvino", reason="the [peers] extra (openvino, nncf) is not installed")
    pytest.importorskip("nncf", reason="the [peers] extra (openvino, nncf) is not installed")
    work = tmp_path_factory.mktemp("peers")
    code = main(_argv(tiny_gte_dir, work / "cache", work / "bench.json"))
    return code, json.loads((work / "bench.json").read_text()), work


def test_peers_are_built_timed_and_measured_like_our_variants(peers_run):
    code, result, _ = peers_run
    assert code == 0
    contenders = {c["key"]: c for c in result["contenders"]}
    assert set(contenders) == {"fp32", "torch-fp32", *PEERS}
    for name in PEERS:
        peer = contenders[name]
        assert peer["kind"] == "peer" and peer["error"] is None, peer["error"]
        assert peer["build"]["cached"] is False and peer["file_bytes"] > 100_000
        assert peer["load_s"] > 0 and peer["rss_after_load_bytes"] > 0
    assert contenders["openvino"]["info"]["inference_precision"] in ("bf16", "f32", "f16")
    rows = {r["key"]: r for r in result["results"]}
    for name in ["fp32", *PEERS]:
        assert rows[name]["error"] is None and rows[name]["n"] == 2 and rows[name]["peak_rss_bytes"] > 0
        assert rows[name]["vs_torch_fp32"] == pytest.approx(rows["torch-fp32"]["median_s"] / rows[name]["median_s"])
    assert PEERS[0] not in result["ranking"]["CPUExecutionProvider"]  # peers are not variants to pick


def test_fidelity_is_measured_the_same_way_for_variants_and_peers(peers_run):
    _, result, _ = peers_run
    measured = {c["key"]: c["measured_fidelity"] for c in result["contenders"]}
    assert measured["torch-fp32"] == {"reference": True}
    # fp32 exports agree with PyTorch to float rounding; int8 is measurably further off
    assert measured["fp32"]["max_abs_diff"] < 1e-4 and measured["optimum-fp32"]["max_abs_diff"] < 1e-4
    assert measured["fp32"]["centred_cosine_mean"] > 0.9999
    assert measured["optimum-int8"]["max_abs_diff"] > measured["optimum-fp32"]["max_abs_diff"]
    for name in PEERS:
        assert set(measured[name]) >= {"max_abs_diff", "centred_cosine_mean", "centred_cosine_min"}


def test_a_rerun_loads_the_cache_and_a_broken_peer_is_reported_not_fatal(peers_run, tiny_gte_dir, capsys):
    _, first, work = peers_run
    cache_root = work / "cache"
    broken_root = work / "broken"
    shutil.copytree(cache_root, broken_root)
    (key,) = [p for p in broken_root.iterdir() if p.is_dir()]
    (key / "openvino" / "openvino_model.xml").write_text("<not a model/>")
    code = main(_argv(tiny_gte_dir, broken_root, work / "again.json", peers="openvino", with_torch=False))
    result = json.loads((work / "again.json").read_text())
    assert code == 0  # someone else's engine failing is reported, not a failed run
    peer = next(c for c in result["contenders"] if c["key"] == "openvino")
    assert peer["build"] == {"cached": True}
    assert peer["error"] and "openvino" in peer["error"]
    row = next(r for r in result["results"] if r["key"] == "openvino")
    assert row["error"] and row["median_s"] is None
    out = capsys.readouterr().out
    assert "failures:" in out and "openvino:" in out
