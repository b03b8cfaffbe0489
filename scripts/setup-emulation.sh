#!/usr/bin/env bash
# Idempotent set-up of Python interpreters that emulate other CPU families (qemu-user), so tests can run the
# runtime's int8/q4 models under them and compare vectors with native ones (see scripts/emulation/run.py).
#
#   scripts/setup-emulation.sh [VENV]     (VENV: the host venv, default $PWD/.venv)
#
# Builds once into $GTE_ONNX_EMU_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/gte-onnx-emu):
#   arm64/rootfs/            Debian bookworm arm64 minbase + python3 (debootstrap --foreign, unpacked without the
#                            second stage: nothing runs under emulation, binfmt_misc is not needed)
#   arm64/site/              aarch64 wheels (onnxruntime pinned to the host venv's version; numpy, tokenizers,
#                            huggingface_hub at the host's versions), installed by the host's pip
#   arm64/roots/<cpu>/       one tiny root per emulated CPU: proc/cpuinfo (an ARM one, made by
#                            scripts/emulation/arm64_cpuinfo.py under that CPU) + relative links to rootfs/usr, etc.
#                            qemu's -L maps the guest's /proc/cpuinfo there; with the host's x86 cpuinfo
#                            `import onnxruntime` segfaults.
#   x86/roots/haswell/       proc/cpuinfo only: the host's, less the flags the emulated Haswell lacks
#   families.json            {family: {argv, env, pythonpath, ...}}: x86-avx2 (host venv under -cpu Haswell),
#                            arm64 (cortex-a72, no dot product), arm64-dot (neoverse-n1, dot product).
# A stamp makes a second run return at once; bump VERSION when the build changes.
# Needs qemu-user and debootstrap (installed here when run as root) and, for the build only, deb.debian.org and
# PyPI. Everything downloaded stays in the cache folder.
set -euo pipefail
VERSION=1
HERE=$(cd "$(dirname "$0")" && pwd)
EMU=${GTE_ONNX_EMU_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gte-onnx-emu}
MIRROR=${GTE_ONNX_EMU_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
MODELS=(cortex-a72 neoverse-n1)

# -- tools ------------------------------------------------------------------------------------------------------
missing=()
for t in qemu-x86_64 qemu-aarch64 debootstrap; do
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-emulation: skipped, install qemu-user and debootstrap (missing: ${missing[*]})"
    exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq qemu-user debootstrap >/dev/null
fi
PATH=$PATH:/usr/sbin:/sbin
QEMU_X86=$(command -v qemu-x86_64)
QEMU_ARM=$(command -v qemu-aarch64)

# -- what the build depends on (cheap: no Python started) -------------------------------------------------------
VENV=$(cd "${1:-$PWD/.venv}" 2>/dev/null && pwd) || { echo "setup-emulation: no venv at ${1:-$PWD/.venv}" >&2; exit 1; }
VENV_PY=$VENV/bin/python
[ -x "$VENV_PY" ] || { echo "setup-emulation: $VENV_PY is not executable" >&2; exit 1; }
site_pkgs=("$VENV"/lib/python3*/site-packages)
host_version() {  # version of an installed distribution, from its dist-info folder name
  local d
  for d in "${site_pkgs[@]}"/"$1"-*.dist-info; do
    [ -d "$d" ] || continue
    d=${d##*/}; d=${d%.dist-info}; echo "${d#"$1"-}"; return
  done
}
ORT_VERSION=$(host_version onnxruntime)
[ -n "$ORT_VERSION" ] || ORT_VERSION=$(host_version onnxruntime_gpu)
[ -n "$ORT_VERSION" ] || { echo "setup-emulation: no onnxruntime in $VENV" >&2; exit 1; }
NUMPY_VERSION=$(host_version numpy)
TOKENIZERS_VERSION=$(host_version tokenizers)
HUB_VERSION=$(host_version huggingface_hub)
NCPU=$(sed -E 's/.*[-,]//' /sys/devices/system/cpu/possible 2>/dev/null || true)
if [[ "$NCPU" =~ ^[0-9]+$ ]]; then NCPU=$((NCPU + 1)); else NCPU=$(nproc); fi
HOST_CPU=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/.*: //' || true)
KEY="v$VERSION cpu=$HOST_CPU ort=$ORT_VERSION numpy=$NUMPY_VERSION tokenizers=$TOKENIZERS_VERSION hub=$HUB_VERSION ncpu=$NCPU venv=$VENV emu=$EMU"

STAMP=$EMU/.stamp
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -f "$EMU/families.json" ]; then
  echo "setup-emulation: up to date ($EMU)"
  exit 0
fi

mkdir -p "$EMU/logs"
exec 9>"$EMU/.lock"
flock 9  # concurrent runs (parallel test workers) wait for the first one
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -f "$EMU/families.json" ]; then
  echo "setup-emulation: up to date ($EMU)"
  exit 0
fi
START=$SECONDS
did=()
LOG=$EMU/logs/setup.log
: >"$LOG"
fail() { echo "setup-emulation: $1 failed; last lines of $LOG:" >&2; tail -n 25 "$LOG" >&2; exit 1; }

# -- 1. Debian arm64 userland -----------------------------------------------------------------------------------
ROOTFS=$EMU/arm64/rootfs
ROOTFS_KEY="v$VERSION $SUITE"
if [ ! -f "$ROOTFS/.gte-onnx-rootfs" ] || [ "$(cat "$ROOTFS/.gte-onnx-rootfs")" != "$ROOTFS_KEY" ]; then
  tmp=$EMU/arm64/rootfs.tmp
  rm -rf "$tmp"; mkdir -p "$EMU/arm64"
  # The runtime libraries the aarch64 wheels need: libstdc++6, libgcc-s1, zlib1g, libffi8 (python3 brings libc6,
  # libssl3, libexpat1, ...). minbase keeps it small; no second stage, so no maintainer scripts run.
  ( [ "$(id -u)" -eq 0 ] || { command -v fakeroot >/dev/null || { echo "debootstrap needs root or fakeroot"; exit 1; }; } ) >>"$LOG" 2>&1 \
    || { echo "setup-emulation: skipped, run as root or install fakeroot (debootstrap needs one of them)"; exit 0; }
  DB=(debootstrap); [ "$(id -u)" -eq 0 ] || DB=(fakeroot debootstrap)
  "${DB[@]}" --arch=arm64 --foreign --variant=minbase \
    --include=python3,libstdc++6,libgcc-s1,zlib1g,libffi8 \
    "$SUITE" "$tmp" "$MIRROR" >>"$LOG" 2>&1 || fail "debootstrap"
  # Unpack every downloaded package (the first stage extracted only the required ones).
  while read -r pkg deb; do
    dpkg-deb --fsys-tarfile "$tmp/$deb" | tar -x --keep-directory-symlink -C "$tmp" 2>>"$LOG" \
      || fail "unpacking $pkg"
  done <"$tmp/debootstrap/debpaths"
  [ -x "$tmp/usr/bin/python3" ] || fail "python3 in the arm64 userland"
  # Nothing here runs apt or reads docs: drop the downloaded .debs, package lists, docs and translations.
  rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/var/lib/apt/lists/"* "$tmp/usr/share/doc" "$tmp/usr/share/man" \
    "$tmp/usr/share/info" "$tmp/usr/share/locale" "$tmp/proc" "$tmp/dev"/* 2>/dev/null || true
  mkdir -p "$tmp/proc"
  echo "$ROOTFS_KEY" >"$tmp/.gte-onnx-rootfs"
  rm -rf "$ROOTFS"; mv "$tmp" "$ROOTFS"
  rm -rf "$EMU/arm64/roots"  # they point at the old userland's cpuinfo checks
  did+=("arm64 userland")
fi

# -- 2. aarch64 wheels, installed by the host's pip (no emulation) ----------------------------------------------
SITE=$EMU/arm64/site
pin() { [ -n "$2" ] && echo "$1==$2" || echo "$1"; }
REQS=("onnxruntime==$ORT_VERSION" "$(pin numpy "$NUMPY_VERSION")" "$(pin tokenizers "$TOKENIZERS_VERSION")"
      "$(pin huggingface_hub "$HUB_VERSION")")
SITE_KEY="v$VERSION ${REQS[*]}"
if [ ! -f "$SITE/.gte-onnx-site" ] || [ "$(cat "$SITE/.gte-onnx-site")" != "$SITE_KEY" ]; then
  tmp=$EMU/arm64/site.tmp
  rm -rf "$tmp"
  PIP=("$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-input --only-binary=:all:
       --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none
       --platform manylinux_2_36_aarch64 --platform manylinux_2_34_aarch64 --platform manylinux_2_31_aarch64
       --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_24_aarch64
       --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform linux_aarch64
       --platform any --target "$tmp")
  if ! PIP_CACHE_DIR=$EMU/pip-cache "${PIP[@]}" "${REQS[@]}" >>"$LOG" 2>&1; then
    # Only onnxruntime must match the host; the others fall back to any version with an aarch64 wheel.
    rm -rf "$tmp"
    PIP_CACHE_DIR=$EMU/pip-cache "${PIP[@]}" "onnxruntime==$ORT_VERSION" numpy tokenizers huggingface_hub \
      >>"$LOG" 2>&1 || fail "pip install of the aarch64 wheels"
  fi
  echo "$SITE_KEY" >"$tmp/.gte-onnx-site"
  rm -rf "$SITE"; mv "$tmp" "$SITE"
  did+=("aarch64 wheels (onnxruntime $ORT_VERSION)")
fi

# -- 3. one root per emulated CPU, each with its own ARM /proc/cpuinfo ------------------------------------------
ROOTS_KEY="v$VERSION ncpu=$NCPU site=$(cat "$SITE/.gte-onnx-site")"
for model in "${MODELS[@]}"; do
  root=$EMU/arm64/roots/$model
  if [ -f "$root/.gte-onnx-root" ] && [ "$(cat "$root/.gte-onnx-root")" = "$ROOTS_KEY" ]; then continue; fi
  tmp=$root.tmp
  rm -rf "$tmp"; mkdir -p "$tmp/proc"
  # Relative links, so the cache folder can move. Only the userland's system folders: the rest of the guest's
  # paths (/tmp, /root, /home, the rest of /proc) fall through to the host's.
  for entry in "$ROOTFS"/*; do
    name=${entry##*/}
    case $name in usr|etc|bin|sbin|lib|lib64|lib32|libx32) ln -s "../../rootfs/$name" "$tmp/$name" ;; esac
  done
  "$QEMU_ARM" -L "$tmp" -cpu "$model" "$tmp/usr/bin/python3" -I "$HERE/emulation/arm64_cpuinfo.py" "$NCPU" \
    >"$tmp/proc/cpuinfo.new" 2>>"$LOG" || fail "arm64_cpuinfo.py under $model"
  mv "$tmp/proc/cpuinfo.new" "$tmp/proc/cpuinfo"
  case $model in  # the hwcaps ORT's cpuinfo reads must be the ones this family stands for
    cortex-a72) ! grep -qw asimddp "$tmp/proc/cpuinfo" || fail "cortex-a72 without dot product (asimddp listed)" ;;
    neoverse-n1) grep -qw asimddp "$tmp/proc/cpuinfo" || fail "neoverse-n1 with dot product (asimddp missing)" ;;
  esac
  PYTHONPATH=$SITE PYTHONNOUSERSITE=1 PYTHONHOME='' "$QEMU_ARM" -L "$tmp" -cpu "$model" "$tmp/usr/bin/python3" -c \
    "import onnxruntime, numpy, tokenizers, huggingface_hub; assert onnxruntime.__version__ == '$ORT_VERSION', onnxruntime.__version__" \
    >>"$LOG" 2>&1 || fail "import onnxruntime under qemu-aarch64 -cpu $model"
  echo "$ROOTS_KEY" >"$tmp/.gte-onnx-root"
  rm -rf "$root"; mv "$tmp" "$root"
  did+=("$model root")
done

# -- 4. x86 AVX2 without VNNI: the host venv under qemu-x86_64 -cpu Haswell ---------------------------------------
# Without the system features TCG lacks (each would print a warning on every run). qemu passes the host's
# /proc/cpuinfo through (AVX-512 VNNI listed), so -L points at a root holding only proc/cpuinfo: the host's with
# the flags the emulated CPUID lacks taken out and its model name; every other path falls through to the host.
X86_CPU=Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm
X86_ROOT=$EMU/x86/roots/haswell
X86_KEY="v$VERSION $X86_CPU $HOST_CPU"
if [ ! -f "$X86_ROOT/.gte-onnx-root" ] || [ "$(cat "$X86_ROOT/.gte-onnx-root")" != "$X86_KEY" ]; then
  tmp=$X86_ROOT.tmp
  rm -rf "$tmp"; mkdir -p "$tmp/proc"
  "$QEMU_X86" -cpu "$X86_CPU" "$VENV_PY" -I - >"$tmp/proc/cpuinfo" 2>>"$LOG" <<'PY' || fail "x86 cpuinfo under Haswell"
# The host's /proc/cpuinfo as the emulated x86 CPU would show it: flags its CPUID lacks removed, its brand string.
import ctypes, mmap
# push rbx; mov eax, edi; mov ecx, esi; mov r8, rdx; cpuid; mov [r8], eax/ebx/ecx/edx; pop rbx; ret
code = bytes.fromhex("53" "89f8" "89f1" "4989d0" "0fa2" "418900" "41895804" "41894808" "4189500c" "5b" "c3")
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC); buf.write(code)
fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p)(
    ctypes.addressof(ctypes.c_char.from_buffer(buf)))
def cpuid(leaf, sub=0):
    out = (ctypes.c_uint32 * 4)(); fn(leaf, sub, ctypes.addressof(out)); return list(out)
BITS = {  # Linux flag name: (leaf, subleaf, register 0-3 = eax ebx ecx edx, bit)
    "pni": (1, 0, 2, 0), "pclmulqdq": (1, 0, 2, 1), "ssse3": (1, 0, 2, 9), "fma": (1, 0, 2, 12),
    "sse4_1": (1, 0, 2, 19), "sse4_2": (1, 0, 2, 20), "movbe": (1, 0, 2, 22), "popcnt": (1, 0, 2, 23),
    "aes": (1, 0, 2, 25), "xsave": (1, 0, 2, 26), "avx": (1, 0, 2, 28), "f16c": (1, 0, 2, 29),
    "rdrand": (1, 0, 2, 30), "pcid": (1, 0, 2, 17), "x2apic": (1, 0, 2, 21), "tsc_deadline_timer": (1, 0, 2, 24),
    "bmi1": (7, 0, 1, 3), "hle": (7, 0, 1, 4), "avx2": (7, 0, 1, 5), "bmi2": (7, 0, 1, 8), "erms": (7, 0, 1, 9),
    "invpcid": (7, 0, 1, 10), "rtm": (7, 0, 1, 11), "avx512f": (7, 0, 1, 16), "avx512dq": (7, 0, 1, 17),
    "rdseed": (7, 0, 1, 18), "adx": (7, 0, 1, 19), "avx512ifma": (7, 0, 1, 21), "clflushopt": (7, 0, 1, 23),
    "clwb": (7, 0, 1, 24), "avx512cd": (7, 0, 1, 28), "sha_ni": (7, 0, 1, 29), "avx512bw": (7, 0, 1, 30),
    "avx512vl": (7, 0, 1, 31), "avx512vbmi": (7, 0, 2, 1), "umip": (7, 0, 2, 2), "pku": (7, 0, 2, 3),
    "ospke": (7, 0, 2, 4), "avx512_vbmi2": (7, 0, 2, 6), "gfni": (7, 0, 2, 8), "vaes": (7, 0, 2, 9),
    "vpclmulqdq": (7, 0, 2, 10), "avx512_vnni": (7, 0, 2, 11), "avx512_bitalg": (7, 0, 2, 12),
    "avx512_vpopcntdq": (7, 0, 2, 14), "rdpid": (7, 0, 2, 22), "avx512_vp2intersect": (7, 0, 3, 8),
    "amx_bf16": (7, 0, 3, 22), "avx512_fp16": (7, 0, 3, 23), "amx_tile": (7, 0, 3, 24), "amx_int8": (7, 0, 3, 25),
    "avx_vnni": (7, 1, 0, 4), "avx512_bf16": (7, 1, 0, 5),
}
regs = {}
absent = {n for n, (l, s, r, b) in BITS.items() if not (regs.setdefault((l, s), cpuid(l, s))[r] >> b) & 1}
brand = b"".join(v.to_bytes(4, "little") for leaf in (0x80000002, 0x80000003, 0x80000004) for v in cpuid(leaf))
brand = brand.split(b"\0")[0].decode("ascii", "replace").strip()
out = []
for line in open("/proc/cpuinfo").read().splitlines():
    key, sep, value = line.partition(":")
    if key.strip() == "flags":
        line = key + sep + " " + " ".join(f for f in value.split() if f not in absent)
    elif key.strip() == "model name" and brand:
        line = key + sep + " " + brand
    out.append(line)
print("\n".join(out))
PY
  flags=$(grep -m1 '^flags' "$tmp/proc/cpuinfo")
  [[ " $flags " == *" avx2 "* && " $flags " != *" avx512"* ]] || fail "x86 cpuinfo (AVX2 without AVX-512 expected)"
  "$QEMU_X86" -L "$tmp" -cpu "$X86_CPU" "$VENV_PY" -c "import onnxruntime, numpy, tokenizers" >>"$LOG" 2>&1 \
    || fail "import onnxruntime under qemu-x86_64 -cpu Haswell"
  echo "$X86_KEY" >"$tmp/.gte-onnx-root"
  rm -rf "$X86_ROOT"; mv "$tmp" "$X86_ROOT"
  did+=("haswell root")
fi

# -- 5. families.json --------------------------------------------------------------------------------------------
"$VENV_PY" -I - "$EMU" "$QEMU_X86" "$QEMU_ARM" "$VENV_PY" "$ORT_VERSION" "$NCPU" "$VERSION" "$X86_CPU" "$X86_ROOT" <<'EOF' || fail "writing families.json"
import json, os, sys
emu, qemu_x86, qemu_arm, venv_py, ort, ncpu, version, x86_cpu, x86_root = sys.argv[1:]
site = os.path.join(emu, "arm64", "site")

def arm(model, note):
    root = os.path.join(emu, "arm64", "roots", model)
    return {"argv": [qemu_arm, "-L", root, "-cpu", model, os.path.join(root, "usr", "bin", "python3")],
            "env": {"PYTHONPATH": site, "PYTHONNOUSERSITE": "1"},
            "pythonpath": [site], "machine": "aarch64", "cpu": model, "note": note}

families = {
    "x86-avx2": {"argv": [qemu_x86, "-L", x86_root, "-cpu", x86_cpu, venv_py], "env": {}, "pythonpath": [],
                 "machine": "x86_64", "cpu": "Haswell",
                 "note": "the host venv (the project installed in it) on AVX2 without VNNI or AVX-512"},
    "arm64": arm("cortex-a72", "Debian bookworm python3 + aarch64 wheels; NEON without dot product"),
    "arm64-dot": arm("neoverse-n1", "Debian bookworm python3 + aarch64 wheels; NEON with dot product (udot/sdot)"),
}
doc = {
    "_about": "Interpreters emulating other CPU families (scripts/setup-emulation.sh, version " + version + "). "
              "Run argv + python arguments with env. For the arm64 families PYTHONPATH = the caller's entries "
              "(e.g. the project wheel unpacked by scripts/emulation/run.py install_wheel) + 'pythonpath'. "
              "Children of an emulated process run natively: do not re-exec sys.executable there.",
    "onnxruntime": ort, "ncpu": int(ncpu), "host_python": venv_py,
}
with open(os.path.join(emu, "families.json.tmp"), "w") as f:
    json.dump({**doc, **families}, f, indent=2)
    f.write("\n")
os.replace(os.path.join(emu, "families.json.tmp"), os.path.join(emu, "families.json"))
EOF

# Old versions' leftovers.
rm -rf "$EMU/arm64/rootfs.tmp" "$EMU/arm64/site.tmp" "$EMU"/arm64/roots/*.tmp "$EMU"/x86/roots/*.tmp
echo "$KEY" >"$STAMP"
summary=$(IFS=,; echo "${did[*]+"${did[*]}"}")
echo "setup-emulation: ready in $((SECONDS - START)) s (built: ${summary:-nothing}); x86-avx2 arm64 arm64-dot in $EMU/families.json"
