"""export -> reference -> parity on tiny synthetic models: gates pass on the faithful model and fail on a
damaged variant or on a reference from another model; the CLI's exit codes; the reference file format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from gte_onnx.folder.manifest import Manifest, Variant
from gte_onnx.folder.integrity import describe_file
from gte_onnx.parity.cli import parity_main  # noqa: E402
from gte_onnx.parity.reference import Reference, ReferenceFileError, compute_reference  # noqa: E402

from ..conftest import GTE_ID, RERANKER_ID, TINY_OVERRIDES  # noqa: E402


def _quiet(_msg: str) -> None:
    pass


USER_TEXTS = ["my own sentence", "another one"]


@pytest.fixture(scope="module")
def tiny_ref(tmp_path_factory) -> Path:
    """Made through the CLI, with user texts added, the way a user makes one."""
    from gte_onnx.parity.cli import reference_main

    work = tmp_path_factory.mktemp("ref")
    texts = work / "texts.txt"
    texts.write_text("\n".join([USER_TEXTS[0], "", USER_TEXTS[1]]) + "\n", encoding="utf-8")
    out = work / "tiny.npz"
    code = reference_main([GTE_ID, "--random-weights", "--config-overrides", json.dumps(TINY_OVERRIDES),
                           "--texts", str(texts), "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def tiny_rerank_ref(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "tiny_rerank.npz"
    compute_reference(RERANKER_ID, out, random_weights=True, seed=0, config_overrides=TINY_OVERRIDES, log=_quiet)
    return out


def add_damaged_variant(src: Path, dst: Path, name: str, noise: float) -> Path:
    """Copy a model folder and add `name`: the fp32 graph with Gaussian noise (noise x std) on its matrices."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim == 2 and w.size >= 1024:
            damaged = w + noise * float(w.std()) * rng.standard_normal(w.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(damaged.astype(np.float32), init.name))
    file = f"model_{name}.onnx"
    onnx.save(model, str(dst / file))
    described = describe_file(dst, file)
    manifest = Manifest.load(dst)
    manifest.with_variant(Variant(name=name, file=file, sha256=described["sha256"], bytes=described["bytes"])).save(dst)
    return dst


# ---- reference file -----------------------------------------------------------------------------------
def test_reference_file_round_trip(tiny_ref, tmp_path):
    ref = Reference.load(tiny_ref)
    assert ref.task == "embedding" and ref.outputs.shape == (ref.size, TINY_OVERRIDES["hidden_size"])
    by_group = dict(zip(ref.groups, ref.token_ids))
    for n in (63, 64, 65, 127, 128, 129, 255, 256, 257):  # exact token counts, specials included
        assert len(by_group[f"window_edge_{n}"]) == n
    assert ref.texts[:4] == ["what is the capital of China?", "how to implement quick sort in python?",
                             "Beijing", "sorting algorithms"]
    assert list(ref.token_ids[0]) == [50281, 5371, 310, 253, 5347, 273, 4135, 32, 50282]
    prov = ref.provenance
    assert prov["random_weights"] is True and prov["seed"] == 0 and prov["pooling"] == "cls"
    assert prov["config_overrides"] == TINY_OVERRIDES and prov["normalized"] is False
    assert {"torch", "transformers"} <= set(prov["versions"])
    assert [t for t, g in zip(ref.texts, ref.groups) if g == "user"] == USER_TEXTS
    again = Reference.load(ref.save(tmp_path / "copy.npz"))
    np.testing.assert_array_equal(again.outputs, ref.outputs)
    assert again.texts == ref.texts and all(np.array_equal(a, b) for a, b in zip(again.token_ids, ref.token_ids))


def test_reference_file_errors(tmp_path):
    with pytest.raises(ReferenceFileError, match="does not exist"):
        Reference.load(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ReferenceFileError, match="cannot read"):
        Reference.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ReferenceFileError, match="not a gte-onnx reference"):
        Reference.load(tmp_path / "other.npz")


# ---- parity: pass and fail ------------------------------------------------------------------------------
def test_parity_passes_fp32_and_fails_a_damaged_variant(tiny_gte_dir, tiny_ref, tmp_path, capsys):
    folder = add_damaged_variant(tiny_gte_dir, tmp_path / "model", "int8", noise=0.3)
    out = tmp_path / "report.json"
    assert parity_main([str(folder), "--reference", str(tiny_ref), "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    fp32, damaged = report["variants"]["fp32"], report["variants"]["int8"]
    assert fp32["gate"]["passed"] and fp32["figures"]["max_abs_diff"] < 1e-4
    assert fp32["figures"]["centred_cosine_min"] > 0.999 and fp32["figures"]["token_mismatches"] == 0
    assert not damaged["gate"]["passed"]
    assert damaged["figures"]["centred_cosine_mean"] < 0.95
    table = capsys.readouterr().out
    assert "PASS" in table and "FAIL" in table and "int8: FAIL" in table
    # the faithful variant alone passes, and a loosened gate lets the damaged one through
    assert parity_main([str(folder), "--reference", str(tiny_ref), "--variants", "fp32"]) == 0
    loose = [f"--gate={k}=off" for k in damaged["gate"]["thresholds"] if k != "token_mismatches"]
    assert parity_main([str(folder), "--reference", str(tiny_ref), "--variants", "int8", *loose]) == 0


def test_reference_from_another_model_fails(tiny_gte_dir, tmp_path, capsys):
    other = tmp_path / "seed1.npz"
    compute_reference(GTE_ID, other, random_weights=True, seed=1, config_overrides=TINY_OVERRIDES, log=_quiet)
    assert parity_main([str(tiny_gte_dir), "--reference", str(other)]) == 1
    out = capsys.readouterr().out
    assert "warning: seed: folder 0 vs reference 1" in out and "fp32: FAIL" in out


def test_reranker_parity(tiny_reranker_dir, tiny_rerank_ref, tmp_path):
    folder = add_damaged_variant(tiny_reranker_dir, tmp_path / "rr", "int8", noise=1.0)
    out = tmp_path / "rr.json"
    assert parity_main([str(folder), "--reference", str(tiny_rerank_ref), "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    fp32, damaged = report["variants"]["fp32"], report["variants"]["int8"]
    assert fp32["gate"]["passed"] and fp32["figures"]["logit_spearman"] > 0.9999
    assert fp32["figures"]["rerank_topk_overlap"] == 1.0
    assert not damaged["gate"]["passed"] and damaged["figures"]["logit_spearman"] < 0.97


def test_parity_with_data_paths(tiny_gte_dir, tiny_ref, tmp_path):
    from gte_onnx.parity.datasets import DATA_DIR

    sts = tmp_path / "sts-test.csv"
    lines = (DATA_DIR / "stsbenchmark" / "sts-test.csv").read_text(encoding="utf-8").splitlines()[:40]
    sts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cisi = tmp_path / "cisi"
    cisi.mkdir()
    (cisi / "CISI.ALL").write_text(
        "".join(f".I {i}\n.T\nTitle {w}\n.W\nAbout {w} and more {w}.\n" for i, w in
                enumerate(["libraries", "sorting", "capital cities", "coffee", "rivers"], start=1)),
        encoding="utf-8")
    (cisi / "CISI.QRY").write_text(".I 1\n.W\nlibraries\n.I 2\n.W\ncoffee\n", encoding="utf-8")
    (cisi / "CISI.REL").write_text("1 1 0 0\n2 4 0 0\n", encoding="utf-8")
    out = tmp_path / "data.json"
    code = parity_main([str(tiny_gte_dir), "--reference", str(tiny_ref), "--data", str(sts), "--data", str(cisi),
                        "--json", str(out)])
    assert code == 0
    fp32 = json.loads(out.read_text())["variants"]["fp32"]
    assert set(fp32["data"]) == {"sts_spearman", "cisi_ndcg@10", "cisi_mrr@10"}
    assert -100 <= fp32["data"]["sts_spearman"] <= 100 and 0 <= fp32["data"]["cisi_ndcg@10"] <= 100
    assert fp32["figures"]["sts_drop"] == 0.0  # fp32 against itself


# ---- exit codes -----------------------------------------------------------------------------------------
def test_cli_exit_codes_for_bad_input(tiny_gte_dir, tiny_ref, tmp_path, capsys):
    from gte_onnx.cli import main

    base = ["parity", str(tiny_gte_dir), "--reference", str(tiny_ref)]
    assert main(base + ["--gate", "nonsense=1"]) == 2
    assert "unknown gate figure" in capsys.readouterr().err
    assert main(base + ["--data", str(tmp_path / "nowhere")]) == 2
    assert main(base + ["--variants", "q9"]) == 2
    assert "not in" in capsys.readouterr().err
    assert main(["parity", str(tiny_gte_dir), "--reference", str(tmp_path / "missing.npz")]) == 2
    assert main(["parity", str(tmp_path), "--reference", str(tiny_ref)]) == 2  # not a model folder
    with pytest.raises(SystemExit) as exc:
        main(["parity", str(tiny_gte_dir)])  # --reference is required
    assert exc.value.code == 2
