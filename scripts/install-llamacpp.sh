#!/usr/bin/env bash
# The [llamacpp] extra of `gte-onnx bench --peers llamacpp`, built from source into .venv:
# llama-cpp-python compiles llama.cpp on install (PyPI has no CPU wheel; GGML_NATIVE tunes it to this CPU),
# and llama.cpp's GGUF converter (convert_hf_to_gguf.py with its conversion/ package and gguf-py), which the
# wheel does not ship, is copied from the same sdist's vendor/llama.cpp to .venv/share/gte-onnx/llama.cpp,
# where bench/llamacpp_peer.py looks for it (LLAMA_CPP_CONVERTER=/path/to/convert_hf_to_gguf.py overrides).
# Cost measured on a 2-core VM shared with other jobs: 15 min 15 s wall (6.6 CPU-minutes user, 0.7 system,
# 0.68 GB peak RSS) for the wheel, so it is not part of setup-env.sh (limit ~5 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
. .venv/bin/activate
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work"
tar xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
src="$work/llama_cpp_python-$VERSION"
if ! python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    python -m pip install --disable-pip-version-check "$src"
fi
dest=.venv/share/gte-onnx/llama.cpp
rm -rf "$dest" && mkdir -p "$dest"
cp -r "$src/vendor/llama.cpp/convert_hf_to_gguf.py" "$src/vendor/llama.cpp/conversion" "$src/vendor/llama.cpp/gguf-py" "$dest/"
echo "llama-cpp-python $VERSION installed; converter in $dest"
