"""The tiny gte and MiniLM (real weights) in fp32, int8 and q4 under emulated CPU families (qemu-user: x86 AVX2
without VNNI, ARM64 cortex-a72 without dot product, neoverse-n1 with it), compared with this CPU's vectors.

The emulators come from scripts/setup-emulation.sh (scripts/test.sh runs it; it needs root for apt-get).
Without them these tests skip, unless GTE_ONNX_REQUIRE_EMULATION=1 (set by .ci/run) makes that a failure.
Figures on more text: dev/cpu_families.py and docs/cpu-support.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gte_onnx.folder.manifest import Manifest
from gte_onnx.inference import kernel_family
from gte_onnx.parity.datasets import load_cisi, load_sts_b
from gte_onnx.parity.metrics import centred_cosine_rows

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().parent / "emulated" / "vectors.py"
FAMILIES = ("x86-avx2", "arm64", "arm64-dot")
VARIANTS = ("fp32", "int8", "q4")
MODELS = ("tiny", "minilm")


def _emulation():
    spec = importlib.util.spec_from_file_location("gte_onnx_emulation", ROOT / "scripts" / "emulation" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def emulation():
    emu = _emulation()
    found = emu.families()
    missing = [f for f in FAMILIES if f not in found]
    if missing:
        message = f"emulated CPU families {missing} are not set up: run scripts/setup-emulation.sh (as root)"
        if os.environ.get("GTE_ONNX_REQUIRE_EMULATION") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return emu


@pytest.fixture(scope="module")
def arm_site(emulation, tmp_path_factory) -> Path:
    """The project's wheel unpacked for the arm64 interpreters (the x86 one uses this venv)."""
    wheel = os.environ.get("GTE_ONNX_WHEEL")
    if not wheel:
        out = tmp_path_factory.mktemp("wheel")
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
                       check=True, capture_output=True)
        wheel = str(next(out.glob("gte_onnx-*.whl")))
    return emulation.install_wheel(wheel)


# x86 float GEMMs crawl under qemu-x86_64 (softfloat): fewer MiniLM texts where the kernels are float
# (fp32, and q4's dequantized blocks). The ARM emulation is fast enough for all of them.
LIMITS = {"x86-avx2": {"minilm/fp32": 2, "minilm/q4": 4}}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    s1, s2, _ = load_sts_b("test")
    document = next(iter(load_cisi().documents.values()))  # ~200 tokens of real text
    return [t for pair in zip(s1[:12], s2[:12]) for t in pair] + ["a", document]


def _spec(where: Path, texts, folders, family: str | None) -> Path:
    path = where / f"spec-{family or 'native'}.json"
    path.write_text(json.dumps({"folders": folders, "variants": list(VARIANTS), "texts": texts, "alone": 4,
                                "threads": 1, "limits": LIMITS.get(family, {})}))
    return path


@pytest.fixture(scope="module")
def folders(tiny_quantized_dir, minilm_quantized_dir) -> dict[str, str]:
    return {"tiny": str(tiny_quantized_dir), "minilm": str(minilm_quantized_dir)}


def _load(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        return json.loads(str(data["meta"])), arrays


@pytest.fixture(scope="module")
def native(texts, folders, tmp_path_factory):
    where = tmp_path_factory.mktemp("native")
    spec = _spec(where, texts, folders, None)
    subprocess.run([sys.executable, str(CHILD), str(spec), str(where / "vectors.npz")], check=True, timeout=600)
    return _load(where / "vectors.npz")


_RUNS: dict[str, tuple[dict, dict]] = {}


def _emulated(family, emulation, arm_site, texts, folders, tmp_path_factory):
    if family not in _RUNS:
        where = tmp_path_factory.mktemp(family)
        spec, out = _spec(where, texts, folders, family), where / "vectors.npz"
        extra = [arm_site] if family.startswith("arm") else []
        result = emulation.run_python(family, [str(CHILD), str(spec), str(out)], extra_pythonpath=extra,
                                      timeout=1200)
        assert result.returncode == 0, f"{family}: {result.stderr[-3000:]}"
        _RUNS[family] = _load(out)
    return _RUNS[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_variant_keeps_its_vectors_or_its_fidelity_on_another_family(
        family, emulation, arm_site, texts, folders, native, tmp_path_factory):
    meta, vectors = _emulated(family, emulation, arm_site, texts, folders, tmp_path_factory)
    native_meta, reference = native
    assert native_meta["family"] == kernel_family.detect_family()
    assert meta["family"] == family  # the runtime detects the emulated CPU, not the host's cpuinfo
    for model in MODELS:
        assert meta["routes"][f"{model}/int8"] == ("u8-weights" if family == "x86-avx2" else "native")
        fp32_native = reference[f"{model}/fp32/batch"]
        for variant in VARIANTS:
            here = vectors[f"{model}/{variant}/batch"]
            there = reference[f"{model}/{variant}/batch"][: len(here)]
            assert np.isfinite(here).all()
            diff = float(np.abs(here - there).max())
            arithmetic = kernel_family.arithmetic(Manifest.load(folders[model]).variants[variant])
            if variant == "int8":
                assert arithmetic == kernel_family.PLAIN_ATTENTION_INT8  # what quantize builds now
            exact = variant == "fp32" or kernel_family.same_arithmetic(arithmetic, family, native_meta["family"])
            if exact:  # fp32 everywhere; int8 on x86 through the u8-weights route, attention as plain ops
                # Sentences and the document alike: with ORT's fused attention the document moved by 1.7e-3
                # (MiniLM; its softmax adds in another order on AVX2), and by 2.9e-2 without the route.
                assert diff <= 1e-4, f"{model} {variant} on {family}: max |diff| {diff:.2e} to native"
            else:  # other arithmetic: the fidelity to fp32 must stay what it is natively
                ours = centred_cosine_rows(fp32_native[: len(here)], here).mean()
                theirs = centred_cosine_rows(fp32_native[: len(here)], there).mean()
                assert abs(ours - theirs) <= 0.01, f"{model} {variant} on {family}: centred cosine {ours} vs {theirs}"
                assert diff <= 0.05, f"{model} {variant} on {family}: max |diff| {diff:.2e} to native"
            # Batch invariance: a text alone gives the vector it gets in a batch, to the bit on x86. ARM's float
            # kernels tile by row count (fp32, int8 move <= 1e-7), and q4's 8-bit activation blocks on ARM64 with
            # dot product round those differences the other way (MiniLM: 2.4e-3; docs/cpu-support.md).
            alone = vectors[f"{model}/{variant}/alone"]
            moved = float(np.abs(alone - here[: len(alone)]).max())
            bound = 0.0 if family.startswith("x86") else 5e-3 if variant == "q4" else 1e-6
            assert moved <= bound, f"{model} {variant} on {family}: alone vs batch {moved:.2e}"


def test_the_arm64_families_compute_int8_identically(emulation, arm_site, texts, folders, tmp_path_factory):
    """kernel_family.SAME_ARITHMETIC groups arm64 with arm64-dot for int8: a gate measured on one holds for
    the other. The integer GEMMs are exact on both; the float kernels around them are the same NEON code."""
    _, a72 = _emulated("arm64", emulation, arm_site, texts, folders, tmp_path_factory)
    _, n1 = _emulated("arm64-dot", emulation, arm_site, texts, folders, tmp_path_factory)
    for model in MODELS:
        diff = float(np.abs(a72[f"{model}/int8/batch"] - n1[f"{model}/int8/batch"]).max())
        assert diff <= 1e-4, f"{model} int8: cortex-a72 vs neoverse-n1 max |diff| {diff:.2e}"
