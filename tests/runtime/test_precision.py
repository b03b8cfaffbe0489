"""Quantized output vectors (gte_onnx.precision): float32, int8, uint8, binary, ubinary through the module,
Embedder.encode / embed, the CLI (embed, calibrate, embed-corpus) and the server's TEI /embed; equal to
sentence-transformers' quantize_embeddings given the same ranges; typed errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gte_onnx.errors import InvalidInputError, PrecisionError
from gte_onnx.precision import (
    PRECISIONS,
    CalibrationRanges,
    bytes_per_vector,
    calibrate,
    dequantize,
    hamming_similarity,
    output_dtype,
    quantize,
    vector_width,
)

TEXTS = ["what is the capital of China?", "how to implement quick sort in python?", "Beijing", "sorting algorithms"]
SAMPLE = [f"sample sentence number {i} about {w}" for i, w in enumerate(
    ["rivers", "cities", "sorting", "proteins", "music", "tax law", "weather", "chess", "poetry", "engines"] * 5)]
DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def width(precision: str, dim: int) -> int:
    return dim // 8 if precision.endswith("binary") else dim


@pytest.fixture(scope="module")
def ranges(tiny_gte) -> CalibrationRanges:
    return tiny_gte.calibrate_ranges(SAMPLE + TEXTS)


@pytest.fixture(scope="module")
def calibrated_dir(tiny_gte_dir, tmp_path_factory) -> Path:
    """A copy of the tiny model whose manifest records ranges (`gte-onnx calibrate --record`)."""
    folder = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(tiny_gte_dir, folder)
    sample = folder.parent / "sample.txt"
    sample.write_text("\n".join(SAMPLE + TEXTS) + "\n", encoding="utf-8")
    from gte_onnx.cli import main

    assert main(["calibrate", str(folder), "--file", str(sample), "--record", "--threads", "1"]) == 0
    return folder


# ---- the module: sentence-transformers' semantics -------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
def test_quantize_equals_sentence_transformers_with_the_same_ranges(precision):
    st = pytest.importorskip("sentence_transformers.util.quantization")
    vectors = unit_rows(300, 64)
    calibration = unit_rows(200, 64, seed=1)  # some of `vectors` fall outside these ranges: clipped alike
    ranges = calibrate(calibration)
    ours = quantize(vectors, precision, ranges)
    theirs = st.quantize_embeddings(vectors, precision, ranges=ranges.as_sentence_transformers())
    assert ours.dtype == theirs.dtype == DTYPES[precision]
    assert ours.shape == (300, width(precision, 64)) == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_dequantize_equals_sentence_transformers_rescoring_inverse():
    st = pytest.importorskip("sentence_transformers.util.quantization")
    ranges = calibrate(unit_rows(200, 32))
    codes = quantize(unit_rows(50, 32, seed=2), "int8", ranges)
    theirs = st._dequantize_embeddings(codes, "int8", ranges.as_sentence_transformers())
    np.testing.assert_allclose(dequantize(codes, "int8", ranges), theirs, rtol=1e-6, atol=1e-7)


def test_a_vector_does_not_depend_on_its_batch_mates():
    ranges = calibrate(unit_rows(100, 16))
    batch = unit_rows(10, 16, seed=3)
    for precision in PRECISIONS:
        alone = np.stack([quantize(row, precision, ranges) for row in batch])
        np.testing.assert_array_equal(alone, quantize(batch, precision, ranges))


def test_widths_bytes_and_hamming():
    assert [bytes_per_vector(p, 768) for p in PRECISIONS] == [3072, 768, 768, 96, 96]
    assert vector_width("binary", 384) == 48 and output_dtype("ubinary") == np.uint8
    packed = quantize(unit_rows(5, 64), "ubinary")
    signed = quantize(unit_rows(5, 64), "binary")
    similarity = hamming_similarity(packed, packed)
    assert np.all(np.diag(similarity) == 0) and np.all(similarity <= 0)
    np.testing.assert_array_equal(similarity, hamming_similarity(signed, signed))  # the same bits


def test_ranges_round_trip_through_json_and_a_file(tmp_path):
    ranges = calibrate(unit_rows(50, 24), source="fifty random unit vectors")
    assert CalibrationRanges.from_json(ranges.to_json()) == ranges
    assert CalibrationRanges.from_json(json.dumps(ranges.to_json())) == ranges
    loaded = CalibrationRanges.load(ranges.save(tmp_path / "ranges.json"))
    assert loaded == ranges and loaded.digest() == ranges.digest()
    assert loaded.samples == 50 and loaded.normalized and loaded.dim == 24
    vectors = unit_rows(20, 24, seed=4)
    np.testing.assert_array_equal(quantize(vectors, "int8", loaded), quantize(vectors, "int8", ranges))


@pytest.mark.parametrize("call, message", [
    (lambda r: quantize(unit_rows(2, 8), "int4", r), "precision must be one of"),
    (lambda r: quantize(unit_rows(2, 8), "int8", None), "needs calibration ranges"),
    (lambda r: quantize(unit_rows(2, 16), "uint8", r), "ranges have 8 dimensions but the vectors have 16"),
    (lambda r: quantize(np.full((2, 8), np.nan, dtype=np.float32), "binary", r), "NaN or infinite"),
    (lambda r: quantize(np.ones((2, 8), dtype=np.int8), "int8", r), "must be float vectors"),
    (lambda r: quantize(unit_rows(2, 8) * 3, "int8", r), "calibrated on normalised vectors"),
    (lambda r: calibrate(np.zeros((0, 8), dtype=np.float32)), "non-empty"),
    (lambda r: CalibrationRanges.from_json("{not json"), "is not JSON"),
    (lambda r: CalibrationRanges.from_json({**r.to_json(), "minimum": ["a"] * 8}), "list of numbers"),
    (lambda r: CalibrationRanges.from_json({**r.to_json(), "format": "other/9"}), "format must be"),
    (lambda r: CalibrationRanges((1.0,), (0.0,), 1), "minimum > maximum"),
    (lambda r: dequantize(np.zeros((1, 8), dtype=np.uint8), "binary", r), "int8 or uint8 codes"),
])
def test_bad_input_raises_precision_error(call, message):
    ranges = calibrate(unit_rows(30, 8))
    with pytest.raises(PrecisionError, match=message) as caught:
        call(ranges)
    assert isinstance(caught.value, InvalidInputError) and caught.value.http_status == 422


# ---- Embedder.encode and embed ----------------------------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
def test_encode_gives_each_precisions_shape_and_dtype(tiny_gte, ranges, precision):
    dim = tiny_gte.dim
    vectors = tiny_gte.encode(TEXTS, precision=precision, ranges=ranges)
    assert vectors.shape == (4, width(precision, dim)) and vectors.dtype == DTYPES[precision]
    assert vectors.precision == precision
    assert vectors.ranges == (ranges if precision in ("int8", "uint8") else None)
    one = tiny_gte.encode(TEXTS[2], precision=precision, ranges=ranges)
    assert one.shape == (width(precision, dim),) and one.dtype == DTYPES[precision]
    np.testing.assert_array_equal(one, vectors[2])
    np.testing.assert_array_equal(vectors, quantize(np.asarray(tiny_gte.encode(TEXTS)), precision, ranges))


@pytest.mark.parametrize("precision", ["int8", "ubinary"])
def test_embed_chunks_take_the_precision(tiny_gte, ranges, precision):
    want = tiny_gte.encode(TEXTS, precision=precision, ranges=ranges)
    chunks = list(tiny_gte.embed(TEXTS, chunk_size=3, precision=precision, ranges=ranges))
    assert [c.dtype for c in chunks] == [DTYPES[precision]] * 2
    np.testing.assert_array_equal(np.concatenate(chunks), want)
    pairs = list(tiny_gte.embed(list(enumerate(TEXTS)), chunk_size=3, precision=precision, ranges=ranges))
    assert pairs[0].precision == precision and pairs[0].vectors.dtype == DTYPES[precision]
    np.testing.assert_array_equal(np.concatenate([c.vectors for c in pairs]), want)


def test_int8_without_ranges_is_a_clear_error(tiny_gte):
    assert tiny_gte.recorded_ranges is None
    with pytest.raises(PrecisionError, match="gte-onnx calibrate"):
        tiny_gte.encode(TEXTS, precision="int8")
    with pytest.raises(PrecisionError, match="needs calibration ranges"):
        next(tiny_gte.embed(TEXTS, precision="uint8"))
    with pytest.raises(PrecisionError, match="precision must be one of"):
        tiny_gte.encode(TEXTS, precision="fp16")


def test_ranges_of_another_kind_are_refused(tiny_gte, ranges):
    with pytest.raises(PrecisionError, match="64 dimensions|dimensions"):
        tiny_gte.encode(TEXTS, precision="int8", ranges=calibrate(unit_rows(10, 32)))
    with pytest.raises(PrecisionError, match="calibrated on normalised vectors"):
        tiny_gte.encode(TEXTS, precision="int8", ranges=ranges, normalize=False)
    with pytest.raises(PrecisionError, match="must be CalibrationRanges"):
        tiny_gte.encode(TEXTS, precision="int8", ranges=ranges.to_json())


def test_recorded_ranges_are_the_default(calibrated_dir, tiny_gte, ranges):
    from gte_onnx import Embedder

    model = Embedder(calibrated_dir, threads=1)
    assert model.recorded_ranges.digest() == ranges.digest()  # the same sample, the same vectors
    np.testing.assert_array_equal(model.encode(TEXTS, precision="uint8"),
                                  tiny_gte.encode(TEXTS, precision="uint8", ranges=ranges))


# ---- CLI ----------------------------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gte_onnx.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_cli_embed_writes_each_precision(calibrated_dir, tmp_path, precision):
    from gte_onnx.cli import main

    npy = tmp_path / "v.npy"
    assert main(["embed", str(calibrated_dir), *TEXTS, "--precision", precision, "-o", str(npy), "--threads", "1"]) == 0
    array = np.load(npy)
    assert array.shape == (4, width(precision, 64)) and array.dtype == DTYPES[precision]
    lines = tmp_path / "v.jsonl"
    assert main(["embed", str(calibrated_dir), *TEXTS, "--precision", precision, "-o", str(lines), "--threads", "1"]) == 0
    rows = [json.loads(line)["embedding"] for line in lines.read_text().splitlines()]
    if precision == "float32":
        np.testing.assert_allclose(rows, array, atol=1e-6)
    else:
        assert all(isinstance(x, int) for row in rows for x in row)
        np.testing.assert_array_equal(np.asarray(rows, dtype=DTYPES[precision]), array)


def test_cli_calibrate_writes_ranges_and_embed_reads_them(tiny_gte_dir, tiny_gte, ranges, tmp_path):
    sample = tmp_path / "sample.txt"
    sample.write_text("\n".join(SAMPLE + TEXTS), encoding="utf-8")
    out = tmp_path / "ranges.json"
    res = run_cli("calibrate", str(tiny_gte_dir), "--file", str(sample), "-o", str(out), "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert CalibrationRanges.load(out) == CalibrationRanges(ranges.minimum, ranges.maximum, ranges.samples, True,
                                                            f"{len(SAMPLE) + 4} texts from sample.txt")
    npy = tmp_path / "v.npy"
    res = run_cli("embed", str(tiny_gte_dir), *TEXTS, "--precision", "int8", "--ranges", str(out), "-o", str(npy),
                  "--threads", "1")
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(np.load(npy), tiny_gte.encode(TEXTS, precision="int8", ranges=ranges))


def test_cli_int8_without_ranges_is_one_line_exit_2(tiny_gte_dir, tmp_path):
    res = run_cli("embed", str(tiny_gte_dir), "hello", "--precision", "int8", "--threads", "1")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ") and "needs calibration ranges" in res.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    res = run_cli("embed", str(tiny_gte_dir), "hello", "--precision", "int8", "--ranges", str(bad))
    assert res.returncode == 2 and "must be a JSON object" in res.stderr and "Traceback" not in res.stderr


# ---- embed-corpus -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
def test_embed_corpus_vector_column_takes_the_precision(calibrated_dir, tiny_gte, ranges, tmp_path, precision):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    from gte_onnx.corpus.engine import CorpusJob, ModelOptions, run_corpus

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    job = CorpusJob(ModelOptions(str(calibrated_dir), threads=1), corpus, out, shard_size=3, precision=precision)
    run_corpus(job)
    table = pq.read_table(out)
    vector_type = table.schema.field("vector").type
    assert vector_type == pa.list_(pa.from_numpy_dtype(DTYPES[precision]), width(precision, 64))
    got = np.asarray(table.column("vector").to_pylist(), dtype=DTYPES[precision])[np.argsort(table.column("id").to_numpy())]
    np.testing.assert_array_equal(got, tiny_gte.encode(TEXTS, precision=precision, ranges=ranges))
    record = json.loads((out / "_gte-onnx-corpus.json").read_text())
    assert record["run"]["options"]["precision"] == precision and record["vectors"]["precision"] == precision
    assert record["vectors"]["bytes_per_vector"] == bytes_per_vector(precision, 64)
    if precision in ("int8", "uint8"):
        recorded = CalibrationRanges.from_json(record["vectors"]["ranges"])
        assert recorded.digest() == ranges.digest() == record["run"]["options"]["ranges_sha256"]
        assert CalibrationRanges.load(out / "_gte-onnx-ranges.json") == recorded
    else:
        assert record["vectors"]["ranges"] is None and not (out / "_gte-onnx-ranges.json").exists()


def test_ray_actor_class_quantizes_its_batches(tiny_gte_dir, tiny_gte, ranges):
    pa = pytest.importorskip("pyarrow")
    from gte_onnx.corpus.ray import EmbedBatches

    actor = EmbedBatches(str(tiny_gte_dir), threads=1, precision="int8", ranges=ranges.to_json())
    table = actor(pa.table({"id": list(range(4)), "text": TEXTS}))
    assert table.schema.field("vector").type == pa.list_(pa.int8(), 64)
    np.testing.assert_array_equal(np.asarray(table.column("vector").to_pylist(), dtype=np.int8),
                                  tiny_gte.encode(TEXTS, precision="int8", ranges=ranges))


def test_cli_embed_corpus_precision_and_ranges_options(tiny_gte_dir, tiny_gte, ranges, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    from gte_onnx.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    ranges_file = ranges.save(tmp_path / "ranges.json")
    out = tmp_path / "out"
    argv = ["embed-corpus", str(tiny_gte_dir), str(corpus), str(out), "--precision", "uint8", "--ranges",
            str(ranges_file), "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    table = pq.read_table(out)
    got = np.asarray(table.column("vector").to_pylist(), dtype=np.uint8)[np.argsort(table.column("id").to_numpy())]
    np.testing.assert_array_equal(got, tiny_gte.encode(TEXTS, precision="uint8", ranges=ranges))
    assert CalibrationRanges.load(out / "_gte-onnx-ranges.json") == ranges
    capsys.readouterr()
    assert main([*argv[:4], "--precision", "int8", "--ranges", str(ranges_file), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "options.precision (this output: 'uint8', now: 'int8')" in err
