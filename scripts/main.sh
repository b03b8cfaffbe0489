#!/usr/bin/env bash
# The main job: export gte-modernbert-base (real weights when the hub answers, else LOUDLY synthetic),
# quantize, parity, benchmark, and embed the model card's example texts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
. .venv/bin/activate
exec python scripts/main_job.py "$@"
