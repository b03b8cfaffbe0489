"""The hub peers: the transformers.js files (`onnx/model_<mode>.onnx`) made from the checkpoint the way that
project's conversion scripts make them, then `gte-onnx import`ed and run on our runtime, as a user of
those files would.

Followed: huggingface/transformers.js scripts/quantize.py, scripts/convert.py and scripts/utils.py at
commit c6b7edfdac1cd6b21e34c97991d1be3d1f180ddf (the last version of scripts/quantize.py; the scripts
were removed from the repository in 4e1b4b653fddb50d76f6740cbd5f16f8f98515f1):
  - convert.py exports with optimum's main_export (fp32), runs onnxslim on it, and quantizes with
    per_channel = reduce_range = True for every model type outside NO_PER_CHANNEL_REDUCE_RANGE_MODELS
    (bert and modernbert are outside it);
  - int8 / uint8 / q8 ("quantized"): ONNXQuantizer, IntegerOps (dynamic), u8 activations, weights QInt8
    (int8, and q8 for graphs without Conv/GroupQueryAttention/MultiHeadAttention) or QUInt8 (uint8),
    op types = IntegerOpsRegistry, EnableSubgraph and MatMulConstBOnly;
  - q4: MatMulNBitsQuantizer, block_size 32, symmetric, accuracy_level unset;
  - q4f16: the q4 graph converted to float16;
  - bnb4: MatMulBnb4Quantizer, block_size 64, NF4;
  - fp16: float16.convert_float_to_float16(keep_io_types=True, op_block_list=their DEFAULT_OP_BLOCK_LIST).
    transformers.js carries its own copy of that module (scripts/float16.py, derived from
    onnxconverter-common); here onnxruntime.transformers.float16 (the same origin) is called with their
    block list, Cast included;
  - every file goes through utils.check_and_save_model: onnx.checker.check_model(full_check=True), then
    onnx.save.
The fp32 graph is the optimum peer's export (bench's optimum-fp32: torch.onnx.export as optimum's
exporter does, opset 17), slimmed with onnxslim when it is installed (recorded in peer.json).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path
from typing import Any

TRANSFORMERS_JS_COMMIT = "c6b7edfdac1cd6b21e34c97991d1be3d1f180ddf"
# Peer name -> transformers.js mode (QuantMode value); the file is onnx/model_<suffix>.onnx.
HUB_MODES = {
    "hub-fp16": "fp16", "hub-int8": "int8", "hub-uint8": "uint8", "hub-quantized": "q8",
    "hub-q4": "q4", "hub-q4f16": "q4f16", "hub-bnb4": "bnb4",
}
# QUANTIZE_SUFFIX_MAPPING: q8 is saved as model_quantized.onnx; the others under their own name.
SUFFIX = {"q8": "quantized"}
# The variant name `gte-onnx import` gives each file (convert.onnx_import.TRANSFORMERS_JS).
VARIANT = {"fp16": "fp16", "int8": "int8", "uint8": "uint8", "q8": "quantized", "q4": "q4", "q4f16": "q4f16",
           "bnb4": "bnb4"}
QUINT8_OPS = ("Conv", "GroupQueryAttention", "MultiHeadAttention")
# transformers.js scripts/float16.py DEFAULT_OP_BLOCK_LIST at the commit above.
FP16_OP_BLOCK_LIST = [
    "ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer", "FeatureVectorizer",
    "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor", "Normalizer", "OneHotEncoder",
    "RandomUniformLike", "SVMClassifier", "SVMRegressor", "Scaler", "TreeEnsembleClassifier",
    "TreeEnsembleRegressor", "ZipMap", "NonMaxSuppression", "TopK", "RoiAlign", "Resize", "CumSum", "Min", "Max",
    "Upsample", "RandomNormalLike", "Cast",
]
BASE = "hub-base"
MODEL_DIR = "model"  # the imported gte-onnx folder inside each hub peer's directory
METADATA = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
            "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


def _operators(model) -> set[str]:
    ops: set[str] = set()

    def walk(graph) -> None:
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.g is not None and attr.g.ByteSize():
                    walk(attr.g)

    walk(model.graph)
    return ops


def check_and_save(model, path: Path) -> None:
    """transformers.js utils.check_and_save_model for graphs under 2 GiB."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - theirs ignores exactly this one
        if "No Op registered for" not in str(exc):
            raise
    onnx.save(model, str(path))


def slim_base(optimum_fp32: Path, out_dir: Path) -> dict[str, Any]:
    """The fp32 graph every mode starts from: the optimum export, slimmed as convert.py does."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "model.onnx"
    try:
        import onnxslim
    except ImportError:
        shutil.copyfile(optimum_fp32, target)
        return {"onnxslim": None}
    check_and_save(onnxslim.slim(str(optimum_fp32)), target)
    return {"onnxslim": importlib.metadata.version("onnxslim")}


def quantize_mode(base: Path, mode: str, path: Path) -> None:
    """One transformers.js mode of the fp32 graph, as scripts/quantize.py's quantize() does it."""
    import onnx

    model = onnx.load_model(str(base))
    if mode == "fp16":
        _fp16(model, path)
    elif mode in ("q4", "q4f16"):
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(model=model, block_size=32, is_symmetric=True, accuracy_level=None)
        quantizer.process()
        if mode == "q4":
            check_and_save(quantizer.model.model, path)
        else:
            _fp16(quantizer.model.model, path)
    elif mode == "bnb4":
        from onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer

        quantizer = MatMulBnb4Quantizer(model=model, block_size=64, quant_type=MatMulBnb4Quantizer.NF4)
        quantizer.process()
        check_and_save(quantizer.model.model, path)
    elif mode in ("q8", "int8", "uint8"):
        from onnxruntime.quantization import QuantizationMode, QuantType
        from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        if mode == "q8":
            weight = QuantType.QUInt8 if _operators(model) & set(QUINT8_OPS) else QuantType.QInt8
        else:
            weight = QuantType.QInt8 if mode == "int8" else QuantType.QUInt8
        quantizer = ONNXQuantizer(
            model, True, True, mode=QuantizationMode.IntegerOps, static=False, weight_qType=weight,
            activation_qType=QuantType.QUInt8, tensors_range=None, nodes_to_quantize=[], nodes_to_exclude=[],
            op_types_to_quantize=set(IntegerOpsRegistry.keys()),
            extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True},
        )
        quantizer.quantize_model()
        check_and_save(quantizer.model.model, path)
    else:
        raise ValueError(f"unknown transformers.js mode {mode!r}")


def _fp16(model, path: Path) -> None:
    import onnx
    from onnxruntime.transformers import float16

    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, disable_shape_infer=model.ByteSize() >= onnx.checker.MAXIMUM_PROTOBUF,
        op_block_list=list(FP16_OP_BLOCK_LIST),
    )
    # onnxruntime's copy leaves the Casts it inserts around blocked nodes out of order (transformers.js'
    # copy of the module writes them in place); the same nodes, topologically sorted, pass the checker.
    topological_sort(converted.graph)
    check_and_save(converted, path)


def topological_sort(graph) -> None:
    """Reorder graph.node in place so every node comes after the nodes that produce its inputs."""
    produced_by: dict[str, int] = {}
    nodes = list(graph.node)
    for i, node in enumerate(nodes):
        for out in node.output:
            produced_by[out] = i
    done: list[bool] = [False] * len(nodes)
    order: list[int] = []

    def visit(i: int) -> None:
        stack = [(i, iter(nodes[i].input))]
        while stack:
            j, inputs = stack[-1]
            for name in inputs:
                k = produced_by.get(name)
                if k is not None and not done[k] and all(k != s for s, _ in stack):
                    stack.append((k, iter(nodes[k].input)))
                    break
            else:
                stack.pop()
                if not done[j]:
                    done[j] = True
                    order.append(j)

    for i in range(len(nodes)):
        if not done[i]:
            visit(i)
    sorted_nodes = [nodes[i] for i in order]
    del graph.node[:]
    graph.node.extend(sorted_nodes)


def build(name: str, cache: Path, optimum_fp32: Path, metadata_dir: Path, tmp: Path, config) -> dict[str, Any]:
    """Make onnx/model_<suffix>.onnx in a transformers.js layout (config.json from the model's config,
    the tokenizer and Sentence-Transformers files from our folder), then `gte-onnx import` it into
    tmp/model (our runtime's folder); the layout copy is dropped (the import hard-links the file)."""
    from ..convert.onnx_import import import_onnx_files
    from ..quantize.fidelity import measure_imported

    mode = HUB_MODES[name]
    base_dir = cache / BASE
    if not (base_dir / "base.json").is_file():  # written last: a half-made base is redone
        record = slim_base(optimum_fp32, base_dir)
        (base_dir / "base.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
    base_record = json.loads((base_dir / "base.json").read_text(encoding="utf-8"))
    layout = tmp / "transformers.js"
    (layout / "onnx").mkdir(parents=True)
    for file in METADATA:
        if (metadata_dir / file).is_file():
            shutil.copyfile(metadata_dir / file, layout / file)
    if (metadata_dir / "1_Pooling").is_dir():
        shutil.copytree(metadata_dir / "1_Pooling", layout / "1_Pooling")
    config.to_json_file(str(layout / "config.json"))
    stem = f"model_{SUFFIX.get(mode, mode)}"
    quantize_mode(base_dir / "model.onnx", mode, layout / "onnx" / f"{stem}.onnx")
    variant = VARIANT[mode]
    imported = import_onnx_files(layout, tmp / MODEL_DIR, variants=[variant])
    measure_imported(tmp / MODEL_DIR, imported, (), log=lambda _msg: None)  # no fp32 here: recorded unmeasured
    file_bytes = (layout / "onnx" / f"{stem}.onnx").stat().st_size
    shutil.rmtree(layout)
    return {"peer": name, "engine": "gte-onnx", "folder": MODEL_DIR, "variant": variant, "file_bytes": file_bytes,
            "file": f"onnx/{stem}.onnx",
            "recipe": f"transformers.js scripts/quantize.py mode {mode} (commit {TRANSFORMERS_JS_COMMIT[:12]}) "
                      f"of the optimum fp32 export (onnxslim {base_record.get('onnxslim') or 'not installed'}), "
                      "gte-onnx import"}
