"""Phase `install` (device only): onnxruntime-gpu from the carried payload, replacing the image's CPU wheel.

This process never imports onnxruntime: every check runs in a child Python, so what it sees is what a
fresh process of the runtime would see. The order also checks the runtime's actionable error for real:
with both wheels installed, asking for CUDA must raise the 'several onnxruntime wheels' ProviderError.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import payload
from checkkit import Run, Skip, python_env

CHECK_PROVIDERS = """
from gte_onnx.errors import ProviderError
from gte_onnx.session import resolve_providers
try:
    print("resolved", resolve_providers(["cuda"]))
except ProviderError as exc:
    print("ProviderError:", exc)
"""

ORT_INFO = """
import json, onnxruntime as ort, importlib.metadata as md
def has(d):
    try:
        return md.version(d)
    except md.PackageNotFoundError:
        return None
print(json.dumps({"version": ort.__version__, "file": ort.__file__, "providers": ort.get_available_providers(),
                  "device": ort.get_device(), "onnxruntime": has("onnxruntime"), "onnxruntime-gpu": has("onnxruntime-gpu")}))
"""


def _child(run: Run, code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """A fresh Python with the staged gte_onnx and the onnxruntime-gpu target dir on its path."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=python_env(run.settings))


def _pip(*args: str, timeout: int = 300) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"pip {' '.join(args[:2])} failed: {(done.stderr or done.stdout).strip()[-800:]}")


def _cpu_wheel_installed() -> bool:
    try:
        md.version("onnxruntime")
        return True
    except md.PackageNotFoundError:
        return False


def unpack_payload(run: Run) -> dict:
    folder = Path(run.settings.state) / "payload" / run.settings.payload
    missing = payload.missing_parts(folder)
    if missing:
        raise RuntimeError(f"payload {run.settings.payload} incomplete in {folder}, missing {missing}: a carrying "
                           "call was skipped, or the machine was replaced between calls (start again from call 1)")
    wheel = payload.unpack(folder, Path(run.settings.state) / "wheel")
    return {"wheel": str(wheel), "mb": round(wheel.stat().st_size / 1e6, 1)}, wheel.name


def install_wheel(run: Run) -> dict:
    wheel = Path(run.need("unpack_payload")["wheel"])
    site = Path(run.settings.state) / "site"
    marker = site / f".installed-{run.settings.payload}"  # slim and full wheels share one file name
    if marker.is_file():
        return {"cached": True, "site": str(site)}, "already installed"
    _pip("install", "--no-deps", "--no-index", "--no-compile", "--no-cache-dir", "--upgrade",
         "--target", str(site), str(wheel))
    marker.write_text("ok\n")
    return {"site": str(site)}, f"into {site}"


def both_wheels_error(run: Run) -> dict:
    """While the image's CPU wheel is still installed, the runtime must refuse CUDA with an actionable error."""
    if not _cpu_wheel_installed():
        raise Skip("the CPU onnxruntime is already uninstalled (an earlier call on this machine)")
    done = _child(run, CHECK_PROVIDERS)
    text = (done.stdout + done.stderr).strip()
    if "Several onnxruntime wheels" not in text:
        raise RuntimeError(f"expected the 'several onnxruntime wheels' ProviderError, got: {text[-600:]}")
    return {"message": text.splitlines()[-1]}, "ProviderError as expected"


def uninstall_cpu_wheel(run: Run) -> dict:
    if not _cpu_wheel_installed():
        return {"cached": True}, "not installed"
    _pip("uninstall", "-y", "onnxruntime")
    return {"uninstalled": "onnxruntime"}, "pip uninstall -y onnxruntime"


def verify_gpu_wheel(run: Run) -> dict:
    done = _child(run, ORT_INFO)
    if done.returncode:
        raise RuntimeError(f"import onnxruntime failed: {done.stderr.strip()[-800:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    if "CUDAExecutionProvider" not in info["providers"]:
        raise RuntimeError(f"onnxruntime-gpu offers no CUDAExecutionProvider: {info}")
    if info["onnxruntime"]:
        raise RuntimeError(f"the CPU onnxruntime {info['onnxruntime']} is still installed beside onnxruntime-gpu")
    return info, f"onnxruntime {info['version']} from {Path(info['file']).parent}"


def run_install(run: Run) -> None:
    if run.settings.dry_run:
        run.log("dry run: nothing to install (the CPU onnxruntime of this environment is used)")
        return
    run.stage("unpack_payload", unpack_payload)
    run.stage("install_wheel", install_wheel)
    run.stage("both_wheels_error", both_wheels_error)
    run.stage("uninstall_cpu_wheel", uninstall_cpu_wheel)
    run.stage("verify_gpu_wheel", verify_gpu_wheel)
