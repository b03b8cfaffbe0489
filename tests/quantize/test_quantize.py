"""gte_onnx.quantize on the tiny synthetic ModernBERTs: files, manifest records, recipes proven by op
counts, fp16 safety at long length with padding, and a damaged variant failing its gate."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from gte_onnx.folder.manifest import Manifest
from gte_onnx.folder.integrity import describe_file, sha256_file
from gte_onnx.quantize.build import QuantizeOptions, quantize_folder
from gte_onnx.quantize.cli import main as quantize_main
from gte_onnx.quantize.graph import MIN_WEIGHT_ELEMENTS, float_weight_bytes, op_counts

EMBED_VARIANTS = ("fp16", "int8", "q4")
PROBE_ONLY = QuantizeOptions(evaluation="probe", threads=1)


def _copy(folder: Path, dst: Path) -> Path:
    """A private copy: the conftest fixture folders are shared by every test file."""
    shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("model_*.onnx"))
    manifest = Manifest.load(dst)
    manifest.replace(variants={"fp32": manifest.variants["fp32"]}).save(dst)
    return dst


@pytest.fixture(scope="module")
def quantized(tiny_gte_dir, tmp_path_factory) -> Path:
    folder = _copy(tiny_gte_dir, tmp_path_factory.mktemp("quantize") / "tiny-gte")
    quantize_folder(folder, EMBED_VARIANTS, PROBE_ONLY, log=lambda _m: None)
    return folder


def _on_disk(folder: Path, name: str) -> int:
    """Bytes of a variant's graph and data files."""
    variant = Manifest.load(folder).variants[name]
    return sum((folder / f).stat().st_size for f in (variant.file, *variant.data_files))


def _load(folder: Path, name: str):
    return onnx.load(str(folder / Manifest.load(folder).variants[name].file))


def _table_gathers(model) -> list[tuple[int, list[int]]]:
    """(dtype, shape) of every Gather table that is an initializer, largest first."""
    inits = {i.name: i for i in model.graph.initializer}
    tables = [inits[n.input[0]] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits]
    return sorted(((t.data_type, list(t.dims)) for t in tables), key=lambda x: -int(np.prod(x[1])))


@pytest.mark.parametrize("name", EMBED_VARIANTS)
def test_each_variant_is_written_recorded_and_loads_with_float32_io(quantized, name):
    manifest = Manifest.load(quantized)
    variant = manifest.variants[name]
    assert variant.file == f"model_{name}.onnx"
    assert describe_file(quantized, variant.file) == {"file": variant.file, "sha256": variant.sha256,
                                                     "bytes": variant.bytes}
    # the weights sit beside the graph (a faster session start), and the manifest vouches for them too
    assert variant.data_files == (f"{variant.file}.data",)
    data = describe_file(quantized, variant.data_files[0])
    assert variant.data_integrity == {data["file"]: {"sha256": data["sha256"], "bytes": data["bytes"]}}
    assert data["bytes"] > 10 * variant.bytes
    assert variant.recipe["kind"] == name and variant.recipe["tools"]["onnxruntime"]
    assert variant.providers == (("CUDAExecutionProvider",) if name == "fp16" else ("CPUExecutionProvider",))
    fidelity = variant.fidelity
    assert fidelity["reference"].startswith("fp32") and fidelity["probe_inputs"] > 30
    for key in ("cosine_min", "cosine_mean", "centred_cosine_mean", "max_abs_diff"):
        assert isinstance(fidelity[key], float), key
    assert fidelity["passed"] is True, fidelity["failures"]
    assert variant.passes_gate()

    session = ort.InferenceSession(str(quantized / variant.file), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("input_ids", "tensor(int64)"), ("attention_mask", "tensor(int64)")]
    assert [(o.name, o.type) for o in session.get_outputs()] == [("last_hidden_state", "tensor(float)")]


def test_the_runtime_embeds_with_each_variant_close_to_fp32(quantized):
    from gte_onnx import Embedder

    texts = ["what is the capital of China?", "Beijing", "sorting algorithms " * 30]
    ref = Embedder(quantized, variant="fp32", threads=1).encode(texts)
    for name in EMBED_VARIANTS:
        with pytest.warns(RuntimeWarning) if name == "fp16" else _nothing():
            got = Embedder(quantized, variant=name, threads=1).encode(texts)
        cosine = np.sum(ref * got, axis=1)
        assert got.dtype == np.float32 and np.all(cosine > 0.99), (name, cosine)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _linear_layers(model) -> int:
    """MatMuls with a 2-D float weight of at least MIN_WEIGHT_ELEMENTS: what the recipes quantize."""
    from gte_onnx.quantize.graph import weight_matmuls

    return sum(1 for use in weight_matmuls(model) if use.elements >= MIN_WEIGHT_ELEMENTS)


def _nbits(model) -> list[dict[str, int]]:
    return [{a.name: a.i for a in n.attribute if a.type == onnx.AttributeProto.INT}
            for n in model.graph.node if n.op_type == "MatMulNBits"]


def _table_4bit(model) -> list[int]:
    """Shape of the 4-bit table behind GatherBlockQuantized (checked to be UINT4), or [] when none."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    if not nodes:
        return []
    table = inits[nodes[0].input[0]]
    assert table.data_type == onnx.TensorProto.UINT4 and len(nodes) == 1
    return list(table.dims)


def test_q4_recipe_matmulnbits_and_no_large_float_weights_left(quantized):
    model = _load(quantized, "q4")
    counts = op_counts(model)
    fp32 = _load(quantized, "fp32")
    linear = _linear_layers(fp32)
    recipe = Manifest.load(quantized).variants["q4"].recipe
    # tiny gte: 4 layers, each with its attention projections and GeGLU MLP, all above the threshold.
    assert linear >= 16
    assert counts.get("MatMulNBits") == recipe["matmuls_quantized"] == linear
    # Attention products stay; one small MatMul adds the special-token rows' residual to the table's output.
    assert counts.get("MatMul", 0) == op_counts(fp32).get("MatMul", 0) - linear + 1
    assert float_weight_bytes(model, MIN_WEIGHT_ELEMENTS) == 0
    nbits = _nbits(model)
    eight = recipe["eight_bit"]["count"]  # the MLP down-projections (role "contract") keep 8 bits
    assert 0 < eight < linear and recipe["eight_bit"]["roles"] == ["contract"]
    assert sorted((a["bits"], a["block_size"]) for a in nbits) == [(4, 64)] * (linear - eight) + [(8, 128)] * eight
    assert recipe["block_size"] == 64 and recipe["role_block_sizes"] == {"contract": 128}
    assert {a["accuracy_level"] for a in nbits} == {recipe["accuracy_level"]}
    assert recipe["activation_aware"]["groups"] > 0
    # GPTQ, measured on the calibration text, leaves less layer output error than round-to-nearest.
    assert recipe["rounding"]["method"].startswith("GPTQ") and recipe["rounding"]["layers"] == linear
    assert 0 < recipe["rounding"]["4_bit_output_error_vs_round_to_nearest"] < 1
    # The 50368-row embedding table is 4-bit (GatherBlockQuantized), special-token rows kept exact.
    assert _table_4bit(model) == [50368, 64] and not _table_gathers(model)
    assert recipe["embedding_table"]["bits"] == 4 and recipe["embedding_table"]["rows_kept_exact"]
    assert _on_disk(quantized, "q4") < 0.2 * _on_disk(quantized, "fp32")


def _fused_splits(model) -> list:
    """Splits that alone read a linear layer's output: the writer's fused q/k/v and GeGLU GEMMs."""
    from gte_onnx.quantize.graph import consumers, weight_matmuls

    readers, names = consumers(model), {u.node for u in weight_matmuls(model)}
    return [r[0] for n in model.graph.node if n.name in names
            for r in [readers.get(n.output[0], [])] if len(r) == 1 and r[0].op_type == "Split"]


def test_int8_recipe_every_linear_layer_per_token_one_gemm_per_part_and_4bit_table(quantized):
    fp32, model = _load(quantized, "fp32"), _load(quantized, "int8")
    counts, recipe = op_counts(model), Manifest.load(quantized).variants["int8"].recipe
    linear, fused = _linear_layers(fp32), _fused_splits(fp32)
    assert fused  # the tiny ModernBERT has fused q/k/v and GeGLU GEMMs
    assert recipe["matmuls_quantized"] == recipe["per_token_matmuls"]["count"] == linear
    # no per-batch activation scale anywhere: a vector never depends on its batch-mates
    assert not counts.get("MatMulInteger") and not counts.get("DynamicQuantizeLinear")
    # each fused GEMM became one integer GEMM per part, and its Split is gone
    assert counts["MatMulIntegerToFloat"] == linear + sum(len(s.output) - 1 for s in fused)
    assert counts.get("Split", 0) == op_counts(fp32).get("Split", 0) - len(fused)
    # one quantization per distinct input tensor (q, k and v share theirs)
    from gte_onnx.quantize.graph import weight_matmuls

    fp32_nodes = {n.name: n for n in fp32.graph.node}
    inputs = {fp32_nodes[u.node].input[0] for u in weight_matmuls(fp32) if u.elements >= MIN_WEIGHT_ELEMENTS}
    assert counts["QuantizeLinear"] == counts["ReduceMax"] - op_counts(fp32).get("ReduceMax", 0) == len(inputs)
    assert not _nbits(model) and recipe["per_token_matmuls"]["op"].startswith("ReduceMax")
    inits = {i.name: i for i in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert {inits[n.input[1]].data_type for n in gemms} == {onnx.TensorProto.INT8}
    assert all(len(inits[n.input[3]].dims) == 1 and inits[n.input[3]].dims[0] > 1 for n in gemms)  # per channel
    assert recipe["per_channel"] is True and recipe["method"] == "dynamic"
    assert _table_4bit(model) == [50368, 64] and recipe["embedding_table"]["bits"] == 4
    assert float_weight_bytes(model, MIN_WEIGHT_ELEMENTS) == 0
    assert _on_disk(quantized, "int8") < 0.3 * _on_disk(quantized, "fp32")
    # Saved as ORT's CPU EP optimises it, so it loads with optimisations off and gives the same numbers
    assert recipe["session_optimization"] == "none"
    feeds = {"input_ids": np.array([[1, 2000, 3000, 4000, 2], [1, 2500, 2, 0, 0]], np.int64),
             "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int64)}
    outputs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(quantized / "model_int8.onnx"), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, feeds)[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize("name", EMBED_VARIANTS)
def test_a_text_alone_equals_it_inside_a_padded_batch_in_every_variant(quantized, name):
    """What the server relies on (its answers equal `encode`): no variant's vector depends on the other
    texts of its batch. Per-tensor activation scales (the int8 recipe before) broke this by ~4e-5."""
    from gte_onnx import Embedder

    model = Embedder(quantized, variant=name, threads=2)
    texts = ["hi", "the quick brown fox jumps over the lazy dog " * 40, "Beijing",
             "a medium length sentence about sorting algorithms in python"]
    together = model.encode(texts, batch_size=4)
    pairs = model.encode(texts[::-1], batch_size=2)[::-1]
    for i, text in enumerate(texts):
        alone = model.encode([text])[0]
        assert np.abs(alone - together[i]).max() <= 1e-6, (name, i)
        assert np.abs(alone - pairs[i]).max() <= 1e-6, (name, i)


def _attention_ops(model) -> dict[str, int]:
    from gte_onnx.convert.graph_optimize import op_counts as all_op_counts

    counts = all_op_counts(model)
    return {"Attention": counts.get("Attention", 0), "MultiHeadAttention": counts.get("com.microsoft:MultiHeadAttention", 0)}


def test_attention_forms_per_variant(quantized):
    """The short local layers' band-masked attention: the standard Attention op on fp32 and q4 (faster on
    ORT's CPU EP), com.microsoft MultiHeadAttention in the CUDA variant (ORT's CUDA Attention is unfused), and
    plain ops in int8 (the same vectors on every x86 CPU), every node of them, as its recipe records."""
    fp32 = _attention_ops(_load(quantized, "fp32"))
    assert fp32["Attention"] > 0 and fp32["MultiHeadAttention"] > 0
    assert _attention_ops(_load(quantized, "q4")) == fp32
    assert _attention_ops(_load(quantized, "int8")) == {"Attention": 0, "MultiHeadAttention": 0}
    assert Manifest.load(quantized).variants["int8"].recipe["attention"] == {
        "form": "plain ops", "rewritten": fp32["Attention"] + fp32["MultiHeadAttention"], "left_fused": {}}
    assert _attention_ops(_load(quantized, "fp16")) == {
        "Attention": 0, "MultiHeadAttention": fp32["MultiHeadAttention"] + fp32["Attention"]}
    assert Manifest.load(quantized).variants["fp16"].recipe["attention_ops_as_multiheadattention"] == fp32["Attention"]


def test_a_hard_linked_weights_file_is_a_model_folder_error_with_the_way_out(tiny_gte_dir, tmp_path):
    """onnx.load refuses external data with several hard links (its hard-link attack check); quantize says so
    and how to copy the folder instead of a traceback from inside onnx."""
    import os

    from gte_onnx.errors import ModelFolderError
    from gte_onnx.quantize.graph import load_model

    folder = _copy(tiny_gte_dir, tmp_path / "m")
    os.link(folder / "model.onnx.data", tmp_path / "second-link.data")
    with pytest.raises(ModelFolderError, match="several hard links: copy the folder with cp -r"):
        load_model(folder / "model.onnx")


def test_fp16_keeps_layernorm_in_float32(quantized):
    from onnx import shape_inference

    model = shape_inference.infer_shapes(_load(quantized, "fp16"))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    inits = {i.name: i.data_type for i in model.graph.initializer}
    norms = [n for n in model.graph.node if "LayerNormalization" in n.op_type]
    assert norms
    for node in norms:
        for name in node.input:
            assert types.get(name, inits.get(name)) == onnx.TensorProto.FLOAT, (node.name, name)
    matmul_weights = [inits[n.input[1]] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert matmul_weights and all(w == onnx.TensorProto.FLOAT16 for w in matmul_weights)


def test_fp16_is_nan_free_on_a_long_padded_batch(quantized):
    """Padding rows have every key masked: -inf/finfo.min saturation would turn them into NaN."""
    fp16 = ort.InferenceSession(str(quantized / "model_fp16.onnx"), providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(quantized / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    length = 2048
    ids = rng.integers(1000, 50000, (2, length)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 300:] = 0
    ids[1, 300:] = 50283
    feed = {"input_ids": ids, "attention_mask": mask}
    got = fp16.run(None, feed)[0]
    ref = fp32.run(None, feed)[0]
    assert np.isfinite(got).all()
    valid = mask.astype(bool)
    assert np.abs(got[valid] - ref[valid]).max() < 0.05 * np.abs(ref[valid]).max()


def test_fp16_keeps_rotary_angles_in_float32(quantized):
    """cos/sin of position * inv_freq are computed in the graph: in fp16 a position near 8192 is exact only
    to +-4, so the angles would be wrong. (Random weights give near-uniform attention, which hides wrong
    angles in the final output; the angles themselves are compared here.)"""
    def cos_outputs(path, length):
        model = onnx.load(str(path))
        nodes = {n.name: n.output[0] for n in model.graph.node if n.op_type == "Cos"}
        model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in nodes.values())
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        ids = np.full((1, length), 1000, dtype=np.int64)
        values = session.run(list(nodes.values()), {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        return dict(zip(nodes, values))

    ref, got = cos_outputs(quantized / "model.onnx", 8000), cos_outputs(quantized / "model_fp16.onnx", 8000)
    assert ref and set(got) == set(ref)
    for name, value in ref.items():
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], value, atol=1e-5, err_msg=name)
    recipe = Manifest.load(quantized).variants["fp16"].recipe
    assert recipe["rotary_angle_nodes_kept_float32"] >= 2


def test_mask_constants_are_made_fp16_safe():
    from gte_onnx.quantize.fp16 import SAFE_MASK_VALUE, make_mask_constants_safe
    from onnx import TensorProto, helper, numpy_helper

    finfo_min = np.array([np.finfo(np.float32).min], dtype=np.float32)
    nodes = [
        helper.make_node("Constant", [], ["neg_inf"], value=numpy_helper.from_array(np.array(-np.inf, np.float32))),
        helper.make_node("ConstantOfShape", ["shape"], ["fill"], value=numpy_helper.from_array(finfo_min)),
        helper.make_node("Constant", [], ["rope"], value=numpy_helper.from_array(np.array(160000.0, np.float32))),
        helper.make_node("Add", ["neg_inf", "rope"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
                              [numpy_helper.from_array(np.array([-1e30, 0.5], np.float32), "small_init"),
                               numpy_helper.from_array(np.full(64, -1e30, np.float32), "a_weight")])
    model = helper.make_model(graph)
    assert make_mask_constants_safe(model) == 3
    values = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.attribute}
    assert values["neg_inf"] == SAFE_MASK_VALUE and values["fill"][0] == SAFE_MASK_VALUE
    assert values["rope"] == 160000.0  # large positive constants are not mask values
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert list(inits["small_init"]) == [SAFE_MASK_VALUE, 0.5]
    assert (inits["a_weight"] == np.float32(-1e30)).all()  # a tensor this size is a weight, untouched


def test_int8_embedding_rows_error_is_within_half_a_step():
    from gte_onnx.quantize.embedding import quantize_rows_int8

    table = np.random.default_rng(1).normal(size=(300, 48)).astype(np.float32)
    table[7] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantize_rows_int8(table)
    assert q.dtype == np.int8 and scale.shape == (300, 1)
    error = np.abs(q * scale - table)
    assert np.all(error <= 0.5 * scale + 1e-7)
    assert np.all(q[7] == 0)


def test_embedding_table_rewrite_keeps_special_rows_exact_and_position_tables_float():
    from gte_onnx.quantize.embedding import quantize_embedding_tables
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    tokens = rng.normal(scale=0.02, size=(4000, 32)).astype(np.float32)
    positions = rng.normal(scale=0.02, size=(4000, 32)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["tokens", "input_ids"], ["tok"], name="tok_gather"),
        helper.make_node("Shape", ["input_ids"], ["shape"], start=1),
        helper.make_node("Squeeze", ["shape"], ["length"]),
        helper.make_node("Range", ["zero", "length", "one"], ["pos_ids"]),
        helper.make_node("Gather", ["positions", "pos_ids"], ["pos"], name="pos_gather"),
        helper.make_node("Add", ["tok", "pos"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "l"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(tokens, "tokens"), numpy_helper.from_array(positions, "positions"),
         numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    recipe = quantize_embedding_tables(model, exact_rows=[3, 7, 99999])  # an id beyond the vocab is ignored
    assert recipe["tables"] == {"tokens": [4000, 32]} and recipe["rows_kept_exact"] == [3, 7]
    inits = {i.name: i for i in model.graph.initializer}
    assert "tokens" not in inits and inits["positions"].data_type == TensorProto.FLOAT
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[3, 7, 11, 3999]], dtype=np.int64)
    got = session.run(None, {"input_ids": ids})[0][0] - positions[:4]
    np.testing.assert_allclose(got[:2], tokens[[3, 7]], rtol=0, atol=1e-8)  # exact to float rounding
    step = np.abs(tokens[[11, 3999]]).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(got[2:] - tokens[[11, 3999]]) <= 0.5 * step + 1e-6)
    assert not np.allclose(got[2:], tokens[[11, 3999]], atol=1e-7, rtol=0)  # ordinary rows are rounded


def test_a_damaged_variant_fails_its_gate(quantized, tmp_path):
    """Shuffle the 4-bit embedding table's rows: a file that loads and runs, but embeds the wrong tokens."""
    from gte_onnx.quantize.fidelity import measure_baseline, measure_variant

    folder = _copy(quantized, tmp_path / "damaged")
    shutil.copy(quantized / "model_int8.onnx", folder / "model_int8.onnx")
    model = onnx.load(str(folder / "model_int8.onnx"))
    shuffled = 0
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.UINT4 and list(init.dims) == [50368, 64]:  # not the zero points
            rows = np.frombuffer(init.raw_data, dtype=np.uint8).reshape(50368, -1)  # two codes a byte
            init.raw_data = np.random.default_rng(0).permutation(rows).tobytes()
            shuffled += 1
    assert shuffled == 1
    onnx.save(model, str(folder / "model_int8.onnx"))
    good = Manifest.load(quantized).variants["int8"]
    described = describe_file(folder, "model_int8.onnx")
    damaged = dataclasses.replace(good, sha256=described["sha256"], bytes=described["bytes"], fidelity={})
    manifest = Manifest.load(folder).with_variant(damaged)
    manifest.save(folder)
    fidelity = measure_variant(folder, "int8", measure_baseline(folder, manifest, threads=1), threads=1)
    assert fidelity["passed"] is False
    assert any("cosine" in failure for failure in fidelity["failures"]), fidelity["failures"]


def test_reranker_int8_records_logit_figures(tiny_reranker_dir, tmp_path):
    folder = _copy(tiny_reranker_dir, tmp_path / "tiny-reranker")
    manifest = quantize_folder(folder, ["int8"], PROBE_ONLY, log=lambda _m: None)
    fidelity = manifest.variants["int8"].fidelity
    assert {"logit_max_abs_diff", "logit_spearman", "rerank_topk_overlap"} <= set(fidelity)
    assert fidelity["passed"] is True, fidelity["failures"]
    recipe = manifest.variants["int8"].recipe
    # The one-logit classifier (64x1 weight) is too small to quantize: it is kept in float.
    model = onnx.load(str(folder / "model_int8.onnx"))
    inits = {i.name: list(i.dims) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    float_heads = [n.name for n in model.graph.node
                   if n.op_type in ("MatMul", "Gemm") and inits.get(n.input[1]) == [64, 1]]
    assert float_heads and set(float_heads) <= set(recipe["nodes_kept_float"])
    assert sha256_file(folder / "model_int8.onnx") == manifest.variants["int8"].sha256


def test_cli_quantizes_and_reports_bad_input(tiny_gte_dir, tmp_path, capsys):
    folder = _copy(tiny_gte_dir, tmp_path / "cli")
    assert quantize_main([str(folder), "--variants", "q4", "--eval", "none", "--no-awq", "--q4-8bit-roles", "none",
                          "--block-size", "64", "--accuracy-level", "0", "-q"]) == 0
    variant = Manifest.load(folder).variants["q4"]
    assert variant.recipe["block_size"] == 64 and variant.recipe["accuracy_level"] == 0
    assert variant.recipe["activation_aware"] is None and variant.recipe["eight_bit"] is None
    assert variant.fidelity == {} and not variant.passes_gate()  # unmeasured: auto never picks it

    assert quantize_main([str(folder), "--variants", "int9"]) == 2
    assert "unknown variant(s) int9" in capsys.readouterr().err
    assert quantize_main([str(tmp_path / "missing"), "--variants", "int8"]) == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quantize_main([str(folder), "--block-size", "48"])


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_quiet_quantize_prints_none_of_onnxruntimes_advice(tiny_gte_dir, tmp_path, method):
    """onnxruntime.quantization logs "Please consider (to run) pre-processing ..." and "Please check if the
    model is already quantized ..." with logging.warning(), i.e. on the root logger, which basicConfig
    then prints as WARNING:root:...: a fresh process shows what `gte-onnx quantize -q` really prints."""
    folder = _copy(tiny_gte_dir, tmp_path / "m")
    res = subprocess.run([sys.executable, "-m", "gte_onnx.cli", "quantize", str(folder), "--variants", "int8",
                          "--int8-method", method, "--eval", "none", "-q"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Please" not in res.stderr and "WARNING:root" not in res.stderr, res.stderr
    assert Manifest.load(folder).variants["int8"].recipe["method"] == method


def test_quantizer_advice_filter_drops_exactly_those_lines_and_only_while_quantizing(tiny_gte_dir, tmp_path,
                                                                                     caplog):
    import logging

    from gte_onnx.quantize import graph
    from gte_onnx.quantize.int8 import make_int8

    caplog.set_level(logging.WARNING)
    make_int8(tiny_gte_dir / "model.onnx", tmp_path / "model_int8.onnx")
    assert (tmp_path / "model_int8.onnx").is_file()
    assert not [r for r in caplog.records if r.getMessage().startswith(graph.QUANTIZER_ADVICE)], caplog.text
    caplog.clear()
    with graph.quiet_quantizer_logs():
        logging.warning("Please consider to run pre-processing before quantization. Refer to example: ...")
        logging.warning("Please check if the model is already quantized. Note ...")
        logging.warning("some other warning")
        logging.getLogger("onnxruntime.quantization").warning("a warning of its own logger")
    logging.warning("Please check if the model is already quantized. (outside)")
    assert [r.getMessage() for r in caplog.records] == [
        "some other warning", "a warning of its own logger",
        "Please check if the model is already quantized. (outside)",
    ]
    assert graph._not_quantizer_advice not in logging.getLogger().filters


def test_quantize_never_imports_torch():
    code = ("import sys, gte_onnx.quantize.build, gte_onnx.quantize.cli, gte_onnx.quantize.fidelity, "
            "gte_onnx.quantize.fp16, gte_onnx.quantize.int8, gte_onnx.quantize.q4\n"
            "import gte_onnx.parity.report\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def _correlated_inputs(rng, rows: int, k: int) -> np.ndarray:
    """Activations with correlated channels of unequal scale, like a transformer layer's input."""
    mix = rng.normal(size=(k, k)) / np.sqrt(k)
    return (rng.normal(size=(rows, k)) @ mix) * rng.uniform(0.2, 3.0, size=k) + rng.normal(scale=0.3, size=k)


@pytest.mark.parametrize("bits,symmetric", [(4, False), (4, True), (8, True)])
def test_gptq_lowers_the_layer_output_error_below_round_to_nearest(bits, symmetric):
    from gte_onnx.quantize import gptq

    rng = np.random.default_rng(3)
    k, n, block = 128, 48, 32
    x = _correlated_inputs(rng, 3000, k)
    w = rng.normal(scale=0.05, size=(k, n)).astype(np.float32)
    hessian = x.T @ x / len(x)
    errors = {}
    for name, (codes, scales, zeros) in {"rtn": gptq.rtn(w, bits, block, symmetric),
                                         "gptq": gptq.gptq(w, hessian, bits, block, symmetric)}.items():
        assert codes.shape == (k, n) and codes.max() <= 2 ** bits - 1
        assert scales.shape == zeros.shape == (k // block, n) and scales.dtype == np.float32
        if symmetric:
            assert np.all(zeros == 2 ** (bits - 1))  # what MatMulNBits assumes when no zero points are stored
        deq = gptq.dequantize(codes, scales, zeros, block)
        errors[name] = float(np.sum((x @ w - x @ deq) ** 2))
        assert np.isclose(gptq.output_error(w, hessian, deq) * len(x), errors[name], rtol=1e-6)
    assert errors["gptq"] < 0.7 * errors["rtn"], errors
    # The weights themselves move further from the originals: GPTQ trades weight error for output error.
    rtn_w = gptq.dequantize(*gptq.rtn(w, bits, block, symmetric), block)
    gptq_w = gptq.dequantize(*gptq.gptq(w, hessian, bits, block, symmetric), block)
    assert np.sum((gptq_w - w) ** 2) > np.sum((rtn_w - w) ** 2)


def _one_matmul(w: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["t", n])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("bits,block,symmetric", [(4, 32, False), (4, 16, True), (4, 64, False), (8, 32, True)])
def test_matmul_nbits_writer_matches_numpy_and_ort_quantizer_layout(bits, block, symmetric):
    """Codes written by gptq.matmul_nbits_node compute x @ dequantize(codes) in ORT, and for round-to-nearest
    codes the packed bytes are exactly what ORT's own quantizer writes (K = 96: a padded last block at 64)."""
    from gte_onnx.quantize import gptq
    from gte_onnx.quantize.graph import quiet_quantizer_logs, weight_matmuls
    from onnx import numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    rng = np.random.default_rng(4)
    w = rng.normal(size=(96, 40)).astype(np.float32)
    x = rng.normal(size=(5, 96)).astype(np.float32)
    model = _one_matmul(w)
    codes, scales, zeros = gptq.rtn(w, bits, block, symmetric)
    gptq.matmul_nbits_node(model, weight_matmuls(model)[0], codes, scales, zeros, bits, block, symmetric, 0)
    assert op_counts(model) == {"MatMulNBits": 1}
    assert not any(i.name == "w" for i in model.graph.initializer)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ gptq.dequantize(codes, scales, zeros, block), rtol=1e-5, atol=1e-4)

    theirs = _one_matmul(w)
    with quiet_quantizer_logs():
        quantizer = MatMulNBitsQuantizer(theirs, bits=bits, block_size=block, is_symmetric=symmetric)
        quantizer.process()
    ours = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ort_inits = {i.name: numpy_helper.to_array(i) for i in quantizer.model.model.graph.initializer}
    assert set(ours) == set(ort_inits)
    for name, array in ort_inits.items():
        assert ours[name].tobytes() == array.tobytes() or np.allclose(ours[name].reshape(array.shape), array), name


def test_4bit_embedding_table_keeps_special_rows_exact_and_dequantizes_only_looked_up_rows():
    from gte_onnx.quantize.embedding import (
        dequantize_rows_4bit,
        quantize_embedding_tables,
        quantize_rows_4bit,
    )
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    tokens = rng.normal(scale=0.05, size=(4000, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["tokens", "input_ids"], ["out"], name="tok_gather")], "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "l"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [numpy_helper.from_array(tokens, "tokens")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    recipe = quantize_embedding_tables(model, exact_rows=[0, 7, 99999], bits=4, block_size=32)
    assert recipe["bits"] == 4 and recipe["rows_kept_exact"] == [0, 7] and recipe["tables"] == {"tokens": [4000, 64]}
    assert "GatherBlockQuantized" in op_counts(model) and "Gather" not in op_counts(model)
    inits = {i.name: i for i in model.graph.initializer}
    assert "tokens" not in inits
    # Nothing vocabulary-sized but the packed codes (4000 x 64 x 4 bits), their scales and zero points.
    stored = sum(len(i.raw_data) or numpy_helper.to_array(i).nbytes for i in inits.values())
    assert stored < 4000 * 64 * (0.5 + 4 / 32 + 0.5 / 32) + 3 * 64 * 4 + 64
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[0, 7, 11, 3999], [7, 12, 0, 0]], dtype=np.int64)
    got = session.run(None, {"input_ids": ids})[0]
    np.testing.assert_allclose(got[0, :2], tokens[[0, 7]], rtol=0, atol=1e-7)
    np.testing.assert_allclose(got[1, [0, 2, 3]], tokens[[7, 0, 0]], rtol=0, atol=1e-7)
    codes, scale, zero = quantize_rows_4bit(tokens, 32)
    expected = dequantize_rows_4bit(codes, scale, zero)
    np.testing.assert_allclose(got[0, 2:], expected[[11, 3999]], rtol=0, atol=1e-6)
    half_step = 0.5 * np.repeat(scale[[11, 3999]], 32, axis=1)
    assert np.all(np.abs(got[0, 2:] - tokens[[11, 3999]]) <= half_step + 1e-6)


def test_q4f16_keeps_the_4bit_table_float32_and_loads(tiny_gte_dir, tmp_path):
    """The fp16 converter cannot see through GatherBlockQuantized: the table's nodes stay float32."""
    folder = _copy(tiny_gte_dir, tmp_path / "q4f16")
    manifest = quantize_folder(folder, ["q4f16"], PROBE_ONLY, log=lambda _m: None)
    assert manifest.variants["q4f16"].fidelity["passed"] is True, manifest.variants["q4f16"].fidelity["failures"]
    model = _load(folder, "q4f16")
    inits = {i.name: i for i in model.graph.initializer}
    table = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    assert inits[table.input[2]].data_type == onnx.TensorProto.FLOAT  # scales, hence the output, float32
    assert _table_4bit(model) == [50368, 64]
    assert {a["bits"] for a in _nbits(model)} == {4, 8}  # the q4 recipe's layers, as in model_q4.onnx


def test_the_exact_rows_residual_is_never_taken_for_a_linear_layer():
    """Many special tokens x a wide table make the residual MatMul's weight as big as a layer's."""
    from gte_onnx.quantize.embedding import quantize_embedding_tables
    from gte_onnx.quantize.graph import weight_matmuls
    from onnx import TensorProto, helper, numpy_helper

    tokens = np.random.default_rng(6).normal(size=(300, 512)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["tokens", "input_ids"], ["out"], name="tok_gather")], "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "l"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [numpy_helper.from_array(tokens, "tokens")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    recipe = quantize_embedding_tables(model, exact_rows=range(10), min_elements=1000, bits=4)
    assert len(recipe["rows_kept_exact"]) == 10 and 10 * 512 >= MIN_WEIGHT_ELEMENTS
    assert op_counts(model)["MatMul"] == 1 and weight_matmuls(model) == []


def test_fp16_of_the_op_by_op_bert_graph_loads_and_agrees(minilm_dir, tmp_path):
    """The BERT graph's LayerNorms read com.microsoft ops' outputs (MultiHeadAttention, BiasGelu), which onnx's
    shape inference cannot type: without ORT's symbolic inference the converter left them uncast (unloadable)."""
    import numpy as np
    import onnxruntime as ort

    from gte_onnx.quantize.fp16 import make_fp16

    recipe, _ = make_fp16(minilm_dir / "model.onnx", tmp_path / "model_fp16.onnx")
    assert recipe["types_from"] == "onnxruntime symbolic shape inference"
    ids = np.array([[101, 7592, 2088, 2003, 1037, 3231, 102]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    options = ort.SessionOptions()
    fp32, fp16 = (ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]
                  for p in (minilm_dir / "model.onnx", tmp_path / "model_fp16.onnx"))
    assert np.isfinite(fp16).all() and np.abs(fp16 - fp32).max() < 2e-2
