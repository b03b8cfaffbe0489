#!/usr/bin/env bash
# Run HERE, on the CPU machine, before a session's device calls (no device time is spent):
#   1. download the onnxruntime-gpu wheel for the lent machine (its Python and CUDA major, below);
#   2. cut it into parts the device tool can carry (64 MiB a call, the working tree included):
#        slim  CUDA provider pruned to the GPU's own cubins (sm_90): 2 calls   <- the plan to use
#        full  the wheel as published: 4 calls                                 <- fallback if slim fails
#   3. print the exact `run` calls, with their carry lists, in the order to make them.
#
#   bash scripts/device/prepare.sh                  # both flavours (4 min of CPU; reused while they fit)
#   FLAVOURS=slim bash scripts/device/prepare.sh    # only the slim one
#
# The lent machine, as /work/.library/device/KINDS.md describes it (2026-11): Python 3.12, torch 2.11 built
# for CUDA 13 (cu130) with the nvidia-* CUDA 13 / cuDNN 9 wheels, a CPU onnxruntime 1.30, and tokenizers,
# numpy, transformers, onnx, onnxscript, huggingface_hub: onnxruntime-gpu is the only package to carry.
# Override with DEVICE_PYTHON, DEVICE_CUDA_MAJOR, KEEP_ARCH (sm number), ORT_GPU_VERSION if that changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEVICE_PYTHON=${DEVICE_PYTHON:-3.12}
DEVICE_CUDA_MAJOR=${DEVICE_CUDA_MAJOR:-13}
KEEP_ARCH=${KEEP_ARCH:-90}
FLAVOURS=${FLAVOURS:-slim full}
PAYLOAD=device-payload
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

# What is under device-payload/ must travel only when a call names it in carry: it has to be ignored.
for path in "$PAYLOAD" device-out; do
  if ! git check-ignore -q "$path/x"; then
    mkdir -p .git/info
    echo "/$path/" >> .git/info/exclude
    echo "note: added /$path/ to .git/info/exclude (it belongs in .gitignore)"
  fi
done

LOCAL=$($PY -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')
VERSION=${ORT_GPU_VERSION:-$($PY - "$LOCAL" <<'EOF'
# The newest onnxruntime-gpu on the index that is not newer than this project's onnxruntime.
import re, subprocess, sys
try:
    from packaging.version import Version
except ImportError:
    from pip._vendor.packaging.version import Version
out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "onnxruntime-gpu"],
                     capture_output=True, text=True).stdout
found = re.search(r"Available versions: (.*)", out)
if not found:
    sys.exit("cannot list onnxruntime-gpu versions (pip index versions onnxruntime-gpu); set ORT_GPU_VERSION")
ok = [v.strip() for v in found.group(1).split(",") if Version(v.strip()) <= Version(sys.argv[1])]
print(max(ok, key=Version))
EOF
)}
[ "$VERSION" = "$LOCAL" ] || echo "note: onnxruntime-gpu $LOCAL is not on the index; using $VERSION (newest <= $LOCAL)"

mkdir -p "$PAYLOAD/wheels"
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$PAYLOAD/wheels" "onnxruntime-gpu==$VERSION"
WHEEL=$(ls "$PAYLOAD"/wheels/onnxruntime_gpu-"$VERSION"-cp"${DEVICE_PYTHON/./}"-*.whl | head -1)

# The wheel must be built for the device's CUDA major (its 'cuda' extra names nvidia-cuda-runtime~=MAJOR).
CUDA_MAJOR=$($PY - "$WHEEL" <<'EOF'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    text = z.read(meta).decode()
m = re.search(r"^Requires-Dist: nvidia-cuda-runtime(?:-cu\d+)?\s*[~=><]+\s*(\d+)", text, re.M)
print(m.group(1) if m else "unknown")
EOF
)
if [ "$CUDA_MAJOR" != "$DEVICE_CUDA_MAJOR" ]; then
  echo "error: $WHEEL is built for CUDA $CUDA_MAJOR, the lent machine has CUDA $DEVICE_CUDA_MAJOR" >&2
  exit 1
fi
echo "wheel: $WHEEL (CUDA $CUDA_MAJOR, Python $DEVICE_PYTHON)"

for flavour in $FLAVOURS; do
  $PY scripts/device/payload.py build "$WHEEL" --flavour "$flavour" --out "$PAYLOAD/$flavour" --keep-arch "$KEEP_ARCH"
done

for flavour in $FLAVOURS; do
  echo
  [ "$flavour" = slim ] && echo "== PLAN A (slim payload): use this" || echo "== PLAN B ($flavour payload): only if plan A's ort phase reports that a CUDA kernel cannot launch"
  $PY scripts/device/payload.py plan "$PAYLOAD/$flavour"
done
