"""`gte-onnx bench` end to end on the tiny ModernBERT: worker processes, JSON schema, ratios against a
real PyTorch baseline, corpus mode, --record, --plot, and failures that must not sink the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gte_onnx.bench.cli import main
from gte_onnx.inference.speed_ranking import rank_variants
from gte_onnx.folder.manifest import Manifest, Variant
from gte_onnx.folder.integrity import describe_file

CPU = "CPUExecutionProvider"

TOP_LEVEL = {
    "schema": str, "created": str, "duration_s": float, "command": str, "model": dict, "machine": dict,
    "settings": dict, "contenders": list, "results": list, "ranking": dict, "ranking_basis": str,
    "twins": dict, "schedule": list,
}
MACHINE = {"cpu_model": str, "cpu_flags": dict, "logical_cpus": int, "usable_cpus": int, "onnxruntime": str,
           "available_providers": list, "python": str, "numpy": str, "platform": str}
SETTINGS = {"providers": list, "threads": int, "shapes": list, "short": bool, "seed": int, "policy": dict,
            "rss_scope": str, "interleaving": str, "gap_s": float, "spinning": str, "schedule_seed": int}
CONTENDER = {"key": str, "name": str, "kind": str, "provider": str, "import_s": float, "load_s": float,
             "rss_after_load_bytes": int, "info": dict, "fidelity": dict, "recipe": dict}
ROW = {"key": str, "name": str, "kind": str, "provider": str, "mode": str, "shape": str, "texts": int,
       "tokens": int, "warmups_s": list, "samples_s": list, "n": int, "median_s": float, "p95_s": float,
       "mean_s": float, "min_s": float, "max_s": float, "q1_s": float, "q3_s": float, "iqr_s": float,
       "texts_per_s": float, "tokens_per_s": float, "peak_rss_bytes": int, "rss_scope": str}


def _check(record: dict, schema: dict, where: str) -> None:
    for key, kind in schema.items():
        assert key in record, f"{where}: missing {key}"
        assert isinstance(record[key], kind), f"{where}.{key}: {type(record[key]).__name__}, not {kind.__name__}"


@pytest.fixture(scope="module")
def two_variant_dir(tiny_gte_dir, tmp_path_factory) -> Path:
    """The tiny model with a second variant (a copy of the fp32 graph), so interleaving and ranking
    have two contenders."""
    folder = tmp_path_factory.mktemp("bench-model")
    shutil.copytree(tiny_gte_dir, folder, dirs_exist_ok=True)
    shutil.copyfile(folder / "model.onnx", folder / "model_copy.onnx")
    manifest = Manifest.load(folder)
    described = describe_file(folder, "model_copy.onnx")
    manifest.with_variant(Variant(name="copy", file="model_copy.onnx", sha256=described["sha256"],
                                  bytes=described["bytes"], fidelity={"passed": True, "centred_cosine_mean": 1.0})
                          ).save(folder)
    return folder


@pytest.fixture(scope="module")
def short_run(two_variant_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    corpus = out / "docs.txt"
    corpus.write_text("a short text\nanother, somewhat longer text about sorting algorithms\nBeijing\n")
    argv = [str(two_variant_dir), "--short", "--shapes", "1x16,2x64", "--threads", "1", "--torch", "auto",
            "--torch-dtypes", "fp32", "--corpus", str(corpus), "--json", str(out / "bench.json"),
            "--plot", str(out / "bench.png"), "--record", "--no-progress", "--twins", "fp32", "--gap", "0.01"]
    code = main(argv)
    return code, json.loads((out / "bench.json").read_text()), out


def test_short_run_json_schema(short_run):
    code, result, _ = short_run
    assert code == 0
    _check(result, TOP_LEVEL, "result")
    assert result["schema"] == "gte-onnx-bench/2"
    _check(result["machine"], MACHINE, "machine")
    _check(result["settings"], SETTINGS, "settings")
    assert result["settings"]["shapes"] == ["1x16", "2x64"] and result["settings"]["threads"] == 1
    assert result["command"].startswith("gte-onnx bench ") and "--short" in result["command"]
    assert {c["key"] for c in result["contenders"]} == {"fp32", "copy", "torch-fp32", "fp32~twin"}
    for contender in result["contenders"]:
        _check(contender, CONTENDER, f"contender {contender['key']}")
        assert contender["error"] is None
    onnx = {c["key"]: c for c in result["contenders"] if c["kind"] == "onnx"}
    folder = Path(result["model"]["folder"])
    assert onnx["fp32"]["file_bytes"] == sum((folder / f).stat().st_size for f in ("model.onnx", "model.onnx.data"))
    assert onnx["fp32"]["info"]["threads"] == 1 and onnx["fp32"]["info"]["provider"] == CPU
    # 4 contenders x (2 shapes + the corpus)
    assert len(result["results"]) == 12
    for row in result["results"]:
        _check(row, ROW, f"row {row['key']} {row['shape']}")
        assert row["error"] is None
        # --short: at least 3 timed runs per shape, 2 passes over the corpus, after a warm-up
        assert row["n"] == len(row["samples_s"]) >= (3 if row["mode"] == "shape" else 2)
        assert len(row["warmups_s"]) >= 1
        assert row["min_s"] <= row["q1_s"] <= row["median_s"] <= row["q3_s"] <= row["max_s"]
        assert row["median_s"] <= row["p95_s"] <= row["max_s"]
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["median_s"])
        assert row["texts_per_s"] == pytest.approx(row["texts"] / row["median_s"])
        assert row["peak_rss_bytes"] > 10_000_000


def test_short_run_shapes_and_corpus_rows(short_run):
    _, result, _ = short_run
    shape_rows = [r for r in result["results"] if r["mode"] == "shape"]
    assert {(r["shape"], r["texts"], r["tokens"]) for r in shape_rows} == {("1x16", 1, 16), ("2x64", 2, 128)}
    corpus = [r for r in result["results"] if r["mode"] == "corpus"]
    assert {r["key"] for r in corpus} == {"fp32", "copy", "torch-fp32", "fp32~twin"}
    # The same tokenizer and batches on both engines: the same token count.
    assert len({(r["texts"], r["tokens"]) for r in corpus}) == 1
    assert corpus[0]["texts"] == 3 and corpus[0]["tokens"] > 3 * 2


def test_every_row_carries_its_ratio_to_pytorch(short_run):
    _, result, _ = short_run
    torch_median = {(r["mode"], r["shape"]): r["median_s"] for r in result["results"] if r["kind"] == "torch"}
    for row in result["results"]:
        expected = torch_median[(row["mode"], row["shape"])] / row["median_s"]
        assert row["vs_torch_fp32"] == pytest.approx(expected)
        assert row["vs_torch_bf16"] is None  # not measured in this run
    torch_contender = next(c for c in result["contenders"] if c["kind"] == "torch")
    assert torch_contender["info"]["attn_implementation"] == "sdpa"
    assert torch_contender["info"]["torch_threads"] == 1


def test_the_json_records_a_balanced_schedule(short_run):
    _, result, _ = short_run
    from gte_onnx.bench.measure import precedence_counts

    cells = {(c["mode"], c["cell"]) for c in result["schedule"]}
    assert cells == {("shape", "1x16"), ("shape", "2x64"), ("corpus", "docs.txt")}
    keys = {c["key"] for c in result["contenders"]}
    for cell in result["schedule"]:
        rows = {r["key"]: r for r in result["results"] if r["shape"] == cell["cell"]}
        timed = [r["order"] for r in cell["rounds"] if r["phase"] == "repeat"]
        # what ran is what the rows hold: each contender once per round it was timed in
        assert all(sum(k in order for order in timed) == rows[k]["n"] for k in keys)
        counts = precedence_counts(timed)
        for a in keys:
            for b in keys - {a}:
                assert abs(counts.get((a, b), 0) - counts.get((b, a), 0)) <= 1, (cell["cell"], a, b)


def test_twins_ratio_per_shape(short_run):
    _, result, _ = short_run
    twins = result["twins"]
    assert (twins["of"], twins["twin"]) == ("fp32", "fp32~twin")
    assert set(twins["ratios"]) == {"1x16", "2x64", "corpus:docs.txt"}
    median = {(r["key"], r["shape"]): r["median_s"] for r in result["results"]}
    assert twins["ratios"]["1x16"] == pytest.approx(median[("fp32~twin", "1x16")] / median[("fp32", "1x16")])
    assert twins["outside"] == [c for c, r in twins["ratios"].items() if not 0.95 <= r <= 1.05]
    assert "fp32~twin" not in result["ranking"][CPU]  # a twin is a check, not a variant


def test_record_writes_the_measured_ranking(short_run, two_variant_dir):
    _, result, out = short_run
    assert sorted(result["ranking"][CPU]) == ["copy", "fp32"]
    assert list(Manifest.load(two_variant_dir).speed_ranking[CPU]) == result["ranking"][CPU]
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_rank_variants_for_the_quantize_step(two_variant_dir):
    ranking = rank_variants(two_variant_dir, threads=1, shapes=("1x16",))
    assert sorted(ranking) == ["copy", "fp32"]


def test_a_broken_variant_fails_alone(two_variant_dir, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(two_variant_dir, folder)
    manifest = Manifest.load(folder)
    bad = manifest.variants["copy"]
    manifest.with_variant(Variant(name="broken", file=bad.file, sha256="0" * 64, bytes=bad.bytes)).save(folder)
    code = main([str(folder), "--variants", "fp32,broken", "--shapes", "1x16", "--threads", "1",
                 "--repeats", "2", "--warmups", "1", "--json", str(tmp_path / "b.json"), "--no-progress"])
    assert code == 1
    result = json.loads((tmp_path / "b.json").read_text())
    rows = {r["key"]: r for r in result["results"]}
    assert rows["fp32"]["error"] is None and rows["fp32"]["n"] == 2
    assert "sha256" in rows["broken"]["error"] and rows["broken"]["median_s"] is None
    assert result["ranking"][CPU] == ["fp32"]
    out = capsys.readouterr().out
    assert "load failed" in out and "broken: worker broken: load failed: IntegrityError" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shapes", "32*128"], "not of the form BxL"),
        (["--shapes", "1x9000"], "max_length"),
        (["--variants", "int3"], "variant 'int3' is not in this model folder"),
        (["--providers", "NoSuchExecutionProvider"], "not available"),
        (["--torch", "auto", "--torch-dtypes", "fp8"], "fp8"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--corpus", "/nonexistent/docs.txt"], "does not exist"),
    ],
)
def test_bad_input_is_a_clear_error(two_variant_dir, capsys, args, message):
    code = main([str(two_variant_dir), "--no-progress", *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_folder_that_is_not_a_model(tmp_path, capsys):
    assert main([str(tmp_path), "--no-progress"]) == 2
    assert "gte-onnx.json" in capsys.readouterr().err


def test_a_worker_that_dies_or_hangs_is_a_named_error(tiny_gte_dir):
    import os
    import signal

    from gte_onnx.bench.pool import WorkerError, WorkerProcess

    spec = {"kind": "onnx", "folder": str(tiny_gte_dir), "variant": "fp32", "provider": CPU, "threads": 1}
    worker = WorkerProcess("victim", spec)
    try:
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"worker victim exited with code -9 \(killed: out of memory\?\)"):
            worker.request("load", 30)
    finally:
        worker.close()
    worker = WorkerProcess("sleeper", spec)
    try:
        with pytest.raises(WorkerError, match="worker sleeper: no answer to load within 0 s; it was stopped"):
            worker.request("load", 0.001)
        assert not worker.alive
    finally:
        worker.close()
