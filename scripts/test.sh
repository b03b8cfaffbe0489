#!/usr/bin/env bash
# The test command: set up .venv if needed, build the wheel (the torch-free test installs it into an
# empty venv with only the [cpu] extra), then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
. .venv/bin/activate
rm -rf dist && python -m pip wheel --quiet --no-deps -w dist . >/dev/null
export GTE_ONNX_WHEEL="$(ls "$PWD"/dist/gte_onnx-*.whl)"
exec python -m pytest -p no:cacheprovider -q -ra "$@"
