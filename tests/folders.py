"""Model-folder copies for tests that damage files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_copy(src: Path, dst: Path) -> Path:
    """A copy of a model folder whose files are hard links (cheap, and not symlinks, which the runtime would
    refuse as pointing outside the folder); edit its files only by replacing them, never by writing through.
    Weights files (ONNX external data, `*.data`) are copied: onnx.load refuses one with several links (its
    hard-link attack check), and the shared fixture's own file would gain one."""
    def link(a, b):
        if str(a).endswith(".data"):
            shutil.copy2(a, b)
            return
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)
    return dst
