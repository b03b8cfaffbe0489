"""gte-onnx's own cache: model folders built from hub repos or local folders, one per source and revision.

    <cache>/models--org--name/<kind>/<commit>/        kind: converted (from safetensors) | imported (ONNX files)
    <cache>/local/<folder name>-<fingerprint>/<kind>/  the same for a local folder

A folder is built in a temporary sibling and renamed into place when complete, under a lock file, so a
crash leaves only a `.tmp-*` folder (removed by the next build) and two processes never interleave.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

from gte_onnx.errors import ModelFolderError
from gte_onnx.sources.hub import repo_folder_name
from gte_onnx.folder.manifest import MANIFEST_NAME

TMP_PREFIX = ".tmp-"
# Seconds to wait for another process building the same folder before giving up.
LOCK_TIMEOUT = 3600.0


def hub_entry(root: Path, repo_id: str, kind: str, commit: str) -> Path:
    return root / repo_folder_name(repo_id) / kind / commit


def local_entry(root: Path, folder: Path, files: list[str], kind: str) -> Path:
    """Keyed on the folder's resolved path and a fingerprint of its files (name, size, mtime), so an
    edited or replaced checkpoint is rebuilt."""
    folder = folder.resolve()
    digest = hashlib.sha256(str(folder).encode())
    for name in sorted(files):
        stat = (folder / name).stat()
        digest.update(f"\0{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return root / "local" / f"{folder.name}-{digest.hexdigest()[:16]}" / kind


def is_complete(folder: Path) -> bool:
    return (folder / MANIFEST_NAME).is_file()


@contextlib.contextmanager
def build_lock(target: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """An exclusive lock beside the target folder (fcntl on POSIX; elsewhere rename-wins alone protects)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f"{target.name}.lock"
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the atomic rename still keeps folders whole
        yield
        return
    with open(lock_path, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ModelFolderError(f"another process holds {lock_path} for over {timeout:.0f} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_stale_builds(target: Path) -> None:
    """Temporary folders left by crashed builds of this target (called under the lock, so none is live)."""
    for stale in target.parent.glob(f"{TMP_PREFIX}{target.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def build_atomically(target: Path, build: Callable[[Path], object], replace: bool = False) -> Path:
    """Run build(tmp) into a temporary sibling and rename it to `target` once it returns.

    With the lock held, a target that another process completed meanwhile is returned as is (unless
    `replace`: a rebuild with more variants, which swaps the old folder out in two renames).
    """
    with build_lock(target):
        if is_complete(target) and not replace:
            return target
        remove_stale_builds(target)
        tmp = target.parent / f"{TMP_PREFIX}{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            build(tmp)
            if not is_complete(tmp):
                raise ModelFolderError(f"building {target} ended without writing {MANIFEST_NAME}")
            if target.exists():
                old = target.parent / f"{TMP_PREFIX}{target.name}-old-{uuid.uuid4().hex[:8]}"
                os.rename(target, old)
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
