"""`gte-onnx doctor [MODEL_DIR]`: what this machine offers the runtime, and what `variant="auto"` would pick.

It reports the installed onnxruntime wheels (more than one breaks CUDA) and their execution providers, the
CUDA libraries the CUDA provider loads (found in pip's nvidia-* packages or by the system loader, or
missing), the CPU flags that decide int8/bf16 speed, the default thread count, and for a model folder the
variant `auto` picks on each provider and why. The CPU's kernel family (gte_onnx.inference.kernel_family) comes from
one tiny CPU session; nothing here creates a CUDA context.
"""

from __future__ import annotations

import argparse
import ctypes.util
import importlib
import importlib.util
import json
import platform
import sys
from pathlib import Path
from typing import Any

from gte_onnx.inference.cpu import physical_cores, read_cpuinfo, usable_cpus
from gte_onnx.errors import GteOnnxError
from gte_onnx.folder.manifest import Manifest
from gte_onnx.inference import kernel_family
from gte_onnx.inference.kernel_family import FAMILIES, folder_records, route_for, verification
from gte_onnx.inference.session import CPU, CUDA, INSTALL_HINT, _cuda_device_present, _suits, installed_ort_wheels, variant_choice

# The libraries the CUDA provider cannot start without (cuBLASLt comes with cuBLAS).
CUDA_LIBRARIES = ("cudart", "cublas", "cublasLt", "cudnn")
# The flags doctor shows: VNNI for int8 GEMMs, AVX512-BF16 and AMX for bf16 and int8 tiles.
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


# ---- onnxruntime ------------------------------------------------------------------------------------
def onnxruntime_report() -> dict[str, Any]:
    wheels = installed_ort_wheels()
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        return {"wheels": wheels, "version": None, "providers": [], "cuda_version": None}
    return {
        "wheels": wheels,
        "version": getattr(ort, "__version__", None),
        "providers": list(ort.get_available_providers()),
        # onnxruntime-gpu records the CUDA it was built for; the CPU wheel leaves it empty.
        "cuda_version": getattr(ort, "cuda_version", "") or None,
    }


# ---- CUDA libraries ---------------------------------------------------------------------------------
def _nvidia_package_dirs() -> list[Path]:
    """The folders of pip's `nvidia` namespace package (nvidia-cublas-cu12, nvidia-cu13, nvidia-cudnn...)."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def find_cuda_library(name: str, package_dirs: list[Path] | None = None) -> dict[str, Any]:
    """Where lib<name>.so is: a pip nvidia-* package (what onnxruntime's preload_dlls loads) or a name the
    system loader resolves (ldconfig, LD_LIBRARY_PATH); {"found": False} when neither has it."""
    dirs = _nvidia_package_dirs() if package_dirs is None else package_dirs
    for base in dirs:
        hits = sorted(base.glob(f"*/lib/lib{name}.so*")) or sorted(base.glob(f"*/bin/*{name}64*.dll"))
        if hits:
            return {"found": True, "where": "pip nvidia package", "path": str(hits[0])}
    system = ctypes.util.find_library(name)
    if system:
        return {"found": True, "where": "system", "path": system}
    return {"found": False, "where": None, "path": None}


def cuda_report(ort: dict[str, Any]) -> dict[str, Any]:
    libraries = {name: find_cuda_library(name) for name in CUDA_LIBRARIES}
    return {
        "gpu_visible": _cuda_device_present(),
        "provider_available": CUDA in ort["providers"],
        "built_for_cuda": ort["cuda_version"],
        "libraries": libraries,
    }


# ---- CPU --------------------------------------------------------------------------------------------
def cpu_report() -> dict[str, Any]:
    info = read_cpuinfo()
    usable = usable_cpus()
    physical = info.physical_cores
    return {
        "model": info.model or platform.processor() or platform.machine(),
        "flags": {flag: flag in info.flags for flag in SHOWN_FLAGS} if info.flags else {},
        "physical_cores": physical,
        "usable_cpus": usable,
        # What OnnxModel uses when threads is not given.
        "default_threads": physical_cores(),
        "kernel_family": _family(),
    }


def _family() -> str | None:
    try:
        return kernel_family.detect_family()
    except GteOnnxError:  # onnxruntime missing: reported as a problem already
        return None


# ---- the folder -------------------------------------------------------------------------------------
def _rejection(manifest: Manifest, name: str, provider: str) -> str | None:
    """Why `auto` passes over a ranked variant on this provider; None when it qualifies."""
    variant = manifest.variants.get(name)
    if variant is None:
        return "in the speed ranking but not in the folder"
    if not variant.passes_gate():
        return "fidelity not measured" if "passed" not in variant.fidelity else "failed its fidelity gate"
    if not _suits(variant, provider):
        return f"made for {', '.join(variant.providers)}"
    return None


def explain_auto(manifest: Manifest, provider: str) -> dict[str, Any]:
    """The variant `auto` picks on `provider` (session.choose_variant itself), each ranked candidate with
    the gate verdict, and the reason in words."""
    ranking = list(manifest.speed_ranking.get(provider, ()))
    candidates = [{"variant": name, "rejected": _rejection(manifest, name, provider)} for name in ranking]
    try:
        choice = variant_choice(manifest, "auto", provider, _family() if provider == CPU else None)
        picked = choice.variant.name
        unverified = dict(choice.passed_over)
        for c in candidates:
            c["rejected"] = c["rejected"] or unverified.get(c["variant"])
    except GteOnnxError as exc:  # a folder with no usable variant: say so instead of failing the report
        return {"provider": provider, "ranking": ranking, "candidates": candidates, "picked": None, "why": str(exc)}
    first = next((c["variant"] for c in candidates if c["rejected"] is None), None)
    if first == picked:
        place = ranking.index(picked) + 1
        why = f"fastest measured variant that passes its gate (number {place} of {len(ranking)} in the speed ranking)"
    elif not ranking:
        why = "no speed ranking measured on this provider (gte-onnx bench --record): fp32, proven by the export"
    else:
        why = "no ranked variant qualifies: fp32, proven by the export"
    return {"provider": provider, "ranking": ranking, "candidates": candidates, "picked": picked, "why": why}


def folder_report(folder: Path) -> dict[str, Any]:
    manifest = Manifest.load(folder)
    family = _family()
    variants = {}
    for name, v in manifest.variants.items():
        variants[name] = {"file": v.file, "bytes": v.total_bytes, "passes_gate": v.passes_gate(),
                          "providers": list(v.providers), "measured_on": sorted(folder_records(v))}
        if family is not None:
            verdict = verification(v, family)
            variants[name]["cpu_route"] = route_for(v, family).name
            variants[name]["on_this_cpu"] = verdict.describe(family)
    return {"folder": str(folder), "task": manifest.task, "variants": variants,
            "auto": {p: explain_auto(manifest, p) for p in (CPU, CUDA)}}


# ---- report -----------------------------------------------------------------------------------------
def problems(report: dict[str, Any]) -> list[str]:
    """What stands between this machine and the runtime, each with its fix."""
    ort, cuda = report["onnxruntime"], report["cuda"]
    found: list[str] = []
    if ort["version"] is None:
        found.append(f"onnxruntime is not installed: {INSTALL_HINT}")
    if len(ort["wheels"]) > 1:
        found.append(f"several onnxruntime wheels are installed ({', '.join(ort['wheels'])}), which breaks CUDA: "
                     "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'gte-onnx[gpu]'")
    if cuda["gpu_visible"] and "onnxruntime-gpu" not in ort["wheels"]:
        found.append("an NVIDIA GPU is visible but onnxruntime-gpu is not installed: "
                     "pip uninstall -y onnxruntime && pip install 'gte-onnx[gpu]'")
    missing = [n for n, lib in cuda["libraries"].items() if not lib["found"]]
    if "onnxruntime-gpu" in ort["wheels"] and missing:
        found.append(f"onnxruntime-gpu is installed but lib{', lib'.join(missing)} cannot be found: "
                     "pip install 'onnxruntime-gpu[cuda,cudnn]' or install CUDA and cuDNN system-wide")
    return found


def collect(folder: Path | None = None) -> dict[str, Any]:
    from gte_onnx.defaults import VERSION

    ort = onnxruntime_report()
    report: dict[str, Any] = {
        "gte_onnx": VERSION,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "onnxruntime": ort,
        "cuda": cuda_report(ort),
        "cpu": cpu_report(),
    }
    if folder is not None:
        report["model"] = folder_report(folder)
    report["problems"] = problems(report)
    return report


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _text_machine(report: dict[str, Any]) -> list[str]:
    ort, cuda, cpu = report["onnxruntime"], report["cuda"], report["cpu"]
    lines = [f"gte-onnx {report['gte_onnx']}, Python {report['python']}, {report['platform']}",
             f"onnxruntime: {ort['version'] or 'not installed'}; wheels: {', '.join(ort['wheels']) or 'none'}",
             f"  providers: {', '.join(ort['providers']) or 'none'}",
             f"CUDA: GPU visible {_yes(cuda['gpu_visible'])}, CUDA provider {_yes(cuda['provider_available'])}, "
             f"onnxruntime built for CUDA {cuda['built_for_cuda'] or '-'}"]
    for name, lib in cuda["libraries"].items():
        lines.append(f"  lib{name:<9} {lib['path'] + ' (' + lib['where'] + ')' if lib['found'] else 'missing'}")
    flags = ", ".join(f"{f} {_yes(v)}" for f, v in cpu["flags"].items()) or "unknown"
    lines += [f"CPU: {cpu['model']}; {cpu['physical_cores'] or '?'} physical cores, {cpu['usable_cpus']} usable CPUs; "
              f"default threads {cpu['default_threads']}", f"  flags: {flags}"]
    family = cpu["kernel_family"]
    lines.append(f"  kernel family: {family or 'unknown'}" + (f" ({FAMILIES[family]})" if family in FAMILIES else ""))
    return lines


def _text_model(model: dict[str, Any]) -> list[str]:
    lines = [f"model folder {model['folder']} ({model['task']}):"]
    for name, v in model["variants"].items():
        gate = "passes its gate" if v["passes_gate"] else "gate failed or unmeasured"
        made_for = f", made for {', '.join(v['providers'])}" if v["providers"] else ""
        lines.append(f"  {name:<8} {v['file']:<24} {v['bytes'] / 1e6:8.1f} MB, {gate}{made_for}")
        if "on_this_cpu" in v:
            lines.append(f"           CPU route {v['cpu_route']}; {v['on_this_cpu']}")
    for provider, auto in model["auto"].items():
        lines.append(f"  auto on {provider}: {auto['picked'] or 'nothing'}: {auto['why']}")
        for c in auto["candidates"]:
            if c["rejected"]:
                lines.append(f"    passed over {c['variant']}: {c['rejected']}")
    return lines


def format_text(report: dict[str, Any]) -> str:
    lines = _text_machine(report)
    if "model" in report:
        lines += _text_model(report["model"])
    lines += [f"problem: {p}" for p in report["problems"]] or ["no problems found"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gte-onnx doctor",
        description="What this machine offers the runtime (onnxruntime wheels and providers, CUDA libraries, "
                    "CPU flags, threads) and which variant auto picks for a model folder on each provider.")
    parser.add_argument("model", nargs="?", type=Path, help="a model folder (optional)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    report = collect(args.model)
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    return 0
