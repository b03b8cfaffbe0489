"""gte_onnx.bench's arithmetic with injected fake timings: statistics, ratios, interleaving, ranking,
shapes, corpus files, the report, and the torch-free import wall. No model, no worker process."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gte_onnx.bench.corpus import load_corpus, load_corpus_file
from gte_onnx.bench.measure import (
    RepeatPolicy,
    RoundOrder,
    geometric_mean,
    interleave,
    precedence_counts,
    speed_ratio,
    summarize,
)
from gte_onnx.inference.speed_ranking import rank_rows
from gte_onnx.bench.report import (
    failures,
    fidelity_figures,
    headline_figure,
    results_table,
)
from gte_onnx.bench.runner import add_ratios
from gte_onnx.bench.shapes import Shape, TokenSource, parse_shapes
from gte_onnx.bench.torch_baseline import resolve_torch_spec
from gte_onnx.errors import InvalidInputError, ModelFolderError
from gte_onnx.folder.manifest import Manifest

GTE_ID = "Alibaba-NLP/gte-modernbert-base"
ROOT = Path(__file__).resolve().parents[2]
GTE_TOKENIZER = ROOT / "export" / "model_files" / GTE_ID / "tokenizer.json"


# ---- statistics -------------------------------------------------------------------------------------
def test_summarize_quartiles_p95_and_extremes():
    stats = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (stats.n, stats.median, stats.min, stats.max) == (5, 3.0, 1.0, 5.0)
    assert (stats.q1, stats.q3, stats.iqr) == (2.0, 4.0, 2.0)
    assert stats.p95 == pytest.approx(4.8)  # linear interpolation between the two largest
    assert stats.mean == pytest.approx(3.0)
    assert stats.relative_iqr == pytest.approx(2.0 / 3.0)


def test_summarize_even_count_and_single_sample():
    assert summarize([1.0, 2.0, 10.0, 20.0]).median == pytest.approx(6.0)
    one = summarize([0.25])
    assert (one.median, one.p95, one.iqr) == (0.25, 0.25, 0.0)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, -0.5], [float("inf")]])
def test_summarize_rejects_bad_samples(bad):
    with pytest.raises(InvalidInputError):
        summarize(bad)


def test_speed_ratio_is_reference_time_over_row_time():
    assert speed_ratio(6.0, 2.0) == pytest.approx(3.0)  # 3x faster than the reference
    assert speed_ratio(1.0, 4.0) == pytest.approx(0.25)
    assert speed_ratio(None, 1.0) is None
    assert speed_ratio(1.0, None) is None
    assert speed_ratio(1.0, 0.0) is None


def test_geometric_mean():
    assert geometric_mean([1.0, 100.0]) == pytest.approx(10.0)
    with pytest.raises(InvalidInputError):
        geometric_mean([1.0, 0.0])


# ---- repeat policy and interleaving -----------------------------------------------------------------
def test_repeat_policy_minimum_budget_and_maximum():
    policy = RepeatPolicy(min_warmups=1, max_warmups=3, warmup_budget_s=1.0, min_repeats=3, max_repeats=5,
                          budget_s=2.0)
    assert not policy.warmup_done([])
    assert policy.warmup_done([5.0])  # one slow warm-up is enough
    assert not policy.warmup_done([0.1])
    assert policy.warmup_done([0.1, 0.1, 0.1])  # cheap ones stop at the maximum
    assert not policy.repeats_done([10.0, 10.0])  # never fewer than min_repeats
    assert policy.repeats_done([10.0, 10.0, 10.0])
    assert not policy.repeats_done([0.1] * 4)  # under budget
    assert policy.repeats_done([0.1] * 5)  # at the maximum
    with pytest.raises(InvalidInputError):
        RepeatPolicy(min_repeats=0)
    with pytest.raises(InvalidInputError):
        RepeatPolicy(min_warmups=3, max_warmups=1)


def test_heavy_cells_stop_at_their_own_minimum():
    policy = RepeatPolicy(min_repeats=3, max_repeats=20, budget_s=2.0, heavy_s=3.0, heavy_min_repeats=2)
    assert not policy.repeats_done([30.0])
    assert policy.repeats_done([30.0, 3.0])
    assert not policy.repeats_done([30.0, 2.9])  # one light run: the normal minimum applies
    assert policy.repeats_done([30.0, 2.9, 1.0])
    with pytest.raises(InvalidInputError):
        RepeatPolicy(min_repeats=3, heavy_min_repeats=4)


def test_round_order_is_seeded_mirrored_and_recorded():
    names = ["a", "b", "c", "d"]
    order = RoundOrder(seed=3)
    rounds = [order.next(names, "repeat") for _ in range(6)]
    assert all(sorted(r) == names for r in rounds)
    assert all(rounds[k + 1] == rounds[k][::-1] for k in range(0, 6, 2))  # every odd round mirrors
    assert len({tuple(r) for r in rounds[::2]}) > 1  # fresh random orders, not one fixed rotation
    assert [r["order"] for r in order.rounds] == rounds and order.rounds[0]["phase"] == "repeat"
    again = RoundOrder(seed=3)
    assert [again.next(names, "repeat") for _ in range(6)] == rounds  # reproducible from its seed
    # a runner that finished drops out of the mirror, the others keep their mirrored places
    shrink = RoundOrder(seed=1)
    first = shrink.next(names, "repeat")
    assert shrink.next([n for n in names if n != first[0]], "repeat") == [n for n in first[::-1] if n != first[0]]


def _fake_runners(durations: dict[str, float], log: list[str]):
    def make(name):
        def run():
            log.append(name)
            return durations[name]
        return run
    return {name: make(name) for name in durations}


def test_interleave_warms_up_then_times_in_balanced_rounds():
    log: list[str] = []
    policy = RepeatPolicy(min_warmups=1, max_warmups=1, warmup_budget_s=0, min_repeats=4, max_repeats=4,
                          budget_s=0)
    order = RoundOrder(seed=0)
    out = interleave(_fake_runners({"a": 0.1, "b": 0.2, "c": 0.3}, log), policy, order=order)
    assert len(log) == 3 * 5 and sorted(log[:3]) == ["a", "b", "c"]  # one warm-up round, four timed
    assert [r["phase"] for r in order.rounds] == ["warmup"] + ["repeat"] * 4
    assert log == [name for r in order.rounds for name in r["order"]]  # the record is what ran
    assert out["a"].warmups == [0.1] and out["a"].samples == [0.1] * 4
    assert out["c"].samples == [0.3] * 4 and out["c"].error is None
    timed = precedence_counts([r["order"] for r in order.rounds[1:]])
    assert all(timed[(x, y)] == 2 for x in "abc" for y in "abc" if x != y)


class _SlowNeighbourMachine:
    """A fake clock and CPU: after each of its runs the "noisy" contender leaves a thread spinning for
    15 ms, and a run that starts while it spins takes twice as long (only the next one does)."""

    def __init__(self):
        self.now = 0.0
        self.spinning_until = -1.0
        self.log: list[str] = []

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def runner(self, name: str, base: float):
        def run() -> float:
            seconds = base * (2.0 if self.now < self.spinning_until else 1.0)
            self.now += seconds
            self.log.append(name)
            if name == "noisy":
                self.spinning_until = self.now + 0.015
            return seconds
        return run


class _FixedRotation(RoundOrder):
    """The old schedule, for contrast: the same order rotated by one place each round."""

    def next(self, active, phase):
        k = len(self.rounds) % len(active)
        order = list(active[k:]) + list(active[:k])
        self.rounds.append({"phase": phase, "order": order})
        return order


def _twin_ratio(order: RoundOrder, gap_s: float, rounds: int = 60) -> tuple[float, _SlowNeighbourMachine]:
    machine = _SlowNeighbourMachine()
    runners = {"noisy": machine.runner("noisy", 0.05), "twin": machine.runner("twin", 0.01),
               "twin~2": machine.runner("twin~2", 0.01)}
    policy = RepeatPolicy(min_warmups=1, max_warmups=1, warmup_budget_s=0, min_repeats=rounds,
                          max_repeats=rounds, budget_s=0)
    out = interleave(runners, policy, gap_s=gap_s, sleep=machine.sleep, order=order)
    return float(np.mean(out["twin~2"].samples) / np.mean(out["twin"].samples)), machine


def _followers_of(machine: _SlowNeighbourMachine, name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for before, after in zip(machine.log, machine.log[1:]):
        if before == name:
            counts[after] = counts.get(after, 0) + 1
    return counts


def test_a_slow_neighbour_falls_on_every_contender_alike():
    # The fixed rotation keeps the cyclic order: "twin" follows "noisy" two rounds in three.
    biased, machine = _twin_ratio(_FixedRotation(), gap_s=0.0)
    assert not 0.9 <= biased <= 1.1, biased
    followers = _followers_of(machine, "noisy")
    assert followers["twin"] >= 1.8 * followers["twin~2"], followers
    # The balanced random order: each twin follows the noisy one about as often, so they agree.
    order = RoundOrder(seed=0)
    balanced, machine = _twin_ratio(order, gap_s=0.0)
    assert 0.9 <= balanced <= 1.1, balanced
    followers = _followers_of(machine, "noisy")
    assert abs(followers["twin"] - followers["twin~2"]) <= 0.25 * (followers["twin"] + followers["twin~2"])
    # Order statistics of the recorded timed rounds: every contender precedes every other equally often.
    timed = precedence_counts([r["order"] for r in order.rounds if r["phase"] == "repeat"])
    names = ("noisy", "twin", "twin~2")
    assert all(timed[(x, y)] == timed[(y, x)] == 30 for x in names for y in names if x != y)
    # And the idle gap before each timed run lets the spinning stop: no run is slowed at all.
    exact, _ = _twin_ratio(RoundOrder(seed=0), gap_s=0.25)
    assert exact == pytest.approx(1.0)


def test_interleave_stops_each_cell_on_its_own_budget():
    log: list[str] = []
    policy = RepeatPolicy(min_warmups=1, max_warmups=1, warmup_budget_s=0, min_repeats=2, max_repeats=10,
                          budget_s=1.0)
    out = interleave(_fake_runners({"slow": 0.6, "fast": 0.01}, log), policy)
    assert len(out["slow"].samples) == 2  # 1.2 s >= budget after the minimum
    assert len(out["fast"].samples) == 10  # never reaches the budget: capped at the maximum


def test_interleave_keeps_going_when_one_runner_fails():
    calls = {"ok": 0}

    def ok():
        calls["ok"] += 1
        return 0.01

    def broken():
        raise RuntimeError("session exploded")

    policy = RepeatPolicy(min_warmups=1, max_warmups=1, warmup_budget_s=0, min_repeats=3, max_repeats=3,
                          budget_s=0)
    out = interleave({"broken": broken, "ok": ok}, policy)
    assert out["broken"].error == "RuntimeError: session exploded"
    assert out["broken"].samples == []
    assert len(out["ok"].samples) == 3 and calls["ok"] == 4


def test_interleave_idles_before_every_timed_run():
    pauses: list[float] = []
    policy = RepeatPolicy(min_warmups=2, max_warmups=2, warmup_budget_s=0, min_repeats=2, max_repeats=2,
                          budget_s=0)
    interleave(_fake_runners({"a": 0.1}, []), policy, gap_s=0.5, sleep=pauses.append)
    assert pauses == [0.5, 0.5]  # the two timed runs; warm-ups of the same runner back to back need none
    pauses.clear()
    interleave(_fake_runners({"a": 0.1, "b": 0.1}, []), policy, gap_s=0.5, sleep=pauses.append)
    assert len(pauses) == 4 + 2  # 4 timed runs + the 2 switches of the mirrored warm-up rounds (a b | b a)


# ---- ratios and ranking on injected rows ------------------------------------------------------------
def _row(name, shape, median, kind="onnx", provider="CPUExecutionProvider", error=None, mode="shape"):
    return {"key": name, "name": name, "kind": kind, "variant": name if kind == "onnx" else None,
            "provider": provider, "mode": mode, "shape": shape, "median_s": median, "error": error,
            "vs_torch_fp32": None, "vs_torch_bf16": None}


def test_add_ratios_against_both_torch_baselines_per_shape():
    rows = [
        _row("torch-fp32", "32x128", 6.0, kind="torch", provider="torch"),
        _row("torch-bf16", "32x128", 2.0, kind="torch", provider="torch"),
        _row("torch-fp32", "1x16", 0.05, kind="torch", provider="torch"),
        _row("int8", "32x128", 1.5),
        _row("int8", "1x16", 0.01),
        _row("q4", "32x128", None, error="WorkerError: died"),
    ]
    add_ratios(rows)
    by = {(r["name"], r["shape"]): r for r in rows}
    assert by[("int8", "32x128")]["vs_torch_fp32"] == pytest.approx(4.0)
    assert by[("int8", "32x128")]["vs_torch_bf16"] == pytest.approx(2.0 / 1.5)
    assert by[("int8", "1x16")]["vs_torch_fp32"] == pytest.approx(5.0)
    assert by[("int8", "1x16")]["vs_torch_bf16"] is None  # no bf16 baseline at that shape
    assert by[("torch-fp32", "32x128")]["vs_torch_fp32"] == pytest.approx(1.0)
    assert by[("torch-bf16", "32x128")]["vs_torch_fp32"] == pytest.approx(3.0)
    assert by[("q4", "32x128")]["vs_torch_fp32"] is None


def test_rank_rows_uses_the_geometric_mean_and_drops_failures():
    rows = [
        # arithmetic mean would put b first (6.002 < 10.001); per-shape ratios favour a
        _row("a", "1x16", 0.001), _row("a", "1x8192", 10.0),
        _row("b", "1x16", 0.002), _row("b", "1x8192", 6.0),
        _row("c", "1x16", 0.0001), _row("c", "1x8192", None, error="killed"),
        _row("d", "1x16", 0.0001, provider="CUDAExecutionProvider"),
        _row("torch-fp32", "1x16", 0.00001, kind="torch", provider="torch"),
        _row("e", "cisi", 0.0001, mode="corpus"),
    ]
    assert rank_rows(rows, "CPUExecutionProvider") == ["a", "b"]
    assert rank_rows(rows, "CUDAExecutionProvider") == ["d"]
    assert rank_rows(rows, "OtherProvider") == []


# ---- shapes and synthetic inputs --------------------------------------------------------------------
def test_parse_shapes():
    assert parse_shapes("1x16, 32X128,1x16") == [Shape(1, 16), Shape(32, 128)]
    assert Shape(32, 128).tokens == 4096 and Shape(32, 128).label == "32x128"
    for bad in ("32*128", "0x16", "1x1", "x16", ""):
        with pytest.raises(InvalidInputError):
            parse_shapes(bad)
    with pytest.raises(InvalidInputError, match="max_length 512"):
        parse_shapes("1x513", max_length=512)


def test_synthetic_ids_are_exact_length_valid_and_seeded():
    source = TokenSource.from_tokenizer_file(GTE_TOKENIZER)
    assert source.prefix == (50281,) and source.suffix == (50282,)  # [CLS] ... [SEP]
    ids = source.synthetic_ids(Shape(3, 200), seed=0)
    assert ids.shape == (3, 200) and ids.dtype == np.int64
    assert (ids[:, 0] == 50281).all() and (ids[:, -1] == 50282).all()
    body = ids[:, 1:-1]
    assert np.isin(body, source.ordinary_ids).all()
    assert not np.isin(body, [50280, 50281, 50282, 50283, 50284]).any()  # no special tokens inside
    assert np.array_equal(ids, source.synthetic_ids(Shape(3, 200), seed=0))
    assert not np.array_equal(ids, source.synthetic_ids(Shape(3, 200), seed=1))


def test_token_source_rejects_a_missing_tokenizer(tmp_path):
    with pytest.raises(ModelFolderError):
        TokenSource.from_tokenizer_file(tmp_path / "tokenizer.json")


# ---- corpus files -----------------------------------------------------------------------------------
def test_corpus_text_and_jsonl_files(tmp_path):
    txt = tmp_path / "docs.txt"
    txt.write_text("first doc\n\n  second doc  \nthird\n", encoding="utf-8")
    assert load_corpus_file(txt) == ["first doc", "second doc", "third"]
    assert load_corpus(str(txt), limit=2) == ("docs.txt[:2]", ["first doc", "second doc"])
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps("b") + "\n", encoding="utf-8")
    assert load_corpus_file(jsonl) == ["a", "b"]
    jsonl.write_text('{"text": "a"}\n{"body": 3}\n', encoding="utf-8")
    with pytest.raises(InvalidInputError, match=":2:"):
        load_corpus_file(jsonl)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_corpus_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="no text"):
        load_corpus_file(tmp_path / "empty.txt")
    with pytest.raises(InvalidInputError):
        load_corpus(str(txt), limit=0)


def test_cisi_corpus_has_its_1460_documents():
    name, texts = load_corpus("cisi")
    assert name == "cisi" and len(texts) == 1460
    assert all(isinstance(t, str) and t for t in texts)
    assert load_corpus("CISI", limit=10)[1] == texts[:10]


# ---- report and fidelity figures --------------------------------------------------------------------
def test_fidelity_figures_flat_or_nested_and_headline():
    fidelity = {"passed": True, "reference": "fp32", "figures": {"centred_cosine_mean": 0.97, "sts_drop": 0.2}}
    assert fidelity_figures(fidelity) == {"centred_cosine_mean": 0.97, "sts_drop": 0.2}
    assert headline_figure(fidelity) == ("centred_cosine_mean", 0.97)
    assert headline_figure({"max_abs_diff": 1e-6, "passed": True}) == ("max_abs_diff", 1e-6)
    assert headline_figure({"passed": True}) is None
    # gate limits and fp32's own scores are not the variant's figures
    assert fidelity_figures({"thresholds": {"cosine_mean": 0.99}, "fp32_data": {"sts": 80.0}}) == {}


def test_results_table_shows_ratios_and_failures():
    rows = [
        {**_row("torch-fp32", "32x128", 6.0, kind="torch", provider="torch"), "p95_s": 6.5, "iqr_s": 0.3,
         "texts_per_s": 32 / 6.0, "tokens_per_s": 4096 / 6.0, "peak_rss_bytes": 2_000_000_000},
        {**_row("int8", "32x128", 1.5), "p95_s": 1.6, "iqr_s": 0.15, "texts_per_s": 32 / 1.5,
         "tokens_per_s": 4096 / 1.5, "peak_rss_bytes": 500_000_000},
        {**_row("q4", "32x128", None, error="WorkerError: worker q4 exited with code -9"), "p95_s": None,
         "iqr_s": None, "texts_per_s": None, "tokens_per_s": None, "peak_rss_bytes": None},
    ]
    add_ratios(rows)
    table = results_table({"results": rows})
    lines = table.splitlines()
    int8 = next(line for line in lines if line.startswith("| int8"))
    assert "1500" in int8 and "4.00x" in int8 and "10" in int8 and "500" in int8 and "2731" in int8
    assert "failed" in next(line for line in lines if line.startswith("| q4"))
    assert failures({"contenders": [], "results": rows}) == ["q4 at 32x128: WorkerError: worker q4 exited with code -9"]
    assert len({len(line) for line in lines}) == 1  # aligned columns


# ---- PyTorch baseline spec --------------------------------------------------------------------------
def _manifest(source):
    return Manifest.from_json({
        "format_version": 1, "task": "embedding", "source": source, "pooling": "cls", "normalize": True,
        "max_length": 8192, "dim": 64, "inputs": ["input_ids", "attention_mask"],
        "output": "last_hidden_state", "opset": 17, "tokenizer": {},
        "variants": {"fp32": {"file": "model.onnx", "sha256": "0" * 64, "bytes": 1}},
    })


def test_resolve_torch_spec_rebuilds_the_exported_model():
    source = {"model_id": GTE_ID, "random_weights": True, "seed": 7, "config_overrides": {"hidden_size": 64}}
    manifest = _manifest(source)
    auto = resolve_torch_spec("auto", manifest)
    assert auto == {"model": GTE_ID, "random_weights": True, "seed": 7,
                    "config_overrides": {"hidden_size": 64}, "task": "embedding"}
    assert resolve_torch_spec(f"random:{GTE_ID}", manifest) == auto  # same model: same seed and overrides
    other = resolve_torch_spec("random:org/other", manifest)
    assert other["seed"] == 0 and other["config_overrides"] == {}
    real = resolve_torch_spec("/models/ckpt", manifest)
    assert real["random_weights"] is False and real["model"] == "/models/ckpt"
    with pytest.raises(ModelFolderError, match="does not name the model"):
        resolve_torch_spec("auto", _manifest({}))
    with pytest.raises(InvalidInputError):
        resolve_torch_spec("random:", manifest)


def test_bench_package_imports_without_torch_onnxruntime_or_matplotlib():
    code = (
        "import sys\n"
        "import gte_onnx.bench, gte_onnx.bench.cli, gte_onnx.bench.runner, gte_onnx.bench.report, "
        "gte_onnx.bench.worker, gte_onnx.bench.torch_baseline, gte_onnx.inference.speed_ranking, gte_onnx.bench.machine, "
        "gte_onnx.bench.peers, gte_onnx.bench.peer_backends, gte_onnx.bench.fidelity, gte_onnx.bench.peer_build, "
        "gte_onnx.bench.hub_peer, gte_onnx.bench.llamacpp_peer\n"
        "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'matplotlib', 'openvino', 'nncf', 'llama_cpp', "
        "'onnx', 'onnxslim') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_describe_machine_records_cpu_flags_and_versions():
    from gte_onnx.bench.machine import INTERESTING_FLAGS, describe_machine

    machine = describe_machine()
    assert isinstance(machine["cpu_model"], str) and machine["cpu_model"]
    assert isinstance(machine["logical_cpus"], int) and machine["logical_cpus"] >= 1
    assert machine["onnxruntime"] and "CPUExecutionProvider" in machine["available_providers"]
    if machine["cpu_flags"]:  # Linux
        assert set(machine["cpu_flags"]) == set(INTERESTING_FLAGS)
        assert all(isinstance(v, bool) for v in machine["cpu_flags"].values())
    if sys.platform.startswith("linux"):  # /proc/meminfo: the machine's RAM, in bytes
        assert isinstance(machine["memory_bytes"], int) and machine["memory_bytes"] > 2**28


def test_a_single_repeat_is_a_valid_request(tiny_gte_dir):
    from gte_onnx.bench.cli import build_parser, config_from_args

    argv = [str(tiny_gte_dir), "--repeats", "1", "--warmups", "0", "--short"]
    config = config_from_args(build_parser().parse_args(argv), argv)
    assert config.policy.min_repeats == 1 and config.policy.heavy_min_repeats == 1
