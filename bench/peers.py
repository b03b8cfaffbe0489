"""Peers: what users would otherwise run, built from the same checkpoint and measured in the same run.

    gte-onnx bench DIR --torch auto --peers optimum,openvino [--peers-cache DIR]

Each family yields two contenders, the way sentence-transformers' backends make them:
  optimum   optimum-fp32: the plain ONNX export of the transformers model (torch.onnx.export, opset 17,
            dynamic batch and length, as optimum's exporter does) in a default ONNX Runtime session;
            optimum-int8: its dynamic int8 (what `export_dynamic_quantized_onnx_model(model, "avx512_vnni")`
            makes: QOperator, u8 activations, symmetric per-channel s8 weights, MatMul and Add);
  openvino  openvino: the model converted by OpenVINO, in its default precision (bf16 on CPUs with
            avx512_bf16 or AMX, else fp32);
            openvino-int8: NNCF static int8 (what `export_static_quantized_openvino_model` makes: the
            transformer preset, 300 calibration texts of up to 384 tokens; here STS-B sentences, unpadded).
  llamacpp  llamacpp-f16 / -q8_0 / -q4_k_m: GGUF files made by llama.cpp's convert_hf_to_gguf.py and
            llama_model_quantize, run by llama-cpp-python's embedding path (bench/llamacpp_peer.py);
  hub       hub-fp16 / -int8 / -uint8 / -quantized / -q4 / -q4f16 / -bnb4: the transformers.js files
            (onnx/model_<mode>.onnx) made as that project's scripts/quantize.py makes them, `gte-onnx
            import`ed and run on our runtime (bench/hub_peer.py).

Peers are built once, in a worker process of their own (torch is needed there only), into a cache folder
keyed on the checkpoint and the library versions, so a rerun only loads them. This module is torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .hub_peer import HUB_MODES
from .llamacpp_peer import LLAMACPP_TYPES

PEER_FAMILIES: dict[str, tuple[str, ...]] = {
    "optimum": ("optimum-fp32", "optimum-int8"),
    "openvino": ("openvino", "openvino-int8"),
    "llamacpp": tuple(LLAMACPP_TYPES),
    "hub": tuple(HUB_MODES),
}
# The engine each peer runs on, for the table's EP column and the worker ("gte-onnx": our runtime, CPU).
PEER_ENGINE = {"optimum-fp32": "onnxruntime", "optimum-int8": "onnxruntime",
               "openvino": "openvino", "openvino-int8": "openvino",
               **{name: "llama.cpp" for name in LLAMACPP_TYPES}, **{name: "gte-onnx" for name in HUB_MODES}}
PEER_INSTALL_HINT = ("pip install 'gte-onnx[peers]'  (openvino, nncf, onnxslim; the optimum and hub peers need only "
                     "torch + onnxruntime); llama.cpp: bash scripts/install-llamacpp.sh")


def parse_peers(text: str | Sequence[str] | None) -> list[str]:
    """'optimum,openvino' (families) or peer names -> the peer names to measure, in a stable order."""
    if not text:
        return []
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    names: list[str] = []
    for item in items:
        if item in PEER_FAMILIES:
            chosen = PEER_FAMILIES[item]
        elif item in PEER_ENGINE:
            chosen = (item,)
        else:
            raise InvalidInputError(
                f"--peers: unknown peer {item!r}; choose families {sorted(PEER_FAMILIES)} or peers {sorted(PEER_ENGINE)}"
            )
        names += [n for n in chosen if n not in names]
    return names


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gte-onnx" / "bench-peers"


def cache_folder(root: str | Path | None, torch_spec: Mapping[str, Any], versions: Mapping[str, str]) -> Path:
    """One folder per checkpoint and library versions: a rebuild happens only when either changes.

    A checkpoint folder is identified by its path and its files' sizes and mtimes, so replacing the
    weights invalidates the cache."""
    identity: dict[str, Any] = {"spec": dict(torch_spec), "versions": dict(versions)}
    model = Path(str(torch_spec.get("model", "")))
    if model.is_dir():
        identity["files"] = sorted(
            (p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in model.iterdir() if p.is_file()
        )
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return (Path(root) if root else default_cache_root()) / key


def peer_versions() -> dict[str, str]:
    """Versions that change what a build makes (read from package metadata: nothing is imported)."""
    import importlib.metadata

    out = {}
    for dist in ("torch", "transformers", "onnxruntime", "onnx", "openvino", "nncf", "llama_cpp_python", "onnxslim"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out
