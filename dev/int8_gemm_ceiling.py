"""Does ONNX Runtime run its u8 x s8 integer GEMM on AMX here? The achieved int8 rate against the CPU's ceilings.

    python dev/int8_gemm_ceiling.py [--m 4096 --k 768 --n 3072] [--threads 1,2] [--repeat 10] [--kernels]
                                    [--compare] [--onnx MODEL.onnx --shape 32x128]

Times one large uint8 x int8 product through onnxruntime's CPU provider, as our int8 variant runs its
matrix products: `MatMulInteger` (int32 out) and `com.microsoft.MatMulIntegerToFloat` (the op of
model_int8.onnx: u8 activations with a zero point, s8 per-channel weights as an initializer, fp32 out),
4096x768 by 768x3072 by default (a BERT-base FFN up-projection over 32x128 tokens), at each --threads.
It prints the achieved int8 rate (MAC/s; TOPS = 2 ops per MAC) and its fraction of two per-core ceilings
at the clock /proc/cpuinfo reports:
  VNNI  AVX-512 VNNI, 2 x 512-bit vpdpbusd per cycle at most = 128 u8 x s8 MACs/cycle/core
        (each vpdpbusd: 16 lanes x 4 MACs = 64), i.e. the best any AVX-512 kernel can do;
  AMX   one TMUL per core, tdpbusd 16x16x64 = 16384 MACs per 16 cycles = 1024 MACs/cycle/core.
A rate above what the vpdpbusd microkernel reaches (--kernels) can only come from AMX. On Linux it
also reports whether the process holds AMX tile-data permission (arch_prctl ARCH_GET_XCOMP_PERM,
XFEATURE_XTILEDATA = bit 18) before and after importing onnxruntime (MLAS picks its kernels when the
library loads): MLAS (onnxruntime/core/mlas/lib/platform.cpp) switches
GemmU8S8Dispatch to MlasGemmU8S8DispatchAmx only when CPUID has AMX-TILE and AMX-INT8, XCR0 enables
XTILECFG|XTILEDATA, and MlasInitAMX()'s ARCH_REQ_XCOMP_PERM succeeds, so that bit turning on is MLAS
taking the AMX path (nothing else in this process requests it).

--kernels also compiles (gcc, -mavx512vnni -mamx-int8) and runs two register-only microkernels on one
core: a vpdpbusd loop (12 independent accumulators) and a tdpbusd loop (4 tiles), the VNNI and AMX rates
this core really reaches, per second of thread CPU time.

--compare runs the same measurement again in a child process with AMX denied to onnxruntime: an
LD_PRELOAD shim makes libc's syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, ...) fail, so MlasInitAMX()
returns false and MLAS keeps its AVX-512 VNNI u8s8 kernels; nothing else changes. --onnx FILE (repeatable)
also times whole models (inputs filled with ones, --shape BxS) in both processes.

Rates are given per second of wall time and per second of process CPU time ("GMAC/CPU-s", per core):
on a shared VM the cores are often busy with other jobs, and CPU time (which excludes time the
process waited) is what compares with a per-core ceiling. The ceilings use the /proc/cpuinfo clock
(a VM's nominal one; the core may turbo above it, so a rate can exceed "1.00 of VNNI" without AMX:
compare with the --kernels figures, measured on the same core).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VNNI_MACS_PER_CYCLE = 128  # 2 ports x vpdpbusd zmm (16 int32 lanes x 4 u8*s8 products)
AMX_MACS_PER_CYCLE = 1024  # tdpbusd: 16 x 16 x 64 MACs in 16 cycles on one TMUL


def cpu_mhz() -> float | None:
    try:
        values = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("cpu MHz")]
    except OSError:
        return None
    return max(values) if values else None


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":")[1].split())
    except OSError:
        pass
    return set()


def xtiledata_permitted() -> bool | None:
    """Whether this process holds AMX tile-data permission (Linux x86-64 only; None elsewhere)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    mask = ctypes.c_uint64(0)
    if libc.syscall(158, 0x1022, ctypes.byref(mask)) != 0:  # SYS_arch_prctl, ARCH_GET_XCOMP_PERM
        return None
    return bool(mask.value & (1 << 18))


def build_model(op: str, m: int, k: int, n: int, seed: int = 0) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
    a = helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])
    inits = [numpy_helper.from_array(weight, "b"), numpy_helper.from_array(np.array(128, np.uint8), "a_zp")]
    if op == "MatMulInteger":
        node = helper.make_node("MatMulInteger", ["a", "b", "a_zp"], ["y"])
        out = helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])
        opsets = [helper.make_opsetid("", 17)]
    else:  # MatMulIntegerToFloat, as model_int8.onnx uses it
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
                  numpy_helper.from_array(rng.random(n, dtype=np.float32) * 0.01, "b_scale")]
        node = helper.make_node("MatMulIntegerToFloat", ["a", "b", "a_scale", "b_scale", "a_zp"], ["y"],
                                domain="com.microsoft")
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    graph = helper.make_graph([node], op, [a], [out], inits)
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def time_op(op: str, m: int, k: int, n: int, threads: int, repeat: int) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of each run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(build_model(op, m, k, n), options, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(1).integers(0, 256, size=(m, k), dtype=np.uint8)
    session.run(None, {"a": a})  # warm-up (B prepacking, thread pool)
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        session.run(None, {"a": a})
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def time_model(path: str, shape: str, threads: int, repeat: int) -> tuple[list[float], list[float]]:
    """(wall, CPU seconds) of whole-model runs of an exported encoder on BxS ones (all-1 mask)."""
    import onnxruntime as ort

    batch, seq = (int(x) for x in shape.split("x"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {i.name: np.full((batch, seq), 1 if "mask" in i.name else 0 if "type" in i.name else 1000, np.int64)
            for i in session.get_inputs()}
    session.run(None, feed)
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        session.run(None, feed)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


# LD_PRELOAD shim for --deny-amx: arch_prctl(ARCH_REQ_XCOMP_PERM) through libc's syscall() fails, so
# MlasInitAMX() returns false and MLAS keeps its AVX-512 VNNI u8s8 kernels (everything else unchanged).
DENY_AMX_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
long syscall(long number, ...) {
  va_list ap; long a[6]; va_start(ap, number);
  for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
  va_end(ap);
  if (number == 158 && a[0] == 0x1023) { errno = EPERM; return -1; }
  static long (*real)(long, ...);
  if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
  return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
"""


def deny_amx_shim(folder: Path) -> Path:
    src, lib = folder / "deny_amx.c", folder / "deny_amx.so"
    src.write_text(DENY_AMX_C)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", str(src), "-o", str(lib), "-ldl"], check=True)
    return lib


KERNELS_C = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
struct cfg { uint8_t palette, start; uint8_t r[14]; uint16_t colsb[16]; uint8_t rows[16]; } __attribute__((packed));
int main(void) {
  long n = 40000000;
  __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(2);
  __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0,
          c8 = c0, c9 = c0, c10 = c0, c11 = c0;
  double t = now();
  for (long i = 0; i < n; i++) {
    c0 = _mm512_dpbusd_epi32(c0, a, b); c1 = _mm512_dpbusd_epi32(c1, a, b); c2 = _mm512_dpbusd_epi32(c2, a, b);
    c3 = _mm512_dpbusd_epi32(c3, a, b); c4 = _mm512_dpbusd_epi32(c4, a, b); c5 = _mm512_dpbusd_epi32(c5, a, b);
    c6 = _mm512_dpbusd_epi32(c6, a, b); c7 = _mm512_dpbusd_epi32(c7, a, b); c8 = _mm512_dpbusd_epi32(c8, a, b);
    c9 = _mm512_dpbusd_epi32(c9, a, b); c10 = _mm512_dpbusd_epi32(c10, a, b); c11 = _mm512_dpbusd_epi32(c11, a, b);
    __asm__ volatile("" : "+v"(a), "+v"(b));
  }
  t = now() - t;
  __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
              _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
  s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)));
  printf("vnni %.6e %d\n", 12.0 * 64 * n / t, _mm512_reduce_add_epi32(s) != 0);
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) { printf("amx denied\n"); return 0; }
  struct cfg c; memset(&c, 0, sizeof c); c.palette = 1;
  for (int i = 0; i < 8; i++) { c.rows[i] = 16; c.colsb[i] = 64; }
  _tile_loadconfig(&c);
  static int8_t A[16 * 64] __attribute__((aligned(64))), B[16 * 64] __attribute__((aligned(64)));
  static int32_t C[16 * 16] __attribute__((aligned(64)));
  memset(A, 1, sizeof A); memset(B, 2, sizeof B);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  _tile_loadd(4, A, 64); _tile_loadd(5, A, 64); _tile_loadd(6, B, 64); _tile_loadd(7, B, 64);
  long m = n / 8;
  t = now();
  for (long i = 0; i < m; i++) {
    _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
  }
  t = now() - t;
  _tile_stored(0, C, 64); _tile_release();
  printf("amx %.6e %d\n", 4.0 * 16 * 16 * 64 * m / t, C[0] != 0);
  return 0;
}
"""


def run_kernels() -> dict[str, float | str]:
    gcc = shutil.which("gcc")
    if not gcc:
        return {"error": "no gcc"}
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp, "k.c"), Path(tmp, "k")
        src.write_text(KERNELS_C)
        subprocess.run([gcc, "-O2", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-mamx-tile", "-mamx-int8",
                        str(src), "-o", str(exe)], check=True)
        proc = subprocess.run([str(exe)], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode} {proc.stderr.strip()[:200]}"}
    out: dict[str, float | str] = {}
    for line in proc.stdout.splitlines():
        name, value = line.split()[:2]
        out[name] = "denied" if value == "denied" else float(value)
    return out


def measure(args, label: str) -> None:
    before = xtiledata_permitted()  # before onnxruntime's import: MLAS sets its dispatch when it loads
    import onnxruntime as ort

    after_import = xtiledata_permitted()
    mhz = cpu_mhz()
    macs = args.m * args.k * args.n
    print(f"\n[{label}] AMX tile-data permission (ARCH_GET_XCOMP_PERM bit 18): before importing onnxruntime "
          f"{before}, after {after_import}"
          + ("  -> MLAS requested it: its u8s8 GEMM dispatch is the AMX one" if after_import and not before else
             "  -> MLAS did not get it: AVX-512 VNNI u8s8 kernels" if not after_import else ""))
    print(f"u8 x s8 GEMM {args.m}x{args.k} by {args.k}x{args.n}: {macs / 1e9:.2f} G MACs per run, "
          f"best and median of {args.repeat}; /CPU-s = MACs per second of process CPU time, per core")
    header = (f"{'op':<21} {'thr':>3} {'best ms':>8} {'med ms':>8} {'GMAC/s':>7} {'TOPS':>5} │ {'GMAC/CPU-s':>10} "
              f"{'of VNNI':>7} {'of AMX':>6}")
    print(header)
    print("-" * len(header))
    for op in args.ops.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            wall, cpu = time_op(op, args.m, args.k, args.n, threads, args.repeat)
            best, median = min(wall), statistics.median(wall)
            rate, per_cpu = macs / best, macs / min(cpu)
            vnni = amx = "-"
            if mhz:
                vnni = f"{per_cpu / (VNNI_MACS_PER_CYCLE * mhz * 1e6):.2f}"
                amx = f"{per_cpu / (AMX_MACS_PER_CYCLE * mhz * 1e6):.2f}"
            print(f"{op:<21} {threads:>3} {best * 1e3:>8.2f} {median * 1e3:>8.2f} {rate / 1e9:>7.0f} "
                  f"{2 * rate / 1e12:>5.2f} │ {per_cpu / 1e9:>10.0f} {vnni:>7} {amx:>6}")
    for path in args.onnx or []:
        for threads in (int(t) for t in args.threads.split(",")):
            wall, cpu = time_model(path, args.shape, threads, args.repeat)
            print(f"{Path(path).name} {args.shape}, {threads} thread(s): best {min(wall) * 1e3:.1f} ms, median "
                  f"{statistics.median(wall) * 1e3:.1f} ms wall; best {min(cpu) * 1e3:.1f} ms of CPU time")
    sys.stdout.flush()
    del ort


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=4096)
    parser.add_argument("--k", type=int, default=768)
    parser.add_argument("--n", type=int, default=3072)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--ops", default="MatMulInteger,MatMulIntegerToFloat")
    parser.add_argument("--kernels", action="store_true", help="also measure vpdpbusd / tdpbusd microkernels (gcc)")
    parser.add_argument("--compare", action="store_true",
                        help="also run the same products with AMX denied to onnxruntime (gcc; LD_PRELOAD shim)")
    parser.add_argument("--onnx", action="append", help="also time this whole model (e.g. model_int8.onnx) "
                        "on --shape ones; repeatable")
    parser.add_argument("--shape", default="32x128", help="batch x sequence for --onnx (default 32x128)")
    parser.add_argument("--deny-amx", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    mhz = cpu_mhz()
    flags = cpu_flags()
    if not args.deny_amx:
        print(f"{platform.machine()}, {os.cpu_count()} CPUs, clock {mhz} MHz (/proc/cpuinfo); flags: "
              + ", ".join(f for f in ("avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16") if f in flags))
        if mhz:
            print(f"ceilings per core at {mhz:.0f} MHz: AVX-512 VNNI {VNNI_MACS_PER_CYCLE * mhz / 1e3:.0f} GMAC/s "
                  f"({VNNI_MACS_PER_CYCLE} MACs/cycle), AMX {AMX_MACS_PER_CYCLE * mhz / 1e3:.0f} GMAC/s "
                  f"({AMX_MACS_PER_CYCLE} MACs/cycle); 1 MAC = 2 ops")
    measure(args, "AMX denied (LD_PRELOAD shim)" if args.deny_amx else "onnxruntime as installed")
    if args.deny_amx:
        return 0
    import onnxruntime as ort

    print(f"\nonnxruntime {ort.__version__}")
    if args.compare:
        with tempfile.TemporaryDirectory() as tmp:
            shim = deny_amx_shim(Path(tmp))
            env = {**os.environ, "LD_PRELOAD": str(shim)}
            child = [sys.executable, str(Path(__file__).resolve()), "--deny-amx", "--m", str(args.m), "--k",
                     str(args.k), "--n", str(args.n), "--threads", args.threads, "--repeat", str(args.repeat),
                     "--ops", args.ops, "--shape", args.shape]
            for path in args.onnx or []:
                child += ["--onnx", path]
            subprocess.run(child, env=env, check=True)
    if args.kernels:
        k = run_kernels()
        if "error" in k:
            print(f"microkernels: {k['error']}")
        else:
            parts = []
            for name, per_cycle in (("vnni", VNNI_MACS_PER_CYCLE), ("amx", AMX_MACS_PER_CYCLE)):
                value = k.get(name)
                if isinstance(value, float):
                    frac = f" ({value / (per_cycle * mhz * 1e6):.2f} of its ceiling)" if mhz else ""
                    parts.append(f"{name} {value / 1e9:.0f} GMAC/CPU-s{frac}")
                elif value is not None:
                    parts.append(f"{name} {value}")
            print("\nmicrokernels, 1 core, per second of thread CPU time: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
