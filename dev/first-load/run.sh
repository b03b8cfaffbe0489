#!/usr/bin/env bash
# The torch-free first load, end to end: a fresh virtual environment with only the wheel's [cpu] extra, a
# full-size checkpoint in float16 safetensors served from an offline hub cache, then Embedder(hub id) three
# times: the first load converts (numpy weights -> graph -> numpy-reference gate -> int8 + its gate -> CPU
# ranking) into the cache, the next ones read the cache.
#
#   bash dev/first-load/run.sh CHECKPOINT_DIR [WORK_DIR]
# CHECKPOINT_DIR: a transformers folder with model.safetensors (e.g. from `gte-onnx export
# Alibaba-NLP/gte-modernbert-base DIR --random-weights --save-checkpoint CHECKPOINT_DIR`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/../.." && pwd)
ckpt=$(cd "${1:?checkpoint folder}" && pwd); work=${2:-/tmp/gte-onnx-first-load}
rm -rf "$work"; mkdir -p "$work"
python3 -m pip wheel -q --no-deps -w "$work/dist" "$repo" >/dev/null 2>&1
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$(ls "$work"/dist/gte_onnx-*.whl)[cpu]"
if "$work/venv/bin/python" -c "import torch" 2>/dev/null; then echo "torch is importable: not a torch-free venv"; exit 1; fi
echo "fresh venv: import torch fails"
python3 "$here/to_fp16.py" "$ckpt" "$work/repo"
rm -f "$work/repo/gte-onnx-source.json"  # as on the hub: nothing marks the weights as random
"$work/venv/bin/python" "$here/fake_hub.py" "$work/repo" "$work/hub" Alibaba-NLP/gte-modernbert-base >/dev/null
export HF_HUB_CACHE="$work/hub" HF_HUB_OFFLINE=1 GTE_ONNX_CACHE="$work/gte-onnx-cache"
for i in 1 2 3; do
  echo "load $i: $("$work/venv/bin/python" "$here/load.py" Alibaba-NLP/gte-modernbert-base 2>/dev/null)"
done
