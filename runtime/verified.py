"""A cache of file digests already checked, so loading a model does not re-hash its ONNX file every time.

Hashing the 137 MB int8 gte file costs ~0.3 s and the 600 MB fp32 one over a second, on every load. A
digest is reused only while the file's stat is exactly the one recorded when it was hashed: size,
mtime_ns, ctime_ns, inode and device. Any write changes mtime and ctime (ctime cannot be set back by
the user, unlike mtime), a replaced file has a new inode, so a changed file is always re-hashed.

Files changed within the last RACY_SECONDS are not recorded: a write in the same timestamp tick as the
hash could otherwise leave the stat unchanged (git's "racy" rule).

The cache lives in $GTE_ONNX_CACHE, else $XDG_CACHE_HOME/gte-onnx, else ~/.cache/gte-onnx, as
verified.json, replaced atomically. It is only ever an optimisation: an unreadable, corrupt or
unwritable cache means the file is hashed, never that it is trusted.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .cache import cache_root

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
