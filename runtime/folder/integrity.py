"""The integrity of a model folder's files: sha256 and size as the manifest records them, paths confined to
the folder, and a cache of digests already checked so a load does not re-hash its ONNX file every time.

Hashing the 137 MB int8 gte file costs ~0.3 s and the 600 MB fp32 one over a second. A digest is reused
only while the file's stat is exactly the one recorded when it was hashed (size, mtime_ns, ctime_ns, inode,
device): any write changes mtime and ctime, a replaced file has a new inode, so a changed file is always
re-hashed. Files changed within the last RACY_SECONDS are not recorded (git's "racy" rule). The cache is
verified.json in the cache root, replaced atomically; an unreadable or corrupt cache means the file is
hashed, never that it is trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from gte_onnx.folder.manifest import Variant

from gte_onnx.defaults import cache_root
from gte_onnx.errors import IntegrityError, ModelFolderError

CACHE_FILE = "verified.json"
RACY_SECONDS = 2.0
MAX_ENTRIES = 256  # oldest dropped first; a few model folders need a handful each


def _fingerprint(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino, "device": st.st_dev}


def read_json_dict(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; {} when it is missing, unreadable or not an object (a cache is never trusted)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, entries: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verified.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(entries, fh)
        os.replace(tmp, path)
    except OSError:  # read-only home, full disk: the next load hashes again
        try:
            os.unlink(tmp)  # type: ignore[possibly-undefined]
        except (OSError, NameError):
            pass


def file_digest(path: str | os.PathLike, compute: Callable[[Path], str]) -> str:
    """The sha256 of `path`: the cached one while the file's stat is unchanged, else `compute(path)`."""
    path = Path(path).resolve()
    key = str(path)
    st = path.stat()
    fingerprint = _fingerprint(st)
    store = cache_root() / CACHE_FILE
    entries = read_json_dict(store)
    entry = entries.get(key)
    if isinstance(entry, dict) and entry.get("stat") == fingerprint and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = compute(path)
    after = path.stat()
    changed_since = time.time() - max(after.st_mtime, after.st_ctime)
    if _fingerprint(after) == fingerprint and changed_since > RACY_SECONDS:
        entries.pop(key, None)
        entries[key] = {"stat": fingerprint, "sha256": digest}
        while len(entries) > MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        _write(store, entries)
    return digest


# ---- file integrity ---------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_file(folder: str | os.PathLike, relative: str) -> dict[str, Any]:
    """sha256 and size of one file of the folder, as the manifest records them."""
    path = Path(folder) / relative
    return {"file": relative, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def describe_data_files(folder: str | os.PathLike, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The data_integrity entries of a variant's external data files."""
    out = {}
    for name in names:
        described = describe_file(folder, name)
        out[name] = {"sha256": described["sha256"], "bytes": described["bytes"]}
    return out


def resolve_inside(folder: str | os.PathLike, relative: str) -> Path:
    """The path of a file named by the manifest or by ONNX external data, refusing any that escapes.

    The check is on the path as written (no `..`, not absolute), not on where symlinks lead: a hub cache
    snapshot is a folder of symlinks into the repo's blob store, and its files are still the folder's.
    """
    root = Path(folder).resolve()
    target = Path(os.path.normpath(root / relative))
    if os.path.isabs(relative) or not target.is_relative_to(root):
        raise IntegrityError(
            f"{relative!r} points outside the model folder {root}; refusing to read it"
        )
    return target


def _check_file(path: Path, variant: Variant, relative: str, size: int, sha256: str) -> None:
    """Size, then sha256 (from the verified-file cache while the file's stat is unchanged)."""
    try:
        actual = path.stat().st_size
        if actual != size:
            raise IntegrityError(
                f"variant {variant.name!r}: {relative} has {actual} bytes but the manifest says {size}"
            )
        digest = file_digest(path, sha256_file)
    except OSError as exc:  # present but unreadable: permissions, an I/O error, a file that vanished
        raise ModelFolderError(
            f"variant {variant.name!r}: cannot read {path} to check its sha256 ({exc.strerror or exc})"
        ) from exc
    if digest != sha256:
        raise IntegrityError(
            f"variant {variant.name!r}: sha256 of {relative} is {digest}, the manifest says "
            f"{sha256}; the file was changed or corrupted"
        )


def verify_variant(folder: str | os.PathLike, variant: Variant) -> Path:
    """Check the variant's file against the manifest (size, then sha256) and return its path. The digest
    of a file whose stat has not changed since it was last hashed comes from the verified-file cache."""
    path = resolve_inside(folder, variant.file)
    if not path.is_file():
        raise ModelFolderError(f"variant {variant.name!r}: file {variant.file} is missing from {folder}")
    _check_file(path, variant, variant.file, variant.bytes, variant.sha256)
    for data_file in variant.data_files:
        data_path = resolve_inside(folder, data_file)
        if not data_path.is_file():
            raise ModelFolderError(f"variant {variant.name!r}: external data {data_file} is missing")
        entry = variant.data_integrity.get(data_file)
        if entry is not None:
            _check_file(data_path, variant, data_file, entry["bytes"], entry["sha256"])
    return path
