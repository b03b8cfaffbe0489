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
    assert parse_peers(None) == [] and set(PEER_FAMILIES) == {"optimum", "openvino", "llamacpp", "hub"}
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


@pytest.mark.slow  # builds bench peers (optimum, OpenVINO)
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


@pytest.mark.slow  # builds bench peers (optimum, OpenVINO)
def test_fidelity_is_measured_the_same_way_for_variants_and_peers(peers_run):
    _, result, _ = peers_run
    measured = {c["key"]: c["measured_fidelity"] for c in result["contenders"]}
    assert measured["torch-fp32"]["reference"] is True and measured["torch-fp32"]["padded"] == "ok"
    # fp32 exports agree with PyTorch to float rounding; int8 is measurably further off
    assert measured["fp32"]["max_abs_diff"] < 1e-4 and measured["optimum-fp32"]["max_abs_diff"] < 1e-4
    assert measured["fp32"]["centred_cosine_mean"] > 0.9999
    assert measured["optimum-int8"]["max_abs_diff"] > measured["optimum-fp32"]["max_abs_diff"]
    for name in PEERS:
        assert set(measured[name]) >= {"max_abs_diff", "centred_cosine_mean", "centred_cosine_min"}


@pytest.mark.slow  # builds bench peers (optimum, OpenVINO)
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


def _padded(rows):
    import numpy as np

    ids = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask


@pytest.mark.slow  # builds bench peers (optimum, OpenVINO)
def test_a_peer_honours_the_attention_mask_of_a_padded_batch(peers_run, tiny_gte_dir):
    """PeerBackend.hidden(ids, mask): the tokens of a padded batch get what they get alone (the data-set
    evaluation in dev/peer_data_fidelity.py batches peers this way)."""
    import numpy as np
    from gte_onnx.bench.peer_backends import PeerBackend
    from gte_onnx.inference.tokenize import TextTokenizer

    _, _, work = peers_run
    (cache,) = [p for p in (work / "cache").iterdir() if p.is_dir()]
    rows = TextTokenizer.from_folder(tiny_gte_dir, 100).encode(["Beijing", "what is the capital of China? " * 4]).ids
    ids, mask = _padded(rows)
    for name in PEERS:
        backend = PeerBackend({"peer": name, "cache": str(cache), "threads": 1})
        backend.load()
        batch = backend.hidden(ids, mask)
        for i, row in enumerate(rows):
            alone = backend.hidden(row[None, :])[0]
            np.testing.assert_allclose(batch[i, : len(row)], alone, atol=2e-2 if "int8" in name else 1e-3,
                                       err_msg=name)
        with pytest.raises(ValueError, match="attention_mask has shape"):
            backend.hidden(ids, mask[:, :-1])


@pytest.mark.slow  # builds bench peers (optimum, OpenVINO)
def test_the_openvino_peer_of_a_bert_checkpoint_pools_as_its_manifest_says(minilm_dir, tmp_path):
    """A BERT checkpoint with mean pooling (all-MiniLM-L6-v2's real weights): the peer built from it,
    pooled the folder's way over a padded batch, agrees with our fp32 Embedder."""
    pytest.importorskip("openvino", reason="the [peers] extra (openvino, nncf) is not installed")
    import numpy as np
    from gte_onnx import Embedder
    from gte_onnx.bench.peer_backends import PeerBackend, PeerBuilder
    from gte_onnx.bench.torch_baseline import resolve_torch_spec
    from gte_onnx.folder.manifest import Manifest
    from gte_onnx.inference.pooling import l2_normalize, pool

    manifest = Manifest.load(minilm_dir)
    assert manifest.pooling == "mean"
    spec = resolve_torch_spec("auto", manifest)
    built = PeerBuilder({"cache": str(tmp_path), "folder": str(minilm_dir), "peers": ["openvino"],
                         "torch": spec}).load()["built"]
    assert built["openvino"].get("error") is None, built
    backend = PeerBackend({"peer": "openvino", "cache": str(tmp_path), "threads": 1})
    backend.load()
    texts = ["Beijing", "what is the capital of China?", "how to implement quick sort in python? " * 6]
    ours = Embedder(minilm_dir, threads=1)
    ids, mask = _padded(ours.tokenizer.encode(texts).ids)
    peer = l2_normalize(pool(manifest.pooling, backend.hidden(ids, mask), mask))
    cos = np.sum(peer * ours.encode(texts, normalize=True), axis=1)
    assert cos.min() > 0.999, cos  # bf16 on CPUs that have it, fp32 elsewhere
    cls = l2_normalize(pool("cls", backend.hidden(ids, mask), mask))
    assert np.sum(cls * ours.encode(texts, normalize=True), axis=1).min() < 0.99  # the pooling matters
