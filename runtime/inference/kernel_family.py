"""Which integer arithmetic this CPU gives ONNX Runtime, the route each variant takes on it, and where the
variant's fidelity was verified.

Quantized variants do not compute the same numbers on every CPU (docs/cpu-support.md):
- x86 without VNNI runs ORT's u8 x s8 GEMM through `vpmaddubsw`, whose 16-bit pair sums saturate: the int8
  file's vectors move. ORT's own s8 -> u8 weight rewrite (session option `session.x64quantprecision`, applied
  by the extended graph optimiser) makes the integer GEMMs exact again: that is the "u8-weights" route. The
  whole file then computes the VNNI vectors only if its attention is plain ops (the int8 recipe's default):
  ORT's fused attention kernels add softmax sums in an ISA-specific order.
- ARM64 computes the integer GEMMs exactly, but per-token quantization ties round the other way, and q4's
  kernels differ on every family: those need their gate measured on the family itself.

The family is measured, not guessed from names: on x86 a tiny u8 x s8 MatMulInteger tells whether this
ORT's kernel saturates (qemu passes the host's /proc/cpuinfo through, so flags would lie under emulation);
on ARM64 the dot-product hwcap says which kernels MLAS picks.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from gte_onnx.defaults import cache_root
from gte_onnx.folder.integrity import read_json_dict
from gte_onnx.defaults import CPU

# The families, with what tells them apart (shown by `gte-onnx doctor` and docs/cpu-support.md).
FAMILIES: dict[str, str] = {
    "x86-vnni": "x86-64 whose u8 x s8 integer GEMM is exact (AVX-512 VNNI, AVX-VNNI or AMX)",
    "x86-avx2": "x86-64 whose u8 x s8 integer GEMM saturates (AVX2, or AVX-512 without VNNI)",
    "arm64-dot": "ARM64 with the dot-product instructions (asimddp: Neoverse, Cortex-A76+, Apple silicon)",
    "arm64": "ARM64 without dot product (Cortex-A72/A53: Raspberry Pi 4 and older)",
}

# Variant kinds whose arithmetic is the same on every family up to float rounding (fp32 agreed to 2e-7 on
# every emulated family): their own gate holds everywhere.
FLOAT_KINDS = ("fp32", "fp16", "bf16")

# Families that compute an arithmetic's outputs identically, through the route route_for() takes (measured
# under emulation by tests/quantize/test_cpu_families.py; figures in docs/cpu-support.md). A verification on
# one family of a group holds for the others. int8 with ORT's fused attention differs between AVX-512 and
# AVX2 by an ulp inside the softmax, which per-token quantization spreads (1e-3 on long inputs); with
# attention as plain ops (the recipe's `attention.form`) x86 agrees to the bit.
PLAIN_ATTENTION_INT8 = "int8+plain-attention"
PLAIN_ATTENTION_FORM = "plain ops"  # recipe.attention.form of a file quantize.attention fully rewrote
SAME_ARITHMETIC: dict[str, tuple[frozenset[str], ...]] = {
    PLAIN_ATTENTION_INT8: (frozenset({"x86-vnni", "x86-avx2"}), frozenset({"arm64", "arm64-dot"})),
    "int8": (frozenset({"arm64", "arm64-dot"}),),
}

LOCAL_RECORDS = "verified-families.json"


# ---- the family of this CPU -------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def detect_family() -> str:
    """This CPU's kernel family (a key of FAMILIES), or the machine name for an architecture not listed."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "x64"):
        return "x86-vnni" if u8s8_gemm_is_exact() else "x86-avx2"
    if machine in ("aarch64", "arm64"):
        return "arm64-dot" if _arm64_has_dot_product() else "arm64"
    return machine or "unknown"


def _arm64_has_dot_product() -> bool:
    if platform.system() == "Darwin":
        return True  # every Apple silicon core has it (FEAT_DotProd since M1)
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        return bool(libc.getauxval(16) & (1 << 20))  # AT_HWCAP, HWCAP_ASIMDDP
    except (OSError, AttributeError):
        return False


def u8s8_gemm_is_exact() -> bool:
    """Run a u8 x s8 MatMulInteger whose pair sums (255 * 127 * 2) overflow int16: exact on VNNI/AMX/ARM,
    saturated by `vpmaddubsw` on AVX2 and AVX-512 without VNNI."""
    import numpy as np

    from gte_onnx.inference.ort import import_onnxruntime

    ort = import_onnxruntime()
    m, k, n = 4, 64, 16
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(_matmul_integer_model(m, k, n), sess_options=options,
                                   providers=[CPU])
    out = session.run(None, {"a": np.full((m, k), 255, dtype=np.uint8)})[0]
    return bool((out == 255 * 127 * k).all())


def _matmul_integer_model(m: int, k: int, n: int) -> bytes:
    """The serialized ONNX model y = MatMulInteger(a: uint8[m, k], b: int8[k, n] all 127), written with a
    few protobuf fields by hand: importing onnx would add half a second to every load."""
    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    def key(number: int, wire: int) -> bytes:
        return varint(number << 3 | wire)

    def num(number: int, value: int) -> bytes:
        return key(number, 0) + varint(value)

    def msg(number: int, payload: bytes | str) -> bytes:
        data = payload.encode() if isinstance(payload, str) else payload
        return key(number, 2) + varint(len(data)) + data

    def value_info(name: str, elem_type: int, dims: tuple[int, ...]) -> bytes:
        shape = b"".join(msg(1, num(1, d)) for d in dims)  # TensorShapeProto.dim { dim_value }
        tensor_type = num(1, elem_type) + msg(2, shape)
        return msg(1, name) + msg(2, msg(1, tensor_type))

    uint8, int8, int32 = 2, 3, 6
    node = msg(1, "a") + msg(1, "b") + msg(2, "y") + msg(4, "MatMulInteger")
    weight = num(1, k) + num(1, n) + num(2, int8) + msg(8, "b") + msg(9, bytes([127]) * (k * n))
    graph = (msg(1, node) + msg(2, "u8s8_probe") + msg(5, weight)
             + msg(11, value_info("a", uint8, (m, k))) + msg(12, value_info("y", int32, (m, n))))
    return num(1, 8) + msg(8, num(2, 13)) + msg(7, graph)  # ir_version 8, opset 13, graph


# ---- the route a variant takes ----------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """How a variant runs on a family: extra session settings, and whether its arithmetic then equals
    another family's (so that family's fidelity measurement holds here)."""

    name: str
    session_config: Mapping[str, str] = field(default_factory=dict)
    # The least graph optimisation level the route needs (ORT applies the s8 -> u8 rewrite at "extended").
    optimization: str | None = None
    note: str = ""


NATIVE = Route("native")
U8_WEIGHTS = Route(
    "u8-weights",
    {"session.x64quantprecision": "1"},
    "extended",
    "ORT rewrites the s8 weights to u8 (zero point 128) at load, so no 16-bit sum saturates",
)


def variant_kind(variant) -> str:
    """fp32, fp16, int8, q4, ...: the recipe's kind, else the gate kind measured, else the name."""
    return str(variant.recipe.get("kind") or variant.fidelity.get("gate_kind") or variant.name)


def arithmetic(variant) -> str:
    """The variant's kind, qualified where the file's form decides which families agree (SAME_ARITHMETIC)."""
    kind = variant_kind(variant)
    attention = variant.recipe.get("attention")
    if kind == "int8" and isinstance(attention, Mapping) and attention.get("form") == PLAIN_ATTENTION_FORM:
        return PLAIN_ATTENTION_INT8
    return kind


def route_for(variant, family: str) -> Route:
    if variant_kind(variant) == "int8" and family == "x86-avx2":
        return U8_WEIGHTS
    return NATIVE


def same_arithmetic(kind: str, a: str, b: str) -> bool:
    """True when `kind` (an `arithmetic()`) computes the same outputs on families a and b (through
    route_for's routes)."""
    if a == b or kind in FLOAT_KINDS:
        return True
    return any(a in group and b in group for group in SAME_ARITHMETIC.get(kind, ()))


def covered(kind: str, measured_on: str) -> list[str]:
    """The other known families a measurement on `measured_on` holds for (same arithmetic)."""
    return [f for f in FAMILIES if f != measured_on and same_arithmetic(kind, f, measured_on)]


# ---- where a variant's fidelity was verified --------------------------------------------------------
@dataclass(frozen=True)
class Verification:
    """A variant's standing on a family: `state` is "verified", "failed" or "unverified"; `measured_on` the
    family whose measurement counts here; `where` "folder" (the manifest) or "local" (this machine's cache)."""

    state: str
    measured_on: str | None = None
    where: str | None = None
    record: Mapping[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.state == "verified"

    def describe(self, family: str) -> str:
        if self.state == "unverified":
            return f"not verified on {family}"
        how = "" if self.measured_on == family else f" (measured on {self.measured_on}, same arithmetic)"
        place = "recorded in the folder" if self.where == "folder" else "measured on this machine"
        return f"{'verified' if self.verified else 'FAILED its gate'} on {family}{how}, {place}"


def folder_records(variant) -> dict[str, Mapping[str, Any]]:
    """family -> fidelity record, from the manifest: the build's own measurement plus `verified_on`."""
    records: dict[str, Mapping[str, Any]] = {}
    family = variant.fidelity.get("kernel_family")
    if isinstance(family, str) and "passed" in variant.fidelity:
        records[family] = variant.fidelity
    for name, record in variant.verified_on.items():
        records.setdefault(name, record)
    return records


def verification(variant, family: str, local: Mapping[str, Mapping[str, Any]] | None = None) -> Verification:
    """Whether `variant`'s fidelity gate has been measured on `family` (or a family of the same arithmetic)."""
    kind = arithmetic(variant)
    sources = [("folder", folder_records(variant))]
    sources.append(("local", local_records(variant.sha256) if local is None else local))
    for where, records in sources:
        for measured_on, record in records.items():
            if same_arithmetic(kind, family, measured_on) and "passed" in record:
                state = "verified" if record["passed"] is True else "failed"
                return Verification(state, measured_on, where, record)
    if kind in FLOAT_KINDS and "passed" in variant.fidelity:
        return Verification("verified" if variant.passes_gate() else "failed", family, "folder", variant.fidelity)
    return Verification("unverified")


def local_records(sha256: str, cache_dir: str | os.PathLike | None = None) -> dict[str, Mapping[str, Any]]:
    """family -> record of the gate measurements `gte-onnx verify` made on this machine for one variant
    file (keyed by its sha256, so a changed file is never covered)."""
    entries = read_json_dict(cache_root(cache_dir) / LOCAL_RECORDS).get(sha256, {})
    return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}


def save_local_record(sha256: str, family: str, record: Mapping[str, Any],
                      cache_dir: str | os.PathLike | None = None) -> Path:
    path = cache_root(cache_dir) / LOCAL_RECORDS
    data = read_json_dict(path)
    data.setdefault(sha256, {})[family] = dict(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".families.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)
    return path
