"""Corpus embedding on one machine: Embedder.embed streams, embed-corpus writes resumable Parquet shards."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from gte_onnx.corpus.engine import CorpusJob, ModelOptions, run_corpus  # noqa: E402
from gte_onnx.corpus.readers import CorpusFormat  # noqa: E402
from gte_onnx.errors import CorpusFormatError, InvalidInputError, ResumeMismatchError  # noqa: E402
from gte_onnx.inference.stream import EmbeddedChunk  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def docs(n: int) -> list[str]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    return [" ".join(words[(i * k) % 8] for k in range(1, 3 + i % 11)) + f" {i}" for i in range(n)]


def read_output(folder: Path):
    table = pq.read_table(folder)  # hidden temporaries are ignored by the dataset reader
    ids = table.column("id").to_pylist()
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    order = np.argsort(np.asarray(ids, dtype=object).astype(str)) if ids and isinstance(ids[0], str) else np.argsort(ids)
    return [ids[i] for i in order], vectors[order], table


def job(model_dir, input_path, output, **kwargs) -> CorpusJob:
    spec = kwargs.pop("spec", CorpusFormat())
    return CorpusJob(ModelOptions(str(model_dir), threads=1), Path(input_path), Path(output), spec, **kwargs)


# ---- Embedder.embed ------------------------------------------------------------------------------------
def test_embed_streams_lazily_and_matches_encode(tiny_gte):
    texts = docs(50)
    pulled = []

    def corpus():
        for t in texts:
            pulled.append(t)
            yield t

    stream = tiny_gte.embed(corpus(), batch_size=4, chunk_size=8)
    assert pulled == []  # a generator: nothing read before the first chunk is asked for
    first = next(stream)
    assert len(pulled) == 8 and first.shape == (8, tiny_gte.dim) and first.dtype == np.float32
    rest = list(stream)
    assert len(pulled) == 50 and [len(c) for c in rest] == [8] * 5 + [2]
    got = np.concatenate([first] + rest)
    np.testing.assert_allclose(got, tiny_gte.encode(texts, batch_size=4), atol=1e-5)


def test_embed_pairs_give_ids_token_counts_and_truncation(tiny_gte_short):
    long_text = "word " * 400
    items = [("a", "short text"), ("b", long_text), ("c", "another one")]
    from gte_onnx.inference.tokenize import TruncationWarning

    with pytest.warns(TruncationWarning, match="later chunks do not warn again"):
        chunks = list(tiny_gte_short.embed(iter(items), chunk_size=2))
    assert all(isinstance(c, EmbeddedChunk) for c in chunks)
    assert [c.ids for c in chunks] == [["a", "b"], ["c"]]
    assert chunks[0].truncated.tolist() == [False, True] and chunks[1].truncated.tolist() == [False]
    assert chunks[0].token_counts[1] > 256
    with pytest.warns(TruncationWarning):
        expected = tiny_gte_short.encode([t for _, t in items])
    np.testing.assert_allclose(np.concatenate([c.vectors for c in chunks]), expected, atol=1e-5)


@pytest.mark.parametrize(
    "items, message",
    [
        (["ok", 3], "item 1 is int"),
        (["ok", "  "], "item 1 is an empty text"),
        ([("x", "ok"), ("y", None)], "item 1 (id 'y') is NoneType"),
        ([("x", "ok"), "plain"], "item 1 is str, not an (id, text) pair"),
    ],
)
def test_embed_bad_items_name_their_position(tiny_gte, items, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        list(tiny_gte.embed(items, chunk_size=1))


def test_embed_memory_stays_bounded_by_the_chunk(tiny_gte):
    """A corpus far larger than the chunk: only one chunk of texts is alive at a time."""
    import tracemalloc

    text = "memory bound " * 20

    def corpus(n):
        for i in range(n):
            yield f"{text}{i}"

    def peak(n):
        tracemalloc.start()
        for _ in tiny_gte.embed(corpus(n), chunk_size=64):
            pass
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(128), peak(2048)
    assert large < small * 1.5, (small, large)  # 16x the documents, about the same peak


# ---- input formats -------------------------------------------------------------------------------------
def write_inputs(folder: Path, texts: list[str]) -> dict[str, tuple[Path, CorpusFormat, list]]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"doc-{i}" for i in range(len(texts))]
    titles = [f"Title {i}" if i % 2 else "" for i in range(len(texts))]
    joined = [f"{t} {x}" if t else x for t, x in zip(titles, texts)]
    (folder / "c.txt").write_text("\n".join(texts[:3]) + "\n\n" + "\n".join(texts[3:]) + "\n", encoding="utf-8")
    with open(folder / "c.jsonl", "w", encoding="utf-8") as fh:
        for i, (t, x) in enumerate(zip(titles, texts)):
            fh.write(json.dumps({"_id": ids[i], "title": t, "body": x}) + "\n")
    with open(folder / "c.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "content"])
        writer.writerows([[i, x] for i, x in zip(ids, texts)])
    pq.write_table(pa.table({"content": texts, "key": ids, "head": titles}), folder / "c.parquet")
    text_ids = list(range(1, 4)) + list(range(5, len(texts) + 2))  # line 4 is blank: no document, kept number
    return {
        "text": (folder / "c.txt", CorpusFormat("text"), list(zip(text_ids, texts))),
        "jsonl": (folder / "c.jsonl", CorpusFormat("jsonl", "body", "_id", "title"), list(zip(ids, joined))),
        "csv": (folder / "c.csv", CorpusFormat("csv", "content", "key"), list(zip(ids, texts))),
        "parquet": (folder / "c.parquet", CorpusFormat("parquet", "content", None, "head"),
                    list(zip(range(1, len(texts) + 1), joined))),
    }


@pytest.mark.parametrize("fmt", ["text", "jsonl", "csv", "parquet"])
def test_each_format_gives_every_id_once_with_encode_vectors(tiny_gte, tiny_gte_dir, tmp_path, fmt):
    texts = docs(23)
    path, spec, expected = write_inputs(tmp_path / "in", texts)[fmt]
    summary = run_corpus(job(tiny_gte_dir, path, tmp_path / "out", spec=spec, shard_size=10, chunk_size=4))
    assert summary["rows"] == 23 and summary["shards"] == 3
    ids, vectors, table = read_output(tmp_path / "out")
    want = dict(expected)
    assert sorted(ids, key=str) == sorted(want, key=str)  # every id exactly once
    assert table.schema.field("id").type == (pa.int64() if spec.id_field is None else pa.string())
    assert table.schema.field("vector").type == pa.list_(pa.float32(), tiny_gte.dim)
    np.testing.assert_allclose(vectors, tiny_gte.encode([want[i] for i in ids]), atol=1e-5)


def test_bad_corpus_files_raise_typed_errors(tiny_gte_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=r"bad.jsonl:2: not valid JSON"):
        run_corpus(job(tiny_gte_dir, bad, tmp_path / "o1", spec=CorpusFormat("jsonl")))
    missing = tmp_path / "m.jsonl"
    missing.write_text('{"body": "fine"}\n', encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=r"m.jsonl:1: no field 'text'.*--text-field"):
        run_corpus(job(tiny_gte_dir, missing, tmp_path / "o2", spec=CorpusFormat("jsonl")))
    empty = tmp_path / "e.jsonl"
    empty.write_text('{"text": "fine", "id": "a"}\n{"text": "", "id": "b"}\n', encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"id 'b'\) is an empty text"):
        run_corpus(job(tiny_gte_dir, empty, tmp_path / "o3", spec=CorpusFormat("jsonl", id_field="id")))
    with pytest.raises(InvalidInputError, match="does not exist"):
        run_corpus(job(tiny_gte_dir, tmp_path / "nope.txt", tmp_path / "o4"))


# ---- resume --------------------------------------------------------------------------------------------
def test_resume_after_a_crash_skips_complete_shards(tiny_gte, tiny_gte_dir, tmp_path, monkeypatch):
    texts = docs(45)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    import gte_onnx.corpus.engine as corpus_module

    real, calls = corpus_module.embed_shard, []

    def crash_on_third(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus_module, "embed_shard", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_corpus(job(tiny_gte_dir, corpus, tmp_path / "out", shard_size=10))
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    monkeypatch.setattr(corpus_module, "embed_shard", real)
    summary = run_corpus(job(tiny_gte_dir, corpus, tmp_path / "out", shard_size=10))
    assert summary["resumed_rows"] == 20 and summary["embedded_this_run"] == 25 and summary["rows"] == 45
    ids, vectors, _ = read_output(tmp_path / "out")
    assert ids == list(range(1, 46))
    np.testing.assert_allclose(vectors, tiny_gte.encode(texts), atol=1e-5)


def test_resume_after_sigkill_mid_run(tiny_gte_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(docs(3000)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gte_onnx.cli", "embed-corpus", str(tiny_gte_dir), str(corpus), str(out),
           "--shard-size", "100", "--chunk-size", "50", "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    written = len(list(out.glob("part-*.parquet")))
    assert 3 <= written < 30, "the run should be killed part-way"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{written * 100} already done" in done.stderr
    ids, _, _ = read_output(out)
    assert ids == list(range(1, 3001))  # nothing lost, nothing twice
    assert not list(out.glob(".*.tmp"))


def test_resume_with_other_settings_is_refused(tiny_gte_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(docs(12)) + "\n", encoding="utf-8")
    run_corpus(job(tiny_gte_dir, corpus, tmp_path / "out", shard_size=5))
    with pytest.raises(ResumeMismatchError, match=r"options\.shard_size \(this output: 5, now: 6\)"):
        run_corpus(job(tiny_gte_dir, corpus, tmp_path / "out", shard_size=6))
    with pytest.raises(ResumeMismatchError, match=r"options\.normalize"):
        run_corpus(job(tiny_gte_dir, corpus, tmp_path / "out", shard_size=5, normalize=False))
    summary = run_corpus(job(tiny_gte_dir, corpus, tmp_path / "out", shard_size=5, chunk_size=3))  # speed only
    assert summary["resumed_rows"] == 12 and summary["embedded_this_run"] == 0


def test_resume_with_another_precision_is_refused(tiny_gte_dir, tmp_path):
    from gte_onnx.precision import calibrate

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(docs(12)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    run_corpus(job(tiny_gte_dir, corpus, out, shard_size=5, precision="binary"))
    with pytest.raises(ResumeMismatchError, match=r"options\.precision \(this output: 'binary', now: 'float32'\)"):
        run_corpus(job(tiny_gte_dir, corpus, out, shard_size=5))
    with pytest.raises(ResumeMismatchError, match=r"options\.precision \(this output: 'binary', now: 'ubinary'\)"):
        run_corpus(job(tiny_gte_dir, corpus, out, shard_size=5, precision="ubinary"))
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(50, 64)).astype(np.float32)
    first = calibrate(sample / np.linalg.norm(sample, axis=1, keepdims=True))
    other = calibrate(sample[:20] / np.linalg.norm(sample[:20], axis=1, keepdims=True))
    run_corpus(job(tiny_gte_dir, corpus, tmp_path / "int8", shard_size=5, precision="int8", ranges=first))
    with pytest.raises(ResumeMismatchError, match=r"options\.ranges_sha256"):  # other ranges, other vectors
        run_corpus(job(tiny_gte_dir, corpus, tmp_path / "int8", shard_size=5, precision="int8", ranges=other))
    summary = run_corpus(job(tiny_gte_dir, corpus, tmp_path / "int8", shard_size=5, precision="int8", ranges=first))
    assert summary["resumed_rows"] == 12


def test_a_run_recorded_before_precisions_existed_resumes_as_float32(tiny_gte_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(docs(12)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    run_corpus(job(tiny_gte_dir, corpus, out, shard_size=5))
    manifest = out / "_gte-onnx-corpus.json"
    record = json.loads(manifest.read_text())
    del record["run"]["options"]["precision"], record["run"]["options"]["ranges_sha256"], record["vectors"]
    manifest.write_text(json.dumps(record))
    assert run_corpus(job(tiny_gte_dir, corpus, out, shard_size=5))["resumed_rows"] == 12
    with pytest.raises(ResumeMismatchError, match=r"options\.precision \(this output: 'float32', now: 'int8'\)"):
        from gte_onnx.precision import calibrate

        sample = np.random.default_rng(0).normal(size=(50, 64)).astype(np.float32)
        ranges = calibrate(sample / np.linalg.norm(sample, axis=1, keepdims=True))
        run_corpus(job(tiny_gte_dir, corpus, out, shard_size=5, precision="int8", ranges=ranges))


def test_cli_int8_corpus_without_ranges_is_refused_before_any_shard(tiny_gte_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(docs(3)) + "\n", encoding="utf-8")
    res = subprocess.run([sys.executable, "-m", "gte_onnx.cli", "embed-corpus", str(tiny_gte_dir), str(corpus),
                          str(tmp_path / "out"), "--precision", "uint8", "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "--precision uint8 needs calibration ranges" in res.stderr
    assert "Traceback" not in res.stderr and not list((tmp_path / "out").glob("*.parquet"))


def test_workers_write_the_same_rows(tiny_gte, tiny_gte_dir, tmp_path):
    texts = docs(40)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    summary = run_corpus(job(tiny_gte_dir, corpus, tmp_path / "out", shard_size=7, workers=2))
    assert summary["rows"] == 40 and summary["shards"] == 6
    ids, vectors, _ = read_output(tmp_path / "out")
    assert ids == list(range(1, 41))
    np.testing.assert_allclose(vectors, tiny_gte.encode(texts), atol=1e-5)


def test_cli_prints_a_summary(tiny_gte_dir, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "id": f"d{i}"}) + "\n" for i, t in enumerate(docs(5))))
    done = subprocess.run(
        [sys.executable, "-m", "gte_onnx.cli", "embed-corpus", str(tiny_gte_dir), str(corpus), str(tmp_path / "o"),
         "--id-field", "id", "--threads", "1"], capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "embedded 5 documents -> 5 rows in 1 shard(s); 0 truncated" in done.stderr
    manifest = json.loads((tmp_path / "o" / "_gte-onnx-corpus.json").read_text())
    assert manifest["complete"] is True and manifest["rows"] == 5 and manifest["run"]["options"]["id_field"] == "id"


# ---- the Ray adapter, without a cluster -------------------------------------------------------------------
def test_embed_batches_maps_a_batch_like_encode(tiny_gte, tiny_gte_dir):
    from gte_onnx.errors import IntegrityError
    from gte_onnx.corpus.ray import EmbedBatches

    texts = docs(6)
    mapper = EmbedBatches(str(tiny_gte_dir), threads=1, sha256=tiny_gte.onnx_model.variant.sha256)
    out = mapper(pa.table({"id": [f"d{i}" for i in range(6)], "text": texts}))
    assert out.column_names == ["id", "vector", "token_count", "truncated"]
    assert out.column("id").to_pylist() == [f"d{i}" for i in range(6)] and out.schema.field("id").type == pa.string()
    np.testing.assert_allclose(np.asarray(out.column("vector").to_pylist()), tiny_gte.encode(texts), atol=1e-5)
    numpy_batch = {"id": np.arange(1, 7), "text": np.asarray(texts, dtype=object)}  # batch_format="numpy"
    assert mapper(numpy_batch).schema.field("id").type == pa.int64()
    with pytest.raises(IntegrityError, match="the job expects"):
        EmbedBatches(str(tiny_gte_dir), threads=1, sha256="0" * 64)


def test_the_core_never_imports_ray_at_import_time():
    code = ("import sys, gte_onnx.embedder, gte_onnx.corpus.engine, gte_onnx.corpus.cli, gte_onnx.cli, gte_onnx.corpus.ray; "
            "print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_second_run_into_the_same_output_is_refused(tiny_gte_dir, tmp_path):
    from gte_onnx.corpus.output import OutputLock

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(docs(5)) + "\n", encoding="utf-8")
    held = OutputLock(tmp_path / "out")  # as a running job holds it
    try:
        with pytest.raises(InvalidInputError, match="another embed-corpus run is writing to"):
            run_corpus(job(tiny_gte_dir, corpus, tmp_path / "out"))
    finally:
        held.release()
    assert run_corpus(job(tiny_gte_dir, corpus, tmp_path / "out"))["rows"] == 5


def test_embed_batches_resolves_a_hub_id_from_the_node_cache(tiny_gte, tiny_gte_dir, tmp_path):
    """Each Ray node resolves a hub id into its own cache (here: a prepared cache, offline), sha256-checked."""
    import shutil

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-gte"
    shutil.copytree(tiny_gte_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    code = (
        "import pyarrow as pa\nfrom gte_onnx.corpus.ray import EmbedBatches\n"
        f"m = EmbedBatches('acme/tiny-gte', threads=1, sha256={tiny_gte.onnx_model.variant.sha256!r})\n"
        "out = m(pa.table({'id': ['x'], 'text': ['hello there']}))\n"
        "print(m.embedder.folder, out.num_rows)\n"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    folder, rows = done.stdout.split()
    assert folder == str(repo / "snapshots" / revision) and rows == "1"
