"""What the benchmark ran on: CPU model and the flags that decide int8/bf16 speed, cores, versions.

Numbers without the machine are not reproducible: int8 speed depends on VNNI, bf16 autocast on AMX or
AVX512-BF16, and a 2-core VM shared with other jobs is not a workstation. The load average at start is
recorded so that a reader can see the machine was busy.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from gte_onnx.inference.cpu import INTERESTING_FLAGS, read_cpuinfo, usable_cpus


def _total_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().total)


def _ort_info() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"version": None, "available_providers": []}
    return {"version": ort.__version__, "available_providers": list(ort.get_available_providers())}


def describe_machine() -> dict[str, Any]:
    """The machine record stored in the benchmark JSON."""
    cpu = read_cpuinfo()
    model, flags, physical = cpu.model, cpu.flags, cpu.physical_cores
    usable = usable_cpus()
    try:
        load = list(os.getloadavg())
    except (AttributeError, OSError):
        load = None
    ort = _ort_info()
    import numpy

    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "cpu_flags": {flag: flag in flags for flag in INTERESTING_FLAGS} if flags else {},
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical,
        "usable_cpus": usable,
        "memory_bytes": _total_memory_bytes(),
        "load_average_at_start": load,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "onnxruntime": ort["version"],
        "available_providers": ort["available_providers"],
    }


def short_label(machine: dict[str, Any]) -> str:
    """One line for the table header: CPU, cores, the int8/bf16 flags present, ORT version."""
    flags = [f for f, present in machine.get("cpu_flags", {}).items()
             if present and f in ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")]
    cpus = machine.get("usable_cpus") or machine.get("logical_cpus")
    parts = [str(machine.get("cpu_model")), f"{cpus} CPUs"]
    if flags:
        parts.append("+".join(flags))
    parts.append(f"onnxruntime {machine.get('onnxruntime')}")
    return ", ".join(parts)
