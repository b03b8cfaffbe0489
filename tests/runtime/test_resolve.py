"""Model resolution, offline: a fake hub cache (models--org--name/refs/main + snapshots/<commit>/...) read
with HF_HUB_OFFLINE=1 through the real hf_hub_download, for each form a model can come in."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from ..conftest import quantized_copy

TEXTS = ["what is the capital of China?", "Beijing is the capital of China.", "sorting algorithms " * 40]
META = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "modules.json",
        "config_sentence_transformers.json", "sentence_bert_config.json", "1_Pooling/config.json")


# ---- fixtures: a fake hub cache (the tiny checkpoint is conftest's tiny_gte_checkpoint) -------------------
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty offline hub cache and gte-onnx cache; `hub.add(repo_id, {path: source file or bytes})`."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GTE_ONNX_CACHE", str(tmp_path / "gte-cache"))
    return FakeHub(tmp_path / "hub", tmp_path / "gte-cache")


class FakeHub:
    def __init__(self, root: Path, cache: Path):
        self.root, self.cache = root, cache

    def add(self, repo_id: str, files: dict[str, Path | bytes]) -> str:
        """Lay the files out as huggingface_hub does: blobs by content hash, snapshot symlinks, refs/main."""
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        repo = self.root / ("models--" + repo_id.replace("/", "--"))
        for name, content in files.items():
            data = content if isinstance(content, bytes) else Path(content).read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        return commit


@pytest.fixture
def downloads(monkeypatch):
    """The file names asked of hf_hub_download (the real one still runs, against the offline cache)."""
    import huggingface_hub

    asked: list[str] = []
    real = huggingface_hub.hf_hub_download

    def spy(repo_id, filename, **kwargs):
        asked.append(filename)
        assert kwargs.get("local_files_only") is True, "offline: the download must not try the network"
        return real(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    return asked


def meta_files(folder: Path) -> dict[str, Path]:
    return {name: folder / name for name in META if (folder / name).is_file()}


def embed(folder_or_id, **kwargs) -> np.ndarray:
    from gte_onnx import Embedder

    model = Embedder(folder_or_id, threads=1, **kwargs)
    return np.asarray(model.encode(TEXTS)), model


@pytest.fixture(scope="session")
def two_variant_dir(tiny_gte_dir, tmp_path_factory) -> Path:
    """The tiny gte folder with a second variant: an int8 made by the quantizer, measured."""
    return quantized_copy("tiny-gte-int8", tiny_gte_dir, tmp_path_factory, variants=("int8",))


# ---- 1. a gte-onnx repo -----------------------------------------------------------------------------
def test_gte_onnx_repo_fetches_the_manifest_then_only_the_chosen_variant(hub, downloads, two_variant_dir):
    files = {p.relative_to(two_variant_dir).as_posix(): p for p in two_variant_dir.rglob("*") if p.is_file()}
    hub.add("org/tiny-gte-onnx", files)
    got, model = embed("org/tiny-gte-onnx", variant="int8")
    assert downloads[0] == "gte-onnx.json"
    assert "model_int8.onnx" in downloads and "model.onnx" not in downloads  # fp32 never touched
    assert not any(name.startswith(("modules", "1_Pooling")) for name in downloads)
    want, _ = embed(two_variant_dir, variant="int8")
    np.testing.assert_array_equal(got, want)
    assert model.variant == "int8"
    # nothing converted or imported (the cache may hold only the record of files already hash-checked)
    assert [p.name for p in hub.cache.glob("*") if p.name != "verified.json"] == []


def test_local_gte_onnx_folder_is_used_in_place(tiny_gte_dir):
    from gte_onnx.sources.resolve import resolve_model

    assert resolve_model(tiny_gte_dir) == Path(tiny_gte_dir)


# ---- 2. a checkpoint, converted without torch ------------------------------------------------------------
def test_checkpoint_repo_is_converted_once_then_read_from_the_cache(hub, downloads, tiny_gte_checkpoint,
                                                                    tiny_gte_dir, monkeypatch):
    from gte_onnx import pipeline

    files = {**meta_files(tiny_gte_checkpoint), "model.safetensors": tiny_gte_checkpoint / "model.safetensors",
             "gte-onnx-source.json": tiny_gte_checkpoint / "gte-onnx-source.json", "README.md": b"# tiny\n"}
    commit = hub.add("org/tiny-gte", files)
    got, model = embed("org/tiny-gte", variant="fp32")
    assert "model.safetensors" in downloads and "README.md" not in downloads
    folder = hub.cache / "models--org--tiny-gte" / "converted" / commit
    assert model.folder == folder and (folder / "gte-onnx.json").is_file()
    assert set(model.manifest.variants) == {"fp32", "int8"} and model.manifest.variants["int8"].passes_gate()
    want, _ = embed(tiny_gte_dir)  # conftest's conversion of the same checkpoint (fp32 only)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not list(folder.parent.glob(".tmp-*"))

    # Second load: the cache answers; no weights are read and nothing is converted.
    calls = []
    monkeypatch.setattr(pipeline, "convert_checkpoint", lambda *a, **k: calls.append(a))
    downloads.clear()
    again, second = embed("org/tiny-gte", variant="int8")
    assert calls == [] and "model.safetensors" not in downloads and second.folder == folder
    assert second.variant == "int8"


def test_a_crash_mid_conversion_leaves_no_complete_looking_folder(hub, tiny_gte_checkpoint, monkeypatch):
    from gte_onnx import pipeline
    from gte_onnx.errors import ModelFolderError
    from gte_onnx.sources.resolve import resolve_model

    commit = hub.add("org/crashy", {**meta_files(tiny_gte_checkpoint),
                                    "model.safetensors": tiny_gte_checkpoint / "model.safetensors"})

    def dies_midway(source, out, **kwargs):
        (out / "model.onnx").write_bytes(b"half a graph")
        (out / "gte-onnx.json.tmp").write_text("{")
        raise ModelFolderError("simulated crash while converting")

    monkeypatch.setattr(pipeline, "convert_checkpoint", dies_midway)
    with pytest.raises(ModelFolderError, match="simulated crash"):
        resolve_model("org/crashy", variant=None)
    kind_dir = hub.cache / "models--org--crashy" / "converted"
    assert not (kind_dir / commit).exists()
    assert not any((p / "gte-onnx.json").exists() for p in kind_dir.iterdir() if p.is_dir())

    # A process killed outright leaves its temporary folder: never taken as the model, removed by the next build.
    stale = kind_dir / f".tmp-{commit}-999-deadbeef"
    stale.mkdir()
    (stale / "gte-onnx.json").write_text("{}")
    built = []

    def fake_convert(source, out, **kwargs):
        built.append(kwargs["variants"])
        shutil.copytree(source, out, dirs_exist_ok=True)
        (out / "gte-onnx.json").write_text("{}")

    monkeypatch.setattr(pipeline, "convert_checkpoint", fake_convert)
    folder = resolve_model("org/crashy", variant=None)
    assert folder == kind_dir / commit and built == [("int8",)] and not stale.exists()


def test_concurrent_conversions_of_one_model_build_it_once(hub, tiny_gte_checkpoint, monkeypatch):
    import time

    from gte_onnx import pipeline
    from gte_onnx.sources.resolve import resolve_model

    hub.add("org/racy", {**meta_files(tiny_gte_checkpoint),
                         "model.safetensors": tiny_gte_checkpoint / "model.safetensors"})
    built = []

    def slow_convert(source, out, **kwargs):
        built.append(out)
        time.sleep(0.5)
        (out / "gte-onnx.json").write_text("{}")

    monkeypatch.setattr(pipeline, "convert_checkpoint", slow_convert)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model("org/racy", variant=None))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and len(set(results)) == 1 and len(results) == 3


def test_local_checkpoint_folder_is_keyed_on_path_and_content(hub, tiny_gte_checkpoint, two_variant_dir, tmp_path,
                                                              monkeypatch):
    from gte_onnx import pipeline
    from gte_onnx.sources.resolve import resolve_model

    folder = tmp_path / "my-checkpoint"
    shutil.copytree(tiny_gte_checkpoint, folder)
    built = []

    def fake_convert(source, out, **kwargs):
        built.append(source)
        shutil.copyfile(two_variant_dir / "gte-onnx.json", out / "gte-onnx.json")  # fp32 + int8

    monkeypatch.setattr(pipeline, "convert_checkpoint", fake_convert)
    first = resolve_model(folder, variant=None)
    assert resolve_model(folder, variant=None) == first and len(built) == 1
    assert first.is_relative_to(hub.cache / "local")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "note": "edited"}))
    assert resolve_model(folder, variant=None) != first and len(built) == 2


# ---- 3. ONNX files only ---------------------------------------------------------------------------
def _with_external_data(src: Path, dst: Path, location: str) -> None:
    import onnx

    model = onnx.load(str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=location)


@pytest.fixture(scope="session")
def inline_graph(tiny_gte_dir, tmp_path_factory) -> Path:
    """The tiny fp32 graph as one file, weights inline, as most hub repos ship small models (gte-onnx's own
    folders keep them in model.onnx.data)."""
    import onnx

    out = tmp_path_factory.mktemp("inline") / "model.onnx"
    onnx.save_model(onnx.load(str(tiny_gte_dir / "model.onnx")), str(out))
    return out


@pytest.fixture(scope="session")
def quantized_graph(tiny_gte_dir, inline_graph, tmp_path_factory) -> Path:
    """A dynamic-int8 file as transformers.js and optimum make them (onnxruntime's quantize_dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = tmp_path_factory.mktemp("quantized") / "model_quantized.onnx"
    quantize_dynamic(str(inline_graph), str(out), weight_type=QuantType.QUInt8)
    return out


def test_transformers_js_repo_is_imported_with_measured_variants(hub, downloads, tiny_gte_checkpoint, tiny_gte_dir, inline_graph,
                                                                  quantized_graph, tmp_path):
    fp32 = tmp_path / "js" / "model.onnx"
    _with_external_data(inline_graph, fp32, "model.onnx_data")
    files = {**meta_files(tiny_gte_checkpoint), "onnx/model.onnx": fp32, "onnx/model.onnx_data": fp32.parent / "model.onnx_data",
             "onnx/model_quantized.onnx": quantized_graph, "onnx/model_q4.onnx": b"never fetched"}
    commit = hub.add("org/tiny-js", files)
    got, model = embed("org/tiny-js")
    assert "onnx/model.onnx_data" in downloads and "onnx/model_q4.onnx" not in downloads
    assert model.folder == hub.cache / "models--org--tiny-js" / "imported" / commit
    manifest = model.manifest
    assert set(manifest.variants) == {"fp32", "quantized"}
    assert manifest.variants["fp32"].data_files == ("onnx/model.onnx_data",)
    assert manifest.pooling == "cls" and manifest.output == "last_hidden_state" and manifest.dim == 64
    assert manifest.inputs == ("input_ids", "attention_mask")
    quantized = manifest.variants["quantized"]
    assert quantized.fidelity["gate_kind"] == "int8" and isinstance(quantized.fidelity["passed"], bool)
    assert manifest.variants[model.variant].passes_gate()  # auto chose by measured gate (and speed)
    downloads.clear()
    fp32, same = embed("org/tiny-js", variant="fp32")  # the cached import: nothing fetched but config
    assert same.folder == model.folder and not any(n.endswith(".onnx") for n in downloads)
    want, _ = embed(tiny_gte_dir)
    np.testing.assert_allclose(fp32, want, atol=1e-6)


def test_optimum_repo_with_source_onnx_skips_conversion(hub, tiny_gte_checkpoint, tiny_gte_dir, inline_graph):
    files = {**meta_files(tiny_gte_checkpoint), "model.onnx": inline_graph,
             "model.safetensors": tiny_gte_checkpoint / "model.safetensors"}
    commit = hub.add("org/tiny-optimum", files)
    got, model = embed("org/tiny-optimum", source="onnx")
    assert model.folder == hub.cache / "models--org--tiny-optimum" / "imported" / commit
    assert model.manifest.source["imported"] == "optimum"
    want, _ = embed(tiny_gte_dir)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_without_an_fp32_file_auto_never_picks_an_unmeasured_variant(hub, tiny_gte_checkpoint, quantized_graph):
    from gte_onnx.errors import VariantError

    hub.add("org/only-quantized", {**meta_files(tiny_gte_checkpoint), "onnx/model_quantized.onnx": quantized_graph})
    with pytest.raises(VariantError, match="no fp32 ONNX file"):
        embed("org/only-quantized")
    _, model = embed("org/only-quantized", variant="quantized")  # named explicitly, it runs
    assert model.manifest.variants["quantized"].fidelity["measured"] is False
    assert not model.manifest.variants["quantized"].passes_gate()


def test_gte_onnx_import_writes_a_folder_for_bench_and_parity(tiny_gte_checkpoint, tiny_gte_dir, inline_graph, quantized_graph, tmp_path):
    from gte_onnx.cli import main
    from gte_onnx.folder.manifest import Manifest

    src = tmp_path / "src"
    for name, path in {**meta_files(tiny_gte_checkpoint), "model.onnx": inline_graph,
                       "model_quantized.onnx": quantized_graph}.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, src / name)
    assert main(["import", str(src), str(tmp_path / "out")]) == 0
    manifest = Manifest.load(tmp_path / "out")
    assert set(manifest.variants) == {"fp32", "quantized"} and "passed" in manifest.variants["quantized"].fidelity
    assert main(["import", str(src), str(tmp_path / "out")]) == 2  # never over an existing folder


# ---- 4. anything else ---------------------------------------------------------------------------------
def test_a_truncated_safetensors_file_is_a_typed_error(hub, tiny_gte_checkpoint):
    from gte_onnx.errors import ModelFolderError
    from gte_onnx.sources.resolve import resolve_model

    weights = (tiny_gte_checkpoint / "model.safetensors").read_bytes()
    commit = hub.add("org/truncated", {**meta_files(tiny_gte_checkpoint), "model.safetensors": weights[: len(weights) // 2]})
    with pytest.raises(ModelFolderError, match="model.safetensors"):
        resolve_model("org/truncated", variant=None)
    assert not (hub.cache / "models--org--truncated" / "converted" / commit).exists()


def test_an_unsupported_architecture_says_what_was_found(hub, tiny_gte_checkpoint):
    from gte_onnx.errors import UnsupportedModelError
    from gte_onnx.sources.resolve import resolve_model

    config = json.dumps({"model_type": "t5", "architectures": ["T5EncoderModel"]}).encode()
    hub.add("org/t5", {"config.json": config, "model.safetensors": tiny_gte_checkpoint / "model.safetensors"})
    with pytest.raises(UnsupportedModelError, match=r"T5EncoderModel.*architecture the converter does not support"):
        resolve_model("org/t5", variant=None)


def test_a_repo_with_neither_weights_nor_onnx_files(hub, tiny_gte_checkpoint):
    from gte_onnx.errors import UnsupportedModelError
    from gte_onnx.sources.resolve import resolve_model

    hub.add("org/empty", {**meta_files(tiny_gte_checkpoint), "pytorch_model.bin": b"pickle"})
    with pytest.raises(UnsupportedModelError) as err:
        resolve_model("org/empty", variant=None)
    message = str(err.value)
    assert "neither safetensors weights nor ONNX files" in message and "pytorch_model.bin" in message
    assert "gte-onnx.json" in message and "transformers.js" in message


def test_source_convert_on_an_onnx_only_repo(hub, tiny_gte_checkpoint, tiny_gte_dir, inline_graph):
    from gte_onnx.errors import UnsupportedModelError
    from gte_onnx.sources.resolve import resolve_model

    hub.add("org/onnx-only", {**meta_files(tiny_gte_checkpoint), "model.onnx": inline_graph})
    with pytest.raises(UnsupportedModelError, match="source='convert'"):
        resolve_model("org/onnx-only", source="convert", variant=None)


def test_a_repo_missing_from_the_offline_cache(hub):
    from gte_onnx.errors import ModelFolderError
    from gte_onnx.sources.resolve import resolve_model

    with pytest.raises(ModelFolderError, match=r"org/absent is not in the local hub cache .*offline"):
        resolve_model("org/absent")


def test_cli_info_on_a_hub_id_reads_only_the_manifest_and_tokenizer(hub, downloads, two_variant_dir, capsys):
    from gte_onnx.cli import main

    hub.add("org/info-me", {p.relative_to(two_variant_dir).as_posix(): p for p in two_variant_dir.rglob("*") if p.is_file()})
    assert main(["info", "org/info-me", "--offline"]) == 0
    out = capsys.readouterr().out
    assert "task embedding" in out and "int8" in out
    assert not any(name.endswith(".onnx") for name in downloads)


def test_cli_unsupported_model_is_one_clear_line(hub, tiny_gte_checkpoint, capsys):
    from gte_onnx.cli import main

    hub.add("org/nothing", meta_files(tiny_gte_checkpoint))
    assert main(["embed", "org/nothing", "hello", "--offline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: org/nothing cannot be used") and "Traceback" not in err


def test_a_variant_no_conversion_makes_is_refused_before_converting(hub, tiny_gte_checkpoint):
    from gte_onnx.errors import VariantError
    from gte_onnx.sources.resolve import resolve_model

    hub.add("org/convertible", {**meta_files(tiny_gte_checkpoint), "model.safetensors": tiny_gte_checkpoint / "model.safetensors"})
    with pytest.raises(VariantError, match=r"'bnb4' is not one a conversion makes.*source='onnx'"):
        resolve_model("org/convertible", variant="bnb4")
    assert not (hub.cache / "models--org--convertible").exists()


def test_local_files_only_never_asks_the_hub_and_an_unreachable_hub_falls_back_to_the_cache(
        hub, downloads, two_variant_dir, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    from gte_onnx.sources.resolve import resolve_model

    commit = hub.add("org/cached", {p.relative_to(two_variant_dir).as_posix(): p
                                    for p in two_variant_dir.rglob("*") if p.is_file()})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = []

    def no_network(self, repo_id, **kwargs):
        asked.append(repo_id)
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    folder = resolve_model("org/cached", local_files_only=True, variant="fp32")
    assert asked == [] and folder.name == commit and "model.onnx" in downloads
    assert resolve_model("org/cached", variant="fp32") == folder and asked == ["org/cached"]


def test_a_reranker_repo_of_onnx_files_serves_reranker(hub, tiny_reranker_dir):
    from gte_onnx import Reranker
    from gte_onnx.export.checkpoint import SHIPPED_MODEL_FILES

    shipped = SHIPPED_MODEL_FILES / "Alibaba-NLP" / "gte-reranker-modernbert-base"
    files = {name: shipped / name for name in META if (shipped / name).is_file()}
    hub.add("org/tiny-reranker", {**files, "onnx/model.onnx": tiny_reranker_dir / "model.onnx",
                                  "onnx/model.onnx.data": tiny_reranker_dir / "model.onnx.data"})
    pairs = [("what is the capital of China?", "Beijing"), ("what is the capital of China?", "sorting algorithms")]
    model = Reranker("org/tiny-reranker", threads=1)
    assert model.manifest.task == "rerank" and model.manifest.output == "logits" and model.manifest.pooling == "none"
    fp32 = model.manifest.variants["fp32"]  # the weights beside the graph came along and are vouched for
    assert fp32.data_files == ("onnx/model.onnx.data",) and set(fp32.data_integrity) == {"onnx/model.onnx.data"}
    np.testing.assert_allclose(model.predict(pairs), Reranker(tiny_reranker_dir, threads=1).predict(pairs), atol=1e-6)


def test_a_bert_optimum_repo_declares_token_type_ids_and_mean_pooling(hub, minilm_dir):
    from ..conftest import minilm_checkpoint

    checkpoint = minilm_checkpoint()
    hub.add("org/minilm-optimum", {**meta_files(checkpoint), "model.onnx": minilm_dir / "model.onnx",
                                   "model.onnx.data": minilm_dir / "model.onnx.data"})
    got, model = embed("org/minilm-optimum")
    manifest = model.manifest
    assert manifest.inputs == ("input_ids", "attention_mask", "token_type_ids") and manifest.pooling == "mean"
    assert manifest.max_length == 256 and manifest.dim == 384
    want, _ = embed(minilm_dir)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_gte_onnx_import_of_a_hub_id_downloads_only_the_named_variants(hub, downloads, tiny_gte_checkpoint,
                                                                        tiny_gte_dir, inline_graph, tmp_path):
    from gte_onnx.cli import main
    from gte_onnx.folder.manifest import Manifest

    hub.add("org/to-import", {**meta_files(tiny_gte_checkpoint), "onnx/model.onnx": inline_graph,
                              "onnx/model_fp16.onnx": b"not wanted"})
    assert main(["import", "org/to-import", str(tmp_path / "out"), "--variants", "fp32", "--offline"]) == 0
    assert "onnx/model_fp16.onnx" not in downloads
    manifest = Manifest.load(tmp_path / "out")
    assert list(manifest.variants) == ["fp32"] and manifest.source["model_id"] == "org/to-import"
    assert main(["import", "org/to-import", str(tmp_path / "other"), "--variants", "bnb4", "--offline"]) == 2
