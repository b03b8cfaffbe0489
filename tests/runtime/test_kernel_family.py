"""CPU kernel families: detection, the int8 route on x86 without VNNI, where a variant's gate counts, what
`auto` does on a family its variants were not measured on, `gte-onnx verify`, and q4's batch invariance.
(The other families themselves run under qemu in tests/quantize/test_cpu_families.py.)"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import warnings

import numpy as np
import pytest

from gte_onnx import Embedder
from gte_onnx import cli
from gte_onnx.inference import kernel_family
from gte_onnx.inference import session
from gte_onnx.errors import ModelFolderError, UnverifiedVariantWarning
from gte_onnx.inference.kernel_family import (
    FAMILIES,
    NATIVE,
    PLAIN_ATTENTION_INT8,
    U8_WEIGHTS,
    arithmetic,
    route_for,
    same_arithmetic,
    verification,
)
from gte_onnx.folder.manifest import Manifest

CPU = "CPUExecutionProvider"
TEXTS = ["what is the capital of China?", "Beijing", "how to implement quick sort in python?",
         "sorting algorithms " * 9, "a", "The cat sat on the mat while the dog slept by the fire."] * 3


def test_the_probe_model_is_the_onnx_model_it_claims_to_be():
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(kernel_family._matmul_integer_model(4, 64, 16))
    onnx.checker.check_model(model, full_check=True)
    (node,) = model.graph.node
    assert node.op_type == "MatMulInteger" and list(node.input) == ["a", "b"]
    weight = onnx.numpy_helper.to_array(model.graph.initializer[0])
    assert weight.dtype == np.int8 and weight.shape == (64, 16) and (weight == 127).all()


def test_this_cpu_has_a_known_family():
    family = kernel_family.detect_family()
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        assert family in FAMILIES
    # The x86 family is the probe's verdict: exact u8 x s8 means VNNI-class arithmetic.
    if family.startswith("x86"):
        assert (family == "x86-vnni") == kernel_family.u8s8_gemm_is_exact()


def _variant(kind: str, fidelity=None, verified_on=None, attention="plain ops"):
    from gte_onnx.folder.manifest import Variant

    recipe = {"kind": kind} | ({"attention": {"form": attention}} if kind == "int8" and attention else {})
    return Variant(name=kind, file=f"model_{kind}.onnx", sha256=kind * 8, bytes=1, recipe=recipe,
                   fidelity=fidelity if fidelity is not None else {"passed": True, "kernel_family": "x86-vnni"},
                   verified_on=verified_on or {})


def test_int8_takes_the_u8_weights_route_only_where_u8s8_saturates():
    assert route_for(_variant("int8"), "x86-avx2") is U8_WEIGHTS
    assert U8_WEIGHTS.session_config == {"session.x64quantprecision": "1"} and U8_WEIGHTS.optimization == "extended"
    for family in ("x86-vnni", "arm64", "arm64-dot"):
        assert route_for(_variant("int8"), family) is NATIVE
    for kind in ("fp32", "q4"):
        assert route_for(_variant(kind), "x86-avx2") is NATIVE


def test_a_gate_counts_only_on_families_of_the_same_arithmetic():
    int8, q4 = _variant("int8"), _variant("q4")
    assert arithmetic(int8) == PLAIN_ATTENTION_INT8 and arithmetic(q4) == "q4"
    assert same_arithmetic(PLAIN_ATTENTION_INT8, "x86-avx2", "x86-vnni")
    assert not same_arithmetic("q4", "x86-avx2", "x86-vnni")
    assert not same_arithmetic(PLAIN_ATTENTION_INT8, "arm64", "x86-vnni") and same_arithmetic("fp32", "arm64", "x86-vnni")
    assert verification(int8, "x86-avx2", local={}).verified  # through the exact route
    assert verification(int8, "x86-avx2", local={}).measured_on == "x86-vnni"
    # ORT's fused attention adds in another order on AVX2: an int8 file that keeps it (older folders,
    # --int8-attention fused) is not exact there, so its gate must be measured on that family.
    fused = _variant("int8", attention="fused")
    assert arithmetic(fused) == "int8" and not same_arithmetic("int8", "x86-avx2", "x86-vnni")
    assert verification(fused, "x86-avx2", local={}).state == "unverified"
    assert verification(_variant("int8", attention=None), "x86-avx2", local={}).state == "unverified"
    assert same_arithmetic("int8", "arm64", "arm64-dot")
    assert not verification(q4, "x86-avx2", local={}).verified
    assert verification(int8, "arm64-dot", local={}).state == "unverified"
    # A measurement recorded in the folder for the family, or made on this machine, counts.
    arm = _variant("int8", verified_on={"arm64-dot": {"passed": True}})
    assert verification(arm, "arm64-dot", local={}).where == "folder"
    assert verification(q4, "x86-avx2", local={"x86-avx2": {"passed": True}}).where == "local"
    assert verification(q4, "x86-avx2", local={"x86-avx2": {"passed": False}}).state == "failed"
    # A record that does not say which family it was measured on holds for none.
    legacy = _variant("int8", fidelity={"passed": True})
    assert verification(legacy, "x86-vnni", local={}).state == "unverified"
    # fp32 is proven by its export on every family.
    assert verification(_variant("fp32", fidelity={"passed": True}), "arm64", local={}).verified


def test_verified_on_round_trips_and_is_checked(tiny_quantized_dir, tmp_path):
    manifest = Manifest.load(tiny_quantized_dir)
    int8 = manifest.variants["int8"]
    assert int8.fidelity["kernel_family"] == kernel_family.detect_family()  # quantize records where it measured
    data = manifest.with_variant(dataclasses.replace(int8, verified_on={"arm64": {"passed": True, "x": 1}})).to_json()
    assert Manifest.from_json(json.loads(json.dumps(data))).variants["int8"].verified_on == {"arm64": {"passed": True, "x": 1}}
    data["variants"]["int8"]["verified_on"] = {"arm64": {"passed": "yes"}}
    with pytest.raises(ModelFolderError, match=r"verified_on\['arm64'\]"):
        Manifest.from_json(data)


def _ranked_copy(src, dst):
    shutil.copytree(src, dst)
    manifest = Manifest.load(dst)
    manifest.replace(speed_ranking={CPU: ("int8", "q4", "fp32")}).save(dst)
    return dst


def test_auto_on_an_unmeasured_family_picks_fp32_and_says_why_until_verify_measures_it(
        tiny_quantized_dir, tmp_path, monkeypatch, capsys):
    folder = _ranked_copy(tiny_quantized_dir, tmp_path / "model")
    monkeypatch.setenv("GTE_ONNX_CACHE", str(tmp_path / "cache"))
    assert Embedder(folder, threads=1).variant == "int8"  # measured on this very CPU at quantize time

    monkeypatch.setattr(kernel_family, "detect_family", lambda: "arm64")
    with pytest.warns(UnverifiedVariantWarning, match=r"not 'int8'.*arm64.*gte-onnx verify"):
        model = Embedder(folder, threads=1)
    assert model.variant == "fp32" and [n for n, _ in model.onnx.passed_over] == ["int8", "q4"]
    assert cli.main(["doctor", str(folder)]) == 0
    assert "passed over int8: its fidelity was measured on" in capsys.readouterr().out

    from gte_onnx.quantize import verify

    results = verify.verify_folder(folder, log=lambda _m: None)
    assert set(results) == {"int8", "q4"} and all(r["passed"] for r in results.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedVariantWarning)
        assert Embedder(folder, threads=1).variant == "int8"  # the local measurement now counts
    assert Manifest.load(folder).variants["int8"].verified_on == {}  # without --record the folder is unchanged

    monkeypatch.setenv("GTE_ONNX_CACHE", str(tmp_path / "other-cache"))
    verify.verify_folder(folder, ["int8"], record=True, log=lambda _m: None)
    assert Manifest.load(folder).variants["int8"].verified_on["arm64"]["passed"] is True
    assert Embedder(folder, threads=1).variant == "int8"  # a published folder carries it


def test_the_u8_weights_route_is_applied_and_changes_nothing_on_an_exact_cpu(tiny_quantized_dir, monkeypatch):
    native = Embedder(tiny_quantized_dir, variant="int8", threads=1)
    assert native.onnx.route is (U8_WEIGHTS if native.onnx.family == "x86-avx2" else NATIVE)
    monkeypatch.setattr(kernel_family, "detect_family", lambda: "x86-avx2")
    routed = Embedder(tiny_quantized_dir, variant="int8", threads=1)
    assert routed.onnx.route is U8_WEIGHTS
    if kernel_family.u8s8_gemm_is_exact():  # ORT applies the rewrite only where u8 x s8 saturates
        np.testing.assert_array_equal(routed.encode(TEXTS), native.encode(TEXTS))


@pytest.mark.parametrize("folder", ["tiny_quantized_dir",
                                    pytest.param("minilm_quantized_dir", marks=pytest.mark.slow)])  # real-size MiniLM
def test_every_variant_gives_a_text_the_same_vector_alone_and_in_any_batch(folder, request):
    path = request.getfixturevalue(folder)
    assert Manifest.load(path).variants["q4"].recipe["pad_to_multiple"] == 2
    for variant in ("fp32", "int8", "q4"):
        model = Embedder(path, variant=variant, threads=1)
        batched = model.encode(TEXTS, batch_size=32)
        alone = np.stack([model.encode([t])[0] for t in TEXTS])
        odd = model.encode(TEXTS[::-1], batch_size=5)[::-1]
        np.testing.assert_array_equal(alone, batched, err_msg=variant)
        np.testing.assert_array_equal(odd, batched, err_msg=variant)


def test_an_odd_width_is_padded_to_the_variants_multiple_but_never_past_the_max_length():
    from gte_onnx.inference.batching import pad_batch

    ids, mask = pad_batch([np.array([1, 2, 3]), np.array([4])], 0, multiple=2)
    assert ids.shape == (2, 4) and mask.sum() == 4 and (ids[:, 3] == 0).all()
    assert pad_batch([np.array([1, 2, 3])], 0, multiple=2, limit=3)[0].shape == (1, 3)
    assert pad_batch([np.array([1, 2, 3])], 0)[0].shape == (1, 3)
