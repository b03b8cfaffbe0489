"""`gte-onnx bench --peers hub,llamacpp`: the transformers.js-recipe files imported onto our runtime and the
llama.cpp GGUF peers, built from the same checkpoint as the other peers; the padded-batch check every
contender gets with --fidelity (NaN rows, vectors that move); the plot's Pareto front."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gte_onnx.bench.cli import main
from gte_onnx.bench.hub_peer import HUB_MODES, topological_sort
from gte_onnx.bench.peers import PEER_ENGINE, parse_peers
from gte_onnx.bench.fidelity import PADDED_BATCH, PADDED_MAX_LENGTH, padded_batches, padded_figures
from gte_onnx.bench.report import padded_mark, pareto_front, quality_drops


def test_the_new_families_expand_to_their_peers():
    assert parse_peers("llamacpp") == ["llamacpp-f16", "llamacpp-q8_0", "llamacpp-q4_k_m"]
    assert parse_peers("hub") == list(HUB_MODES)
    assert set(HUB_MODES.values()) == {"fp16", "int8", "uint8", "q8", "q4", "q4f16", "bnb4"}
    assert PEER_ENGINE["hub-q4"] == "gte-onnx" and PEER_ENGINE["llamacpp-q8_0"] == "llama.cpp"


def test_pareto_front_keeps_the_undominated_points():
    points = [("fast-rough", 10.0, 0.90), ("slow-exact", 1.0, 1.00), ("middle", 5.0, 0.99),
              ("dominated", 4.0, 0.98), ("tie-of-middle", 5.0, 0.99), ("worse", 0.5, 0.5)]
    assert pareto_front(points) == ["fast-rough", "slow-exact", "middle", "tie-of-middle"]
    assert pareto_front([]) == [] and pareto_front([("only", 1.0, 1.0)]) == ["only"]


def test_padded_figures_mark_nan_rows_and_vectors_that_move():
    rng = np.random.default_rng(0)
    alone = rng.normal(size=(6, 8))
    ok = padded_figures(alone, alone + 1e-6)
    assert ok["padded"] == "ok" and ok["padded_nonfinite_rows"] == 0 and ok["padded_cosine_min"] > 0.999999
    broken = alone.copy()
    broken[2:4] = np.nan
    nan = padded_figures(alone, broken)
    assert nan["padded"] == "NaN" and nan["padded_nonfinite_rows"] == 2 and nan["padded_rows"] == 6
    assert padded_mark(nan) == "PADDED: NaN in 2/6 rows"
    moved = alone.copy()
    moved[0] = rng.normal(size=8)
    moves = padded_figures(alone, moved)
    assert moves["padded"] == "moves" and padded_mark(moves).startswith("PADDED: moves")
    assert padded_mark({"reference": True}) == "" and padded_mark(None) == ""


def test_padded_batches_mix_short_and_long_inputs():
    probe = [[1] * n for n in (3, 700, 40, 9, 130, 512, 20, 300, 64, 5, 250, 17, 88, 401, 6, 33, 2)]
    order, batches = padded_batches(probe)
    assert sorted(order) == [i for i, p in enumerate(probe) if len(p) <= PADDED_MAX_LENGTH]  # 700 left out
    assert all(len(b) <= PADDED_BATCH for b in batches) and sum(len(b) for b in batches) == len(order)
    assert [row for b in batches for row in b] == [probe[i] for i in order]
    for batch in batches:  # every batch spans short to long: real padding
        lengths = [len(r) for r in batch]
        assert max(lengths) >= 10 * min(lengths)


def test_topological_sort_restores_producer_order():
    from onnx import helper

    nodes = [helper.make_node("Relu", ["b"], ["c"], name="second"), helper.make_node("Relu", ["a"], ["b"], name="first"),
             helper.make_node("Add", ["c", "b"], ["d"], name="third")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", 1, [1])],
                              [helper.make_tensor_value_info("d", 1, [1])])
    topological_sort(graph)
    assert [n.name for n in graph.node] == ["first", "second", "third"]


def test_quality_drops_map_dev_rows_onto_bench_names():
    quality = {"rows": {"ours-int8": {"drops_vs_ours_fp32": {"sts_drop": 0.2}},
                        "hub-q4": {"drops_vs_ours_fp32": {"sts_drop": 1.5}}, "pytorch": {}}}
    assert quality_drops(quality) == {"int8": 0.2, "hub-q4": 1.5}


def _argv(folder, cache, out, peers, plot=None):
    argv = [str(folder), "--shapes", "1x16", "--threads", "1", "--peers", peers, "--peers-cache", str(cache),
            "--repeats", "2", "--warmups", "1", "--gap", "0", "--json", str(out), "--no-progress",
            "--torch", "auto", "--torch-dtypes", "fp32", "--fidelity"]
    return argv + (["--plot", str(plot)] if plot else [])


@pytest.mark.slow  # builds the transformers.js-recipe peers
def test_hub_peers_are_imported_onto_our_runtime_and_measured(tiny_gte_dir, tmp_path, capsys):
    """The transformers.js int8 and q4 files of the tiny ModernBERT: built, `gte-onnx import`ed, timed,
    measured one at a time and in padded batches; the plot marks the Pareto front."""
    pytest.importorskip("matplotlib")
    code = main(_argv(tiny_gte_dir, tmp_path / "cache", tmp_path / "bench.json", "hub-int8,hub-q4",
                      plot=tmp_path / "bench.png"))
    assert code == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    contenders = {c["key"]: c for c in result["contenders"]}
    for name, variant in (("hub-int8", "int8"), ("hub-q4", "q4")):
        peer = contenders[name]
        assert peer["error"] is None, peer["error"]
        assert peer["provider"] == "gte-onnx" and peer["info"]["variant"] == variant
        assert "c6b7edfdac1c" in peer["recipe"]["peer"] and 0 < peer["file_bytes"] < 20_000_000
        measured = peer["measured_fidelity"]
        assert measured["centred_cosine_mean"] > 0.3 and measured["padded"] == "ok", measured
        (cache,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
        manifest = json.loads((cache / name / "model" / "gte-onnx.json").read_text())
        assert manifest["source"]["imported"] == "transformers.js" and list(manifest["variants"]) == [variant]
    rows = {r["key"]: r for r in result["results"]}
    assert rows["hub-q4"]["error"] is None and rows["hub-q4"]["median_s"] > 0
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert "padded ok" in capsys.readouterr().out


@pytest.mark.slow  # a bench run with a llama.cpp peer and PyTorch
def test_a_llamacpp_peer_that_cannot_build_is_a_row_with_its_reason(tiny_gte_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAMA_CPP_CONVERTER", str(tmp_path / "absent" / "convert_hf_to_gguf.py"))
    code = main(_argv(tiny_gte_dir, tmp_path / "cache", tmp_path / "bench.json", "llamacpp-q8_0"))
    assert code == 0  # a peer's failure is reported, not a failed run
    result = json.loads((tmp_path / "bench.json").read_text())
    peer = next(c for c in result["contenders"] if c["key"] == "llamacpp-q8_0")
    assert "convert_hf_to_gguf.py was not found" in peer["error"]
    row = next(r for r in result["results"] if r["key"] == "llamacpp-q8_0")
    assert row["error"] and row["median_s"] is None
    assert "llamacpp-q8_0: building peer llamacpp-q8_0 failed" in capsys.readouterr().out


@pytest.mark.slow
def test_llamacpp_peers_of_the_tiny_modernbert_agree_with_pytorch(tiny_gte_dir, tmp_path):
    """GGUF f16 and q8_0 through llama-cpp-python, CLS pooling: close to PyTorch fp32, and the same vectors
    alone and packed with others into one decode."""
    pytest.importorskip("llama_cpp", reason="the [llamacpp] extra is not installed (scripts/install-llamacpp.sh)")
    from gte_onnx.bench.llamacpp_peer import converter_path

    try:
        converter_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    code = main(_argv(tiny_gte_dir, tmp_path / "cache", tmp_path / "bench.json", "llamacpp-f16,llamacpp-q8_0"))
    assert code == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    contenders = {c["key"]: c for c in result["contenders"]}
    # f16 agrees to rounding; 8-bit weights move the 64-wide tiny model's centred vectors a lot (its
    # hub and optimum int8 files land at ~0.45 too), so only the order and a floor are checked.
    for name, limit in (("llamacpp-f16", 0.9999), ("llamacpp-q8_0", 0.3)):
        peer = contenders[name]
        assert peer["error"] is None, peer["error"]
        assert peer["info"]["pooling"] == "cls" and peer["file_bytes"] > 100_000
        assert peer["measured_fidelity"]["centred_cosine_mean"] > limit, peer["measured_fidelity"]
        assert peer["measured_fidelity"]["padded"] == "ok", peer["measured_fidelity"]
    assert (contenders["llamacpp-q8_0"]["measured_fidelity"]["centred_cosine_mean"]
            < contenders["llamacpp-f16"]["measured_fidelity"]["centred_cosine_mean"])


@pytest.mark.slow
def test_the_llamacpp_peer_of_a_bert_checkpoint_mean_pools_like_our_fp32(minilm_dir, tmp_path):
    """all-MiniLM-L6-v2's real weights (BERT, mean pooling) through llama.cpp's converter and runtime."""
    pytest.importorskip("llama_cpp", reason="the [llamacpp] extra is not installed (scripts/install-llamacpp.sh)")
    from gte_onnx import Embedder
    from gte_onnx.bench.llamacpp_peer import LlamaCppBackend, converter_path
    from gte_onnx.bench.peer_backends import PeerBuilder
    from gte_onnx.bench.torch_baseline import resolve_torch_spec
    from gte_onnx.folder.manifest import Manifest
    from gte_onnx.inference.pooling import l2_normalize

    try:
        converter_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    spec = resolve_torch_spec("auto", Manifest.load(minilm_dir))
    built = PeerBuilder({"cache": str(tmp_path), "folder": str(minilm_dir), "peers": ["llamacpp-f16"],
                         "torch": spec}).load()["built"]
    assert built["llamacpp-f16"].get("error") is None, built
    backend = LlamaCppBackend({"peer": "llamacpp-f16", "cache": str(tmp_path), "threads": 1,
                               "folder": str(minilm_dir), "n_ctx": 512})
    assert backend.load()["pooling"] == "mean"
    texts = ["Beijing", "what is the capital of China?", "how to implement quick sort in python? " * 6]
    ours = Embedder(minilm_dir, threads=1)
    rows = ours.tokenizer.encode(texts).ids
    got = l2_normalize(backend.embed_rows([list(r) for r in rows]))
    cos = np.sum(got * ours.encode(texts, normalize=True), axis=1)
    assert cos.min() > 0.999, cos


def test_summary_table_gives_one_row_per_contender_with_the_padded_verdict_and_why_it_failed():
    from gte_onnx.bench.report import summary_table

    def row(key, shape, median, error=None):
        return {"key": key, "shape": shape, "mode": "shape", "median_s": median, "peak_rss_bytes": 4e8, "error": error}

    result = {
        "settings": {"shapes": ["1x16", "32x128"]},
        "contenders": [
            {"key": "int8", "name": "int8", "provider": "CPUExecutionProvider", "load_s": 0.2, "file_bytes": 136e6,
             "measured_fidelity": {"centred_cosine_mean": 0.99582, "padded": "ok"}},
            {"key": "openvino", "name": "openvino", "provider": "openvino", "load_s": 0.8, "file_bytes": 597e6,
             "measured_fidelity": {"centred_cosine_mean": 0.99992, "padded": "NaN", "padded_nonfinite_rows": 61,
                                   "padded_rows": 72}},
            {"key": "llamacpp-q8_0", "name": "llamacpp-q8_0", "provider": "llama.cpp", "file_bytes": None,
             "error": "building peer llamacpp-q8_0 failed: FileNotFoundError: no converter"},
        ],
        "results": [row("int8", "1x16", 0.0354), row("int8", "32x128", 3.388), row("openvino", "1x16", 0.0284),
                    row("openvino", "32x128", 1.938), row("llamacpp-q8_0", "1x16", None, "failed")],
    }
    lines = summary_table(result).splitlines()
    assert [cell.strip() for cell in lines[0].split("|")[1:-1]] == [
        "contender", "engine", "1x16 ms", "32x128 ms", "peak RSS GB", "load s", "file MB", "centred cos",
        "padded batch", "why it failed"]
    int8, openvino, llama = lines[2:]
    assert "35.4" in int8 and "3388" in int8 and "0.99582" in int8 and "| ok " in int8
    assert "NaN (61/72 rows)" in openvino and "1938" in openvino
    assert "failed" in llama and "no converter" in llama
