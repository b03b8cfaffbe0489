"""Every failure a user can cause is a typed error whose message names the file and the problem, and the
command line reports it as one line (see gte_onnx.cli.errors for the exit codes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gte_onnx import Embedder
from gte_onnx.cli import main
from gte_onnx.cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, run_verb, take_debug_flag
from gte_onnx.errors import (
    GteOnnxError,
    InferenceError,
    MissingDependencyError,
    ModelFolderError,
    UsageError,
)
from gte_onnx.folder.manifest import MANIFEST_NAME, Manifest
from gte_onnx.folder.integrity import describe_file
from tests.folders import link_copy


def _edit_manifest(folder: Path, edit) -> Path:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.unlink()
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def manifest_only(tiny_gte_dir, tmp_path):
    """A folder holding just the tiny model's manifest (Manifest.load reads nothing else)."""
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(Path(tiny_gte_dir) / MANIFEST_NAME, folder / MANIFEST_NAME)
    return folder


# ---- manifest ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(variants=[m["variants"]["fp32"]]), "field 'variants' must be an object, got array"),
        (lambda m: m.update(speed_ranking=["fp32"]), "field 'speed_ranking' must be an object, got array"),
        (lambda m: m.update(tokenizer="tokenizer.json"), "field 'tokenizer' must be an object, got string"),
        (lambda m: m["variants"]["fp32"].update(recipe="int8"),
         "variant 'fp32' field 'recipe' must be an object, got string"),
        (lambda m: m["variants"]["fp32"].pop("sha256"), "variant 'fp32' is missing the field 'sha256'"),
        (lambda m: m.pop("dim"), "the manifest is missing the field 'dim'"),
        (lambda m: m.update(normalize="false"), "field 'normalize' must be true or false"),
        (lambda m: m.update(max_length=0), "field 'max_length' must be an integer from 1 to 2147483647, got number 0"),
        (lambda m: m.update(max_length=10**30), "field 'max_length' must be an integer from 1 to 2147483647"),
        (lambda m: m.update(inputs="input_ids"), "field 'inputs' must be an array of non-empty strings"),
        (lambda m: m["speed_ranking"].update(CPUExecutionProvider="fp32"),
         "speed_ranking field 'CPUExecutionProvider' must be an array"),
        (lambda m: m["variants"]["fp32"].update(bytes="13 MB"), "variant 'fp32' field 'bytes' must be an integer"),
        (lambda m: m["variants"]["fp32"].update(file="model\x00.onnx"), "a file name without NUL"),
        (lambda m: m["variants"]["fp32"].update(data_files=["\ud800.data"]), "unpaired surrogate"),
        (lambda m: m["tokenizer"].update(pad_token_id="[PAD]"), "tokenizer.pad_token_id must be a non-negative"),
        (lambda m: m["variants"]["fp32"]["recipe"].update(session_optimization=["all"]),
         "recipe.session_optimization must be one of"),
    ],
)
def test_manifest_field_of_the_wrong_type_or_missing(manifest_only, edit, message):
    path = _edit_manifest(manifest_only, edit)
    with pytest.raises(ModelFolderError, match="^" + str(path).replace(".", r"\.") + ": ") as exc:
        Manifest.load(manifest_only)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"format_version": 1, "task": ', "is not valid JSON (Expecting value at line 1, column 31)"),
        (b'{"task": "embedding\xff"}', "is not UTF-8 text (byte 19: invalid start byte)"),
        (b"[1, 2]", "holds a JSON array, not an object"),
        (b"[" * 100_000 + b"]" * 100_000, "cannot read the manifest"),
    ],
)
def test_manifest_that_is_not_json(manifest_only, raw, message):
    (manifest_only / MANIFEST_NAME).write_bytes(raw)
    with pytest.raises(ModelFolderError, match=str(manifest_only)) as exc:
        Manifest.load(manifest_only)
    assert message in str(exc.value)


def test_model_file_that_cannot_be_read_for_its_sha256(tiny_gte_dir, tmp_path, monkeypatch):
    # We run as root, where chmod 000 does not stop a read: the sha256 check's open() is refused instead.
    import builtins

    import gte_onnx.folder.integrity as integrity_module

    folder = link_copy(tiny_gte_dir, tmp_path / "m")
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file).endswith(".onnx"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(integrity_module, "open", refusing_open, raising=False)
    with pytest.raises(ModelFolderError, match=r"variant '\w+': cannot read .*\.onnx to check its sha256 "
                                               r"\(Permission denied\)") as exc:
        Embedder(folder, threads=1)
    assert str(folder.resolve()) in str(exc.value)
    assert isinstance(exc.value.__cause__, PermissionError)


def test_output_width_that_differs_from_dim(tiny_gte_dir, tmp_path):
    folder = link_copy(tiny_gte_dir, tmp_path / "m")
    _edit_manifest(folder, lambda m: m.update(dim=32))
    with pytest.raises(ModelFolderError, match=r"model.onnx: output 'last_hidden_state' is \(batch, sequence, 64\), "
                                               r"64 wide, but the manifest's dim is 32"):
        Embedder(folder, threads=1)


def test_graph_output_of_the_wrong_rank(tiny_reranker_dir, tmp_path):
    folder = link_copy(tiny_reranker_dir, tmp_path / "m")
    _edit_manifest(folder, lambda m: m.update(task="embedding", pooling="cls"))
    with pytest.raises(ModelFolderError, match=r"model.onnx: output 'logits' has rank 2 \(batch, 1\); the "
                                               r"manifest needs \(batch, sequence, dim\) for cls pooling"):
        Embedder(folder, threads=1)


def test_pooling_none_on_an_embedding_folder_needs_a_graph_that_pools(tiny_gte_dir, tmp_path):
    folder = link_copy(tiny_gte_dir, tmp_path / "m")
    _edit_manifest(folder, lambda m: m.update(pooling="none"))
    with pytest.raises(ModelFolderError, match='rank 3 .*pooling "none" means the graph pools'):
        Embedder(folder, threads=1)


# ---- hand-made graphs: what only shows when the graph runs -------------------------------------------------
def _toy_folder(tiny_gte_dir, tmp_path, vocab: int, kind: str, dim: int, pooling: str):
    """A model folder with the real tokenizer and a tiny graph: an embedding table lookup (vocab x 4), then
    kind "hidden": nothing more (B, L, 4); "pooled": averaged over the sequence (B, 4); "dynamic": tiled by a
    factor computed from the mask, so the output width is unknown until the graph runs."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path / "toy"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(Path(tiny_gte_dir) / name, folder / name)
    table = np.random.default_rng(0).standard_normal((vocab, 4)).astype(np.float32)
    lookup = helper.make_node("Gather", ["table", "input_ids"], ["out" if kind == "hidden" else "hidden"])
    nodes = {
        "hidden": [lookup],
        "pooled": [lookup, helper.make_node("ReduceMean", ["hidden", "axes"], ["out"], keepdims=0)],
        "dynamic": [lookup, helper.make_node("ReduceMax", ["attention_mask"], ["factor"], keepdims=0),
                    helper.make_node("Reshape", ["factor", "one"], ["factor1"]),
                    helper.make_node("Concat", ["ones", "factor1"], ["repeats"], axis=0),
                    helper.make_node("Tile", ["hidden", "repeats"], ["out"])],
    }[kind]
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1], np.int64), "axes"),
         numpy_helper.from_array(np.array([1], np.int64), "one"),
         numpy_helper.from_array(np.array([1, 1], np.int64), "ones")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, folder / "model.onnx")
    manifest = {
        "format_version": 1, "task": "embedding", "pooling": pooling, "normalize": False, "max_length": 64,
        "dim": dim, "inputs": ["input_ids", "attention_mask"], "output": "out", "opset": 18,
        "tokenizer": {"pad_token_id": 50283}, "variants": {"fp32": describe_file(folder, "model.onnx")},
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    return folder, table


def test_pooling_none_reads_the_graphs_pooled_output(tiny_gte_dir, tmp_path):
    folder, table = _toy_folder(tiny_gte_dir, tmp_path, vocab=50368, kind="pooled", dim=4,
                                pooling="none")
    model = Embedder(folder, threads=1)
    ids = model.tokenizer.encode(["Beijing"]).ids[0]
    np.testing.assert_allclose(model.encode("Beijing"), table[ids].mean(axis=0), rtol=1e-6)


def test_output_width_checked_at_the_first_run_when_the_graph_declares_no_shape(tiny_gte_dir, tmp_path):
    folder, _ = _toy_folder(tiny_gte_dir, tmp_path, vocab=50368, kind="dynamic", dim=8,
                            pooling="mean")
    model = Embedder(folder, threads=1)  # nothing to check before it runs
    with pytest.raises(InferenceError, match=r"model.onnx: output 'out' is \(1, \d+, 4\) .* expected \(1, \d+, 8\)"):
        model.encode("Beijing")


def test_session_run_failure_names_the_variant_file(tiny_gte_dir, tmp_path):
    # a 10-row table: the real tokenizer's ids are out of its range, which onnxruntime only finds at run time
    folder, _ = _toy_folder(tiny_gte_dir, tmp_path, vocab=10, kind="hidden", dim=4,
                            pooling="mean")
    model = Embedder(folder, threads=1)
    with pytest.raises(InferenceError, match=r"^model.onnx \(variant 'fp32'\) failed on CPUExecutionProvider: "
                                             r"(InvalidArgument|RuntimeException|Fail): .*out of"):
        model.encode("Beijing")


# ---- tokenizer.json ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], "is not a tokenizer file the tokenizers library can read"),
        (lambda data: b"\xff\xfe" + data, "is not UTF-8 text (byte 0: invalid start byte)"),
        (lambda data: b'{"version": "1.0", "model": {"type": "NoSuchModel"}}',
         "is not a tokenizer file the tokenizers library can read"),
    ],
)
def test_tokenizer_json_that_cannot_be_read(tiny_gte_dir, tmp_path, damage, message):
    folder = link_copy(tiny_gte_dir, tmp_path / "m")
    path = folder / "tokenizer.json"
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(damage(data))
    with pytest.raises(ModelFolderError, match=str(path).replace(".", r"\.")) as exc:
        Embedder(folder, threads=1)
    assert message in str(exc.value)


def test_pad_token_outside_the_vocabulary(tiny_gte_dir, tmp_path):
    folder = link_copy(tiny_gte_dir, tmp_path / "m")
    _edit_manifest(folder, lambda m: m["tokenizer"].update(pad_token_id=10**6))
    with pytest.raises(ModelFolderError, match=r"pad token id 1000000 \(the manifest.s tokenizer.pad_token_id\) "
                                               r"is outside the tokenizer.s vocabulary"):
        Embedder(folder, threads=1)


# ---- the command line -------------------------------------------------------------------------------------
def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gte_onnx.cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_embed_file_that_does_not_exist(tiny_gte_dir, tmp_path):
    res = run_cli("embed", tiny_gte_dir, "--file", tmp_path / "missing.txt")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == f"error: --file {tmp_path / 'missing.txt'}: no such file\n"


def test_debug_shows_the_traceback_as_well(tiny_gte_dir, tmp_path):
    missing = tmp_path / "missing.txt"
    for args, env in ((("--debug", "embed"), None), (("embed",), {"GTE_ONNX_DEBUG": "1"})):
        res = run_cli(*args, tiny_gte_dir, "--file", missing, env=env)
        assert res.returncode == 2
        assert "Traceback (most recent call last)" in res.stderr and "UsageError" in res.stderr
        assert res.stderr.splitlines()[-1] == f"error: --file {missing}: no such file"
    res = run_cli("embed", tiny_gte_dir, "--file", missing, "--debug")  # after the verb too
    assert res.returncode == 2 and "Traceback" in res.stderr


def test_file_that_is_not_utf8(tiny_gte_dir, tmp_path, capsys):
    src = tmp_path / "latin1.txt"
    src.write_bytes("café\n".encode("latin-1"))
    assert main(["embed", str(tiny_gte_dir), "--file", str(src)]) == 2
    assert capsys.readouterr().err == f"error: --file {src} is not UTF-8 text (byte 3: invalid continuation byte)\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["embed", "{missing}", "text"],
        ["rerank", "{missing}", "--query", "q", "doc"],
        ["info", "{missing}"],
        ["quantize", "{missing}", "--variants", "int8"],
        ["bench", "{missing}", "--no-progress"],
        ["parity", "{missing}", "--reference", "{missing}/ref.npz"],
        ["serve", "{missing}"],
        ["export", "{missing}", "{tmp}/out"],
    ],
    ids=lambda argv: argv[0],
)
def test_every_verb_reports_a_bad_path_as_one_line(tmp_path, capsys, argv):
    missing = str(tmp_path / "no-such-folder")
    code = main([a.replace("{missing}", missing).replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("loading ")]  # export's progress log
    assert len(lines) == 1 and lines[0].startswith("error: ") and missing in lines[0], err


def test_argparse_usage_errors_stay_argparses(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["embed"])
    assert exc.value.code == 2 and "usage: gte-onnx embed" in capsys.readouterr().err


def test_unexpected_exception_is_one_line_with_the_debug_hint(capsys):
    def broken(_argv):
        raise KeyError("vocab")

    assert run_verb(broken, []) == EXIT_INTERNAL == 3
    assert capsys.readouterr().err == (
        "error: internal error: KeyError: 'vocab' (run with --debug for the traceback)\n"
    )


def test_interrupt_and_typed_errors(capsys):
    def interrupted(_argv):
        raise KeyboardInterrupt

    def multi_line(_argv):
        raise InferenceError("model.onnx failed:\n  [ONNXRuntimeError] : 6 :\n  out of memory")

    assert run_verb(interrupted, []) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "error: interrupted\n"
    assert run_verb(multi_line, []) == 2
    assert capsys.readouterr().err == "error: model.onnx failed: [ONNXRuntimeError] : 6 : out of memory\n"
    assert run_verb(lambda _argv: 1, []) == 1  # a failed gate keeps its own code


def test_unwritable_output_is_an_error_not_a_crash(tiny_gte_dir, tmp_path, capsys):
    target = tmp_path / "no-such-dir" / "out.jsonl"
    assert main(["embed", str(tiny_gte_dir), "text", "-o", str(target)]) == 2
    assert capsys.readouterr().err == f"error: {target}: No such file or directory\n"


def test_debug_flag_is_taken_only_before_a_double_dash():
    assert take_debug_flag(["embed", "--debug", "m", "--", "--debug"]) == (["embed", "m", "--", "--debug"], True)
    assert take_debug_flag(["embed", "m"]) == (["embed", "m"], False)


def test_a_verb_whose_extra_is_not_installed(monkeypatch, capsys):
    from gte_onnx import cli

    monkeypatch.setitem(cli.VERBS, "export", ("gte_onnx.export.no_such_module:main", "test"))
    assert main(["export", "x", "y"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: gte-onnx export needs the package 'gte_onnx.export.no_such_module'")
    assert err.rstrip().endswith("install it with: pip install 'gte-onnx[export]'") and len(err.splitlines()) == 1


def test_export_without_onnxruntime_names_the_install_command(tmp_path):
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"  # what an [export]-only install looks like
        "from gte_onnx.cli import main\n"
        f"sys.exit(main(['export', 'Alibaba-NLP/gte-modernbert-base', {str(tmp_path / 'out')!r}, '--random-weights']))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: gte-onnx export validates the ONNX graph with ONNX Runtime, which is not "
                                 "installed. Install it with: pip install 'gte-onnx[cpu]'")
    assert len(res.stderr.splitlines()) == 1


def test_missing_dependency_is_a_gte_onnx_error():
    assert issubclass(MissingDependencyError, GteOnnxError) and issubclass(UsageError, GteOnnxError)


def test_max_length_too_small_for_a_pairs_special_tokens(tiny_reranker_dir, tmp_path):
    from gte_onnx import Reranker

    folder = link_copy(tiny_reranker_dir, tmp_path / "m")
    _edit_manifest(folder, lambda m: m.update(max_length=2))
    with pytest.raises(ModelFolderError, match="max_length of 2 tokens is too small to hold a pair"):
        Reranker(folder, threads=1).predict([("a long query", "and a document")])


def test_a_closed_pipe_is_quiet(tiny_gte_dir):
    # `gte-onnx embed ... | head -c 10`: the reader leaves early; no traceback, the status a shell gives SIGPIPE
    proc = subprocess.Popen([sys.executable, "-m", "gte_onnx.cli", "embed", str(tiny_gte_dir), *map(str, range(2000))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    assert proc.wait(timeout=300) == 141
    assert proc.stderr.read() == b""
