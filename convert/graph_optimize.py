"""Offline ONNX Runtime graph optimisation: fuse once at export time, save, never redo it at load time.

ORT's "extended" level fuses LayerNorm, SkipLayerNorm, Gelu and MatMul+scale into com.microsoft ops that
have CPU and CUDA kernels. The "all" level would add layout transforms that only the CPU EP understands,
so it is never saved. After saving, the file is checked against PORTABLE_OPS: every op in it must be a
standard ONNX op or a contrib op with kernels beyond the CPU EP.
"""

from __future__ import annotations

from pathlib import Path

from gte_onnx.errors import GteOnnxError, missing_dependency
from gte_onnx.defaults import CPU

# com.microsoft ops that ORT implements on CPU and on CUDA (and ROCm/DirectML/WebGPU for most), so a
# saved graph that uses them still runs on those EPs. Anything else from that domain is refused.
PORTABLE_CONTRIB_OPS = frozenset(
    {
        "MultiHeadAttention",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "Gelu",
        "FastGelu",
        "BiasGelu",
        "FusedMatMul",
        "RotaryEmbedding",
        "BiasAdd",
    }
)


class GraphOptimizationError(GteOnnxError, RuntimeError):
    """ORT could not optimise the graph, or the optimised graph holds an op that is not portable."""

    code = "graph_optimization_failed"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise missing_dependency("onnx", "cpu", "Saving an ONNX graph") from None
    return onnx


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing_dependency("onnxruntime", "cpu", "Optimising an ONNX graph offline") from None
    return ort


def all_nodes(graph):
    """Every node of `graph` and of the subgraphs its nodes hold (If branches), depth first."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from all_nodes(subgraph)


def non_portable_ops(model) -> list[str]:
    """Ops of `model` (a ModelProto, If branches included) outside the standard domain that are not in
    PORTABLE_CONTRIB_OPS."""
    found = set()
    for node in all_nodes(model.graph):
        if node.domain in ("", "ai.onnx"):
            continue
        if node.domain == "com.microsoft" and node.op_type in PORTABLE_CONTRIB_OPS:
            continue
        found.add(f"{node.domain}:{node.op_type}")
    return sorted(found)


def op_counts(model) -> dict[str, int]:
    """{op_type (domain-qualified when not standard): count} of the graph, If branches included (the
    attention of every layer sits in one)."""
    counts: dict[str, int] = {}
    for node in all_nodes(model.graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def write_optimized(src: Path, onnx_path: Path) -> None:
    """Save the ONNX file `src` at `onnx_path` as ORT's CPU EP optimises it at the extended level, its
    weights (tensors of 1 KB and more) in `<onnx_path>.data`. ORT's own exceptions pass through.

    Weights beside the graph: ORT reads such a file straight into its buffers instead of parsing one
    protobuf message that holds them (quantize.graph.save_variant gives the figures)."""
    ort = _ort()
    data_name = onnx_path.name + ".data"
    (onnx_path.parent / data_name).unlink(missing_ok=True)  # no stale weights from an earlier run
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(onnx_path)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", data_name)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=[CPU])


def save_optimized(model, onnx_path: Path) -> dict[str, int]:
    """Run ORT's extended optimisations on `model` (a ModelProto) and save the result at `onnx_path`.

    Returns the op counts of the saved graph. Raises GraphOptimizationError when the saved graph contains
    an op that other execution providers could not run.
    """
    onnx = _onnx()
    onnx_path = Path(onnx_path)
    raw = onnx_path.with_name(onnx_path.name + ".unoptimized")
    try:
        onnx.save_model(model, str(raw))
        try:
            write_optimized(raw, onnx_path)
        except Exception as exc:  # ORT raises its own exception types; name the stage that failed
            raise GraphOptimizationError(f"onnxruntime could not load the exported graph: {exc}") from exc
    finally:
        raw.unlink(missing_ok=True)
    saved = onnx.load(str(onnx_path), load_external_data=False)
    bad = non_portable_ops(saved)
    if bad:
        onnx_path.unlink(missing_ok=True)
        raise GraphOptimizationError(f"the optimised graph holds ops other providers cannot run: {bad}")
    return op_counts(saved)
