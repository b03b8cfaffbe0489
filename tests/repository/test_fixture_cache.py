"""The built-fixture cache (GTE_ONNX_TEST_CACHE) never hands back a folder made by other code."""

from __future__ import annotations

import shutil

import pytest

from tests import conftest


@pytest.fixture
def sources_copy(tmp_path, monkeypatch):
    """conftest's fingerprint pointed at a private copy of the builders' sources (converter and exporter)."""
    for source in conftest.BUILDER_SOURCES:
        origin, copy = conftest.ROOT / source, tmp_path / source
        copy.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, copy, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(origin, copy)
    monkeypatch.setattr(conftest, "ROOT", tmp_path)
    conftest._builder_fingerprint.cache_clear()
    yield tmp_path
    conftest._builder_fingerprint.cache_clear()


def test_cache_key_follows_the_sources_and_the_arguments(sources_copy):
    arguments = {"model": "Alibaba-NLP/gte-modernbert-base", "seed": 0, "config_overrides": {"hidden_size": 64}}
    key = conftest.cache_key(**arguments)
    assert conftest.cache_key(**arguments) == key
    assert conftest.cache_key(**{**arguments, "seed": 1}) != key
    assert conftest.cache_key(**{**arguments, "config_overrides": {"hidden_size": 32}}) != key

    writer = sources_copy / "convert" / "modernbert_graph.py"
    writer.write_text(writer.read_text(encoding="utf-8") + "\n# a change to the graph writer\n", encoding="utf-8")
    conftest._builder_fingerprint.cache_clear()
    changed = conftest.cache_key(**arguments)
    assert changed != key

    (sources_copy / "export" / "new_module.py").write_text("X = 1\n", encoding="utf-8")  # a new file counts too
    conftest._builder_fingerprint.cache_clear()
    assert conftest.cache_key(**arguments) not in (key, changed)

    keys = {key, changed, conftest.cache_key(**arguments)}
    for driver in ("runtime/pipeline.py", "export/checkpoint.py"):  # the converter's driver; the checkpoint writer
        (sources_copy / driver).write_text((sources_copy / driver).read_text(encoding="utf-8") + "\n# changed\n",
                                           encoding="utf-8")
        conftest._builder_fingerprint.cache_clear()
        assert conftest.cache_key(**arguments) not in keys
        keys.add(conftest.cache_key(**arguments))
