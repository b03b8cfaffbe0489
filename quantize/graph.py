"""Graph helpers shared by the recipes: load/save, normalising weight MatMuls, choosing weights by op type
and initializer shape (never by node name: the exporter's names change), and op counts for the recipe.
"""

from __future__ import annotations

import contextlib
import logging

import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gte_onnx.errors import ModelFolderError, missing_dependency

# Weights with fewer elements stay in float: tiny matrices (a 768x1 classifier, biases) gain nothing in
# size or speed and are the most sensitive to rounding.
MIN_WEIGHT_ELEMENTS = 4096
# Gather tables at least this large are embedding tables worth quantizing (gte's is 50368x768).
MIN_TABLE_ELEMENTS = 65536
# The embedding table's exact-row residual (embedding.py) is a MatMul weight, but no linear layer.
EXACT_ROWS_SUFFIX = "_exact_residual"
# protobuf cannot hold more than 2 GiB; keep a margin for the graph itself.
SINGLE_FILE_LIMIT = 1_800_000_000


def import_onnx():
    try:
        import onnx
    except ImportError:
        raise missing_dependency("onnx", "quantize", "gte-onnx quantize") from None
    return onnx


def load_model(path: str | os.PathLike):
    """The ONNX model with any external data read in (the recipes rewrite initializers in memory)."""
    onnx = import_onnx()
    path = Path(path)
    if not path.is_file():
        raise ModelFolderError(f"{path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # onnx raises DecodeError / OSError / ValidationError
        hint = (" (onnx refuses a weights file with several hard links: copy the folder with cp -r, not cp -l)"
                if "hard link" in str(exc) else "")
        raise ModelFolderError(f"cannot read ONNX model {path}: {exc}{hint}") from None


def save_model(model, path: str | os.PathLike) -> tuple[str, ...]:
    """Save `model` to `path`; weights go to `<file>.data` beside it only when protobuf's 2 GiB limit
    requires. Returns the external data file names (relative to the folder), for the manifest."""
    onnx = import_onnx()
    path = Path(path)
    data_name = path.name + ".data"
    (path.parent / data_name).unlink(missing_ok=True)
    if model.ByteSize() < SINGLE_FILE_LIMIT:
        onnx.save_model(model, str(path))
        return ()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return (data_name,)


def save_variant(model, path: str | os.PathLike, cpu_optimized: bool = False) -> tuple[str, ...]:
    """Save a variant's final file: the graph at `path`, its weights (tensors of 1 KB and more) in
    `<file>.data` beside it. Returns the data file names for the manifest (none if no tensor is that big).

    `cpu_optimized`: the graph is saved as ONNX Runtime's CPU EP optimises it at the extended level (the
    "all" level adds only NCHWc layouts, which transformers never use), so the runtime can load it with
    optimisations off (the recipe's session_optimization "none"): 0.08 s less session start on the int8 gte,
    and the numbers a user gets are those of the saved graph, whatever their onnxruntime's optimiser does
    (a SkipLayerNormalization fusion alone moves the int8 gte's output by up to 3.5e-3).

    Why beside: ONNX Runtime reads an external data file straight into its buffers, but must parse a graph
    that holds its weights inline as one protobuf message first. Measured on the full-size int8 gte
    (137 MB, 2 threads, fresh processes): session start 0.47-0.51 s with inline weights, 0.27-0.32 s with
    them beside the graph. `model` is left without its weights (onnx moves them out while writing)."""
    onnx = import_onnx()
    path = Path(path)
    data_name = path.name + ".data"
    data_path = path.parent / data_name
    data_path.unlink(missing_ok=True)
    if cpu_optimized:
        _save_cpu_optimized(model, path)
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    if not data_path.is_file():
        return ()
    os.chmod(data_path, path.stat().st_mode & 0o777)  # onnx creates it private (0600); match the graph's
    return (data_name,)


def _save_cpu_optimized(model, path: Path) -> None:
    from gte_onnx.convert.graph_optimize import write_optimized

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".optimize-") as scratch:
        raw = Path(scratch) / "unoptimized.onnx"
        save_model(model, raw)
        write_optimized(raw, path)


def op_counts(model) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def initializers(model) -> dict:
    return {init.name: init for init in model.graph.initializer}


def consumers(model) -> dict[str, list]:
    """tensor name -> nodes reading it (main graph only; these models have no subgraphs)."""
    out: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def name_unnamed_nodes(model) -> None:
    """ORT's quantizers select and exclude nodes by name; give every node a unique one."""
    taken = {node.name for node in model.graph.node if node.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{i}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)


def _is_float(init) -> bool:
    onnx = import_onnx()
    return init.data_type == onnx.TensorProto.FLOAT


def fold_weight_transposes(model) -> int:
    """Transpose(initializer) feeding a MatMul becomes a transposed initializer, so the weight is visible
    to the quantizers (some exporters emit `x @ W.T` this way). Returns how many were folded."""
    import_onnx()
    from onnx import numpy_helper

    inits = initializers(model)
    users = consumers(model)
    folded = 0
    for node in list(model.graph.node):
        if node.op_type != "Transpose" or node.input[0] not in inits or len(users.get(node.input[0], [])) != 1:
            continue
        init = inits[node.input[0]]
        if not _is_float(init) or len(init.dims) != 2:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        if perm != [1, 0]:
            continue
        array = numpy_helper.to_array(init).T.copy()
        new_init = numpy_helper.from_array(array, node.output[0])
        model.graph.initializer.remove(init)
        model.graph.initializer.append(new_init)
        model.graph.node.remove(node)
        folded += 1
    return folded


def unfuse_weight_fused_matmuls(model) -> int:
    """ORT's offline optimiser may turn `x @ W * alpha` into com.microsoft FusedMatMul, which no quantizer
    understands. FusedMatMul(x, W) with an initializer W and no transA becomes MatMul(x, W') (W' the
    transposed W when transB) followed by a Mul by alpha when alpha != 1. Returns how many were undone."""
    import_onnx()
    from onnx import helper, numpy_helper

    inits = initializers(model)
    users = consumers(model)
    undone = 0
    nodes = list(model.graph.node)
    new_nodes = []
    for node in nodes:
        if node.op_type != "FusedMatMul" or len(node.input) < 2 or node.input[1] not in inits:
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = inits[node.input[1]]
        if (attrs.get("transA", 0) or attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0)
                or len(weight.dims) != 2 or not _is_float(weight) or len(users[node.input[1]]) != 1):
            new_nodes.append(node)
            continue
        if attrs.get("transB", 0):
            array = numpy_helper.to_array(weight).T.copy()
            model.graph.initializer.remove(weight)
            model.graph.initializer.append(numpy_helper.from_array(array, weight.name))
        alpha = float(attrs.get("alpha", 1.0))
        if alpha == 1.0:
            new_nodes.append(helper.make_node("MatMul", list(node.input[:2]), list(node.output), name=node.name))
        else:
            mid = node.output[0] + "_unscaled"
            scale = node.name + "_alpha"
            model.graph.initializer.append(numpy_helper.from_array(np.array(alpha, dtype=np.float32), scale))
            new_nodes.append(helper.make_node("MatMul", list(node.input[:2]), [mid], name=node.name))
            new_nodes.append(helper.make_node("Mul", [mid, scale], list(node.output), name=node.name + "_scale"))
        undone += 1
    if undone:
        model.graph.ClearField("node")
        model.graph.node.extend(new_nodes)
    return undone


def prepare(model) -> dict[str, int]:
    """The normalisation every recipe starts from; returns what it changed, for the recipe record."""
    name_unnamed_nodes(model)
    changes = {
        "transposes_folded": fold_weight_transposes(model),
        "fused_matmuls_unfused": unfuse_weight_fused_matmuls(model),
    }
    name_unnamed_nodes(model)
    return changes


@dataclass(frozen=True)
class WeightUse:
    node: str  # node name (a handle for the quantizers, not a selection criterion)
    op_type: str
    weight: str  # initializer name
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def role(self) -> str:
        """By shape (K, N): "square" (attention projections when q, k, v are separate GEMMs, and the output
        projection), "expand" (K < N: MLP up, and q, k, v as one GEMM) or "contract" (MLP down: K > N,
        fed by the activation function's output, the least quantization-friendly)."""
        k, n = self.shape
        return "square" if k == n else ("expand" if k < n else "contract")


def weight_matmuls(model, op_types: Iterable[str] = ("MatMul",)) -> list[WeightUse]:
    """Nodes of `op_types` whose second input is a 2-D float initializer: the model's linear layers."""
    wanted = set(op_types)
    inits = initializers(model)
    out = []
    for node in model.graph.node:
        if node.op_type not in wanted or len(node.input) < 2:
            continue
        init = inits.get(node.input[1])
        if init is None or not _is_float(init) or len(init.dims) != 2 or init.name.endswith(EXACT_ROWS_SUFFIX):
            continue
        out.append(WeightUse(node.name, node.op_type, init.name, tuple(int(d) for d in init.dims)))
    return out


# Ops that pass token ids through unchanged in value (dtype or shape only).
_ID_PASSTHROUGH = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}


def _fed_by_input(model, tensor: str, graph_input: str) -> bool:
    producers = {out: node for node in model.graph.node for out in node.output}
    seen = 0
    while tensor != graph_input and seen < 16:
        node = producers.get(tensor)
        if node is None or node.op_type not in _ID_PASSTHROUGH:
            return False
        tensor = node.input[0]
        seen += 1
    return tensor == graph_input


def embedding_gathers(model, min_elements: int = MIN_TABLE_ELEMENTS, ids_input: str = "input_ids") -> list[WeightUse]:
    """Gather nodes looking up rows of a large 2-D float initializer by the graph's token ids: the token
    embedding table. Position and token-type tables are indexed by computed ids and are not returned:
    they are small, and their rows are shared by every input at the same position, so rounding them
    would add the same error to every embedding."""
    inits = initializers(model)
    out = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in inits or not _fed_by_input(model, node.input[1], ids_input):
            continue
        init = inits[node.input[0]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if axis != 0 or not _is_float(init) or len(init.dims) != 2:
            continue
        use = WeightUse(node.name, node.op_type, init.name, tuple(int(d) for d in init.dims))
        if use.elements >= min_elements:
            out.append(use)
    return out


def float_weight_bytes(model, min_elements: int) -> int:
    """Bytes of float32 MatMul weights at or above `min_elements` still in the graph (0 after quantizing)."""
    return sum(4 * use.elements for use in weight_matmuls(model) if use.elements >= min_elements)


def tool_versions() -> dict[str, str]:
    import importlib.metadata

    versions = {}
    for dist in ("onnx", "onnxruntime", "onnxruntime-gpu", "gte-onnx"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


# Advice onnxruntime.quantization gives on every call through logging.warning(), i.e. the root logger, at
# WARNING: it does not apply to graphs written here (shape inference is ours; a QDQ node in the input is
# intended). Matched by the start of the message, so any other warning still shows.
QUANTIZER_ADVICE = (
    "Please consider to run pre-processing before quantization",
    "Please consider pre-processing before quantization",
    "Please check if the model is already quantized",
)


def _not_quantizer_advice(record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith(QUANTIZER_ADVICE))


@contextlib.contextmanager
def quiet_quantizer_logs():
    """onnxruntime.quantization logs every node it skips at INFO, through its own logger and, once its
    modules have called logging.basicConfig, the root logger: keep both at WARNING while it works. Its
    advice lines (QUANTIZER_ADVICE), logged on the root logger at WARNING, are dropped by a filter on the
    root logger for the same span; other warnings pass."""
    root = logging.getLogger()
    loggers = [root, logging.getLogger("onnxruntime.quantization")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    root.addFilter(_not_quantizer_advice)
    try:
        yield
    finally:
        root.removeFilter(_not_quantizer_advice)
        for log, level in zip(loggers, levels):
            log.setLevel(level)
