"""Provider and variant selection logic, CPU-only (GPU runs skip with a reason when no GPU is present)."""

from __future__ import annotations

import pytest

from gte_onnx.inference import session
from gte_onnx.errors import ProviderError, VariantError
from gte_onnx.folder.manifest import Manifest


class FakeOrt:
    def __init__(self, providers):
        self.providers = providers

    def get_available_providers(self):
        return list(self.providers)


@pytest.fixture
def fake_ort(monkeypatch):
    def install(providers, wheels=("onnxruntime",), gpu_present=False):
        monkeypatch.setattr(session, "import_onnxruntime", lambda: FakeOrt(providers))
        monkeypatch.setattr(session, "installed_ort_wheels", lambda: list(wheels))
        monkeypatch.setattr(session, "_cuda_device_present", lambda: gpu_present)

    return install


def test_default_is_cpu_without_a_gpu(fake_ort):
    fake_ort(["CUDAExecutionProvider", "CPUExecutionProvider"], ("onnxruntime-gpu",), gpu_present=False)
    assert session.resolve_providers(None) == ["CPUExecutionProvider"]


def test_default_is_cuda_with_onnxruntime_gpu_and_a_gpu(fake_ort):
    fake_ort(["CUDAExecutionProvider", "CPUExecutionProvider"], ("onnxruntime-gpu",), gpu_present=True)
    assert session.resolve_providers(None) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session.resolve_providers(["cuda"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_gpu_requested_without_onnxruntime_gpu(fake_ort):
    fake_ort(["CPUExecutionProvider"], ("onnxruntime",))
    with pytest.raises(ProviderError, match=r"needs onnxruntime-gpu.*pip install 'gte-onnx\[gpu\]'"):
        session.resolve_providers(["cuda"])


def test_gpu_wheel_without_cuda_libraries(fake_ort):
    # onnxruntime-gpu installed but the CUDA provider did not register: CUDA/cuDNN libraries missing.
    fake_ort(["CPUExecutionProvider"], ("onnxruntime-gpu",))
    with pytest.raises(ProviderError, match="CUDA/cuDNN libraries are probably missing"):
        session.resolve_providers(["CUDAExecutionProvider"])


def test_both_wheels_installed_is_an_actionable_error(fake_ort):
    fake_ort(["CUDAExecutionProvider", "CPUExecutionProvider"], ("onnxruntime", "onnxruntime-gpu"), gpu_present=True)
    with pytest.raises(ProviderError, match="Several onnxruntime wheels.*pip uninstall -y onnxruntime onnxruntime-gpu"):
        session.resolve_providers(["cuda"])


def test_unknown_provider_and_empty_list(fake_ort):
    fake_ort(["CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="TensorrtExecutionProvider is not available"):
        session.resolve_providers(["TensorrtExecutionProvider"])
    with pytest.raises(ProviderError, match="empty"):
        session.resolve_providers([])


def _manifest(variants, ranking):
    base = {
        "format_version": 1, "task": "embedding", "pooling": "cls", "normalize": True, "max_length": 16,
        "dim": 4, "inputs": ["input_ids", "attention_mask"], "output": "last_hidden_state", "opset": 17,
        "variants": {
            name: {"file": f"{name}.onnx", "sha256": "0", "bytes": 1, "providers": provs, "fidelity": fid}
            for name, (provs, fid) in variants.items()
        },
        "speed_ranking": ranking,
    }
    return Manifest.from_json(base)


VARIANTS = {
    "fp32": ([], {"passed": True}),
    "int8": (["CPUExecutionProvider"], {"passed": True, "kernel_family": "x86-vnni"}),
    "q4": (["CPUExecutionProvider"], {"passed": False, "kernel_family": "x86-vnni"}),
    "fp16": (["CUDAExecutionProvider"], {"passed": True}),
}


def test_auto_picks_the_fastest_variant_that_passes_its_gate_per_provider():
    m = _manifest(VARIANTS, {"CPUExecutionProvider": ["q4", "int8", "fp32"], "CUDAExecutionProvider": ["fp16", "int8", "fp32"]})
    assert session.choose_variant(m, "auto", "CPUExecutionProvider", "x86-vnni").name == "int8"  # q4 fails its gate
    assert session.choose_variant(m, "auto", "CUDAExecutionProvider").name == "fp16"
    assert session.choose_variant(m, "q4", "CPUExecutionProvider").name == "q4"  # a name overrides


def test_auto_without_measurements_is_fp32():
    m = _manifest(VARIANTS, {})
    assert session.choose_variant(m, "auto", "CPUExecutionProvider").name == "fp32"
    with pytest.raises(VariantError):
        session.choose_variant(m, "int4", "CPUExecutionProvider")


def test_unmeasured_variant_is_not_trusted():
    m = _manifest({"fp32": ([], {}), "int8": ([], {})}, {"CPUExecutionProvider": ["int8", "fp32"]})
    assert session.choose_variant(m, "auto", "CPUExecutionProvider").name == "fp32"


def test_fp16_on_cpu_warns(tiny_gte_dir, tmp_path):
    import shutil

    from gte_onnx import Embedder

    folder = tmp_path / "m"
    shutil.copytree(tiny_gte_dir, folder)
    manifest = Manifest.load(folder)
    fp32 = manifest.variant("fp32")
    import dataclasses

    manifest.with_variant(dataclasses.replace(fp32, name="fp16")).save(folder)  # same file, fp16 name
    with pytest.warns(RuntimeWarning, match="fp16 is slow"):
        Embedder(folder, variant="fp16", providers=["cpu"])


@pytest.mark.skipif(not session._cuda_device_present(), reason="no NVIDIA GPU on this machine")
def test_cuda_embeds_like_cpu(tiny_gte_dir):
    import numpy as np

    from gte_onnx import Embedder

    texts = ["what is the capital of China?", "Beijing"]
    cpu = Embedder(tiny_gte_dir, variant="fp32", providers=["cpu"]).encode(texts)
    gpu = Embedder(tiny_gte_dir, variant="fp32", providers=["cuda"]).encode(texts)
    assert np.abs(cpu - gpu).max() < 1e-3


def test_both_wheels_on_the_default_path_with_a_gpu(fake_ort):
    fake_ort(["CUDAExecutionProvider", "CPUExecutionProvider"], ("onnxruntime", "onnxruntime-gpu"), gpu_present=True)
    with pytest.raises(ProviderError, match="Several onnxruntime wheels"):
        session.resolve_providers(None)
