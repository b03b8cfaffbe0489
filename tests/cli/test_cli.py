from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from gte_onnx import Embedder
from gte_onnx.cli import main


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "gte_onnx.cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True)


def test_embed_arguments_jsonl(tiny_gte_dir):
    res = run_cli("embed", tiny_gte_dir, "Beijing", "sorting algorithms", "--threads", "1")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    ref = Embedder(tiny_gte_dir, threads=1).encode(["Beijing", "sorting algorithms"])
    assert [r["text"] for r in rows] == ["Beijing", "sorting algorithms"]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), ref, atol=1e-6)


def test_embed_stdin_and_npy(tiny_gte_dir, tmp_path):
    out = tmp_path / "v.npy"
    res = run_cli("embed", tiny_gte_dir, "-o", out, stdin="first line\n\nsecond line\n")
    assert res.returncode == 0, res.stderr
    assert np.load(out).shape == (2, Embedder(tiny_gte_dir).dim)


def test_embed_file(tiny_gte_dir, tmp_path):
    src = tmp_path / "texts.txt"
    src.write_text("one\ntwo\nthree\n")
    res = run_cli("embed", tiny_gte_dir, "--file", src)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 3


def test_cli_errors_are_one_line_not_tracebacks(tmp_path):
    res = run_cli("embed", tmp_path, "text")
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert main(["no-such-verb"]) == 2


def test_rerank_cli(tiny_reranker_dir):
    res = run_cli("rerank", tiny_reranker_dir, "--query", "capital of China", "Beijing", "sorting", "--top-k", "1")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 1 and set(rows[0]) == {"index", "score", "text"}
