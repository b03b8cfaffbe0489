"""The CPU as /proc/cpuinfo describes it: model, the flags that decide int8/bf16 speed, physical cores.

One parser for the runtime (default thread count), `gte-onnx doctor` and the benchmark's machine record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# CPU flags (as /proc/cpuinfo spells them) that change which kernels ORT and PyTorch can use:
# VNNI speeds up int8 GEMMs, AVX512-BF16 / AMX bf16 matmuls.
INTERESTING_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


@dataclass(frozen=True)
class CpuInfo:
    model: str | None = None
    flags: frozenset[str] = field(default_factory=frozenset)
    physical_cores: int | None = None  # None when /proc/cpuinfo names no core ids (not Linux, some VMs)


def parse_cpuinfo(text: str) -> CpuInfo:
    """Model name, the first processor's flags and the distinct (physical id, core id) pairs."""
    model = None
    flags: frozenset[str] = frozenset()
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
        elif not key and core_id is not None:
            cores.add((physical_id or "0", core_id))
            physical_id = core_id = None
    if core_id is not None:
        cores.add((physical_id or "0", core_id))
    return CpuInfo(model, flags, len(cores) or None)


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> CpuInfo:
    """The parsed file; an empty CpuInfo where there is none (not Linux)."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return CpuInfo()
    return parse_cpuinfo(text)


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share a core's FPUs, so they do not help GEMMs)."""
    allowed = usable_cpus()
    count = read_cpuinfo().physical_cores or allowed
    return max(1, min(count, allowed))
