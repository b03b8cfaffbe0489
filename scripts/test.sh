#!/usr/bin/env bash
# The test command: set up .venv and the CPU emulators if needed, build the wheel (the torch-free test installs it into an
# empty venv with only the [cpu] extra), then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
. .venv/bin/activate
# Emulated CPU families for tests/quantize/test_cpu_families.py (qemu-user; built once into ~/.cache/gte-onnx-emu).
bash scripts/setup-emulation.sh "$PWD/.venv"
rm -rf dist && python -m pip wheel --quiet --no-deps -w dist . >/dev/null
export GTE_ONNX_WHEEL="$(ls "$PWD"/dist/gte_onnx-*.whl)"
exec python -m pytest -p no:cacheprovider -q -ra "$@"
