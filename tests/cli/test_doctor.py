"""`gte-onnx doctor`: the machine report and the explanation of what `variant="auto"` picks (CPU only)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gte_onnx import cli
from gte_onnx.cli import doctor
from gte_onnx.inference import session
from gte_onnx.inference.cpu import parse_cpuinfo, read_cpuinfo
from gte_onnx.folder.manifest import Manifest, Variant
from gte_onnx.inference.kernel_family import detect_family

CPU, CUDA = session.CPU, session.CUDA


def _doctor_json(capsys, *argv: str) -> dict:
    assert cli.main(["doctor", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_report_matches_what_the_runtime_sees(capsys, tiny_gte_dir):
    import onnxruntime as ort

    report = _doctor_json(capsys, str(tiny_gte_dir))
    assert report["onnxruntime"]["version"] == ort.__version__
    assert report["onnxruntime"]["wheels"] == session.installed_ort_wheels()
    assert report["onnxruntime"]["providers"] == ort.get_available_providers()
    assert report["cuda"]["provider_available"] == (CUDA in ort.get_available_providers())
    assert set(report["cuda"]["libraries"]) == set(doctor.CUDA_LIBRARIES)
    assert report["cpu"]["default_threads"] == session.physical_cores()
    assert report["cpu"]["physical_cores"] == read_cpuinfo().physical_cores
    model = report["model"]
    assert set(model["variants"]) == set(Manifest.load(tiny_gte_dir).variants)
    manifest = Manifest.load(tiny_gte_dir)
    for provider in (CPU, CUDA):
        assert model["auto"][provider]["picked"] == session.choose_variant(manifest, "auto", provider).name


def test_text_report_names_the_pick_and_the_reason(capsys, tiny_gte_dir):
    assert cli.main(["doctor", str(tiny_gte_dir)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime: " in out and "libcublas" in out and "flags: " in out
    # The tiny folder has no measured speed ranking: auto falls back to fp32 and says why.
    assert f"auto on {CPU}: fp32: no speed ranking measured" in out


def test_doctor_on_a_folder_that_is_not_a_model_is_one_error_line(capsys, tmp_path):
    assert cli.main(["doctor", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "gte-onnx.json" in err and len(err.strip().splitlines()) == 1


FAMILY = detect_family()  # this CPU's: the fake int8 counts as measured here


def _with_variants(manifest: Manifest, ranking: dict) -> Manifest:
    fp32 = manifest.variants["fp32"]
    made = {
        "int8": dataclasses.replace(fp32, name="int8", fidelity={"passed": True, "kernel_family": FAMILY},
                                    providers=(CPU,)),
        "q4": dataclasses.replace(fp32, name="q4", fidelity={"passed": False, "kernel_family": FAMILY}),
        "fp16": dataclasses.replace(fp32, name="fp16", fidelity={"passed": True}, providers=(CUDA,)),
        "bf16": dataclasses.replace(fp32, name="bf16", fidelity={}),
    }
    return manifest.replace(variants={**manifest.variants, **made}, speed_ranking=ranking)


def test_explain_auto_walks_the_ranking_like_choose_variant(tiny_gte_dir):
    manifest = _with_variants(Manifest.load(tiny_gte_dir), {
        CPU: ("q4", "bf16", "fp16", "gone", "int8", "fp32"),
        CUDA: ("fp16", "int8", "fp32"),
    })
    cpu = doctor.explain_auto(manifest, CPU)
    assert cpu["picked"] == session.choose_variant(manifest, "auto", CPU).name == "int8"
    assert [c["rejected"] for c in cpu["candidates"]] == [
        "failed its fidelity gate", "fidelity not measured", f"made for {CUDA}",
        "in the speed ranking but not in the folder", None, None]
    assert "number 5 of 6" in cpu["why"]
    cuda = doctor.explain_auto(manifest, CUDA)
    assert cuda["picked"] == "fp16" and "number 1 of 3" in cuda["why"]
    nothing_qualifies = _with_variants(Manifest.load(tiny_gte_dir), {CPU: ("q4", "fp16")})
    fallback = doctor.explain_auto(nothing_qualifies, CPU)
    assert fallback["picked"] == "fp32" and fallback["why"].startswith("no ranked variant qualifies")
    only_failing = nothing_qualifies.replace(variants={"q4": nothing_qualifies.variants["q4"]})
    none = doctor.explain_auto(only_failing, CPU)
    assert none["picked"] is None and "passes its fidelity gate" in none["why"]


def test_cuda_libraries_are_found_in_pip_packages_or_reported_missing(tmp_path, monkeypatch):
    lib = tmp_path / "nvidia" / "cublas" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcublas.so.12").write_bytes(b"")
    monkeypatch.setattr(doctor.ctypes.util, "find_library", lambda name: None)
    found = doctor.find_cuda_library("cublas", [tmp_path / "nvidia"])
    assert found == {"found": True, "where": "pip nvidia package", "path": str(lib / "libcublas.so.12")}
    assert doctor.find_cuda_library("cudnn", [tmp_path / "nvidia"])["found"] is False
    monkeypatch.setattr(doctor.ctypes.util, "find_library", lambda name: f"lib{name}.so.9")
    assert doctor.find_cuda_library("cudnn", [])["path"] == "libcudnn.so.9"


def test_problems_name_the_fix(monkeypatch):
    monkeypatch.setattr(doctor, "installed_ort_wheels", lambda: ["onnxruntime", "onnxruntime-gpu"])
    monkeypatch.setattr(doctor, "find_cuda_library", lambda name: {"found": name != "cudnn", "where": None, "path": None})
    found = doctor.collect()["problems"]
    assert any("several onnxruntime wheels" in p and "pip uninstall" in p for p in found)
    assert any("libcudnn cannot be found" in p for p in found)


@pytest.mark.parametrize("threads_per_core", [1, 2])
def test_cpuinfo_counts_physical_cores_and_reads_flags(threads_per_core):
    blocks = []
    for socket in (0, 1):
        for core in (0, 1):
            for _ in range(threads_per_core):
                blocks.append(f"processor\t: {len(blocks)}\nmodel name\t: Test CPU\nphysical id\t: {socket}\n"
                              f"core id\t\t: {core}\nflags\t\t: fpu avx2 avx512_vnni amx_tile\n")
    info = parse_cpuinfo("\n".join(blocks) + "\n")
    assert info.model == "Test CPU" and info.physical_cores == 4
    assert {"avx512_vnni", "amx_tile"} <= info.flags and "avx512_bf16" not in info.flags
