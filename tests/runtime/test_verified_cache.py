"""The verified-file cache: a load skips re-hashing only while the file's stat is unchanged."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from gte_onnx.folder import integrity as verified
from gte_onnx.errors import IntegrityError
from gte_onnx.folder.manifest import Variant
from gte_onnx.folder.integrity import verify_variant


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GTE_ONNX_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"weights " * 1000)
    return model


@pytest.fixture
def hashes(monkeypatch):
    """Counts the real sha256 computations verify_variant asks for."""
    calls = []
    real = verified.sha256_file

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(verified, "sha256_file", counting)
    return calls


def variant_of(folder) -> Variant:
    data = (folder / "model.onnx").read_bytes()
    return Variant(name="fp32", file="model.onnx", sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))


def test_unchanged_file_is_hashed_once(folder, hashes, monkeypatch):
    monkeypatch.setattr(verified, "RACY_SECONDS", -60.0)  # the file was just written
    variant = variant_of(folder)
    for _ in range(3):
        assert verify_variant(folder, variant) == folder / "model.onnx"
    assert len(hashes) == 1
    stored = json.loads((verified.cache_root() / verified.CACHE_FILE).read_text())
    assert list(stored.values())[0]["sha256"] == variant.sha256


def test_same_size_change_is_rehashed_and_refused_even_with_the_old_mtime(folder, hashes, monkeypatch):
    monkeypatch.setattr(verified, "RACY_SECONDS", -60.0)
    variant = variant_of(folder)
    path = folder / "model.onnx"
    verify_variant(folder, variant)
    before = path.stat()
    path.write_bytes(b"tampered" * 1000)  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime set back; ctime cannot be
    with pytest.raises(IntegrityError, match="sha256"):
        verify_variant(folder, variant)
    assert len(hashes) == 2
    with pytest.raises(IntegrityError, match="sha256"):  # and stays refused
        verify_variant(folder, variant)


def test_new_mtime_or_inode_means_a_new_hash(folder, hashes, monkeypatch):
    monkeypatch.setattr(verified, "RACY_SECONDS", -60.0)
    variant = variant_of(folder)
    path = folder / "model.onnx"
    verify_variant(folder, variant)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    verify_variant(folder, variant)
    copy = folder / "copy.onnx"
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)  # same bytes, another inode
    verify_variant(folder, variant)
    assert len(hashes) == 3


def test_recently_changed_files_are_not_recorded(folder, hashes):
    variant = variant_of(folder)  # written just now: inside the default racy window
    verify_variant(folder, variant)
    verify_variant(folder, variant)
    assert len(hashes) == 2
    assert not (verified.cache_root() / verified.CACHE_FILE).exists()


def test_a_corrupt_or_forged_cache_is_never_trusted(folder, hashes, monkeypatch):
    monkeypatch.setattr(verified, "RACY_SECONDS", -60.0)
    variant = variant_of(folder)
    store = verified.cache_root() / verified.CACHE_FILE
    store.parent.mkdir(parents=True)
    store.write_text("{not json")
    verify_variant(folder, variant)
    entries = json.loads(store.read_text())
    key = next(iter(entries))
    entries[key]["stat"]["mtime_ns"] += 1  # an entry for another state of the file
    entries[key]["sha256"] = "0" * 64
    store.write_text(json.dumps(entries))
    assert verify_variant(folder, variant) == folder / "model.onnx"
    assert len(hashes) == 2


def test_an_unwritable_cache_still_verifies(folder, hashes, monkeypatch, tmp_path):
    monkeypatch.setattr(verified, "RACY_SECONDS", -60.0)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("GTE_ONNX_CACHE", str(blocker / "cache"))
    variant = variant_of(folder)
    verify_variant(folder, variant)
    verify_variant(folder, variant)
    assert len(hashes) == 2
