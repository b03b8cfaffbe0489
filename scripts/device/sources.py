"""Make `import gte_onnx` work from this checkout without pip (the lent machine has no index to build from).

pyproject.toml maps folders to packages (runtime -> gte_onnx, export -> gte_onnx.export, ...); this copies
each folder to where that mapping puts it under DEST, so DEST on sys.path imports exactly this tree.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def package_dirs(root: Path = ROOT) -> dict[str, str]:
    import tomllib  # Python 3.11+: the device has 3.12, this repository's venv 3.11

    data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = data["tool"]["setuptools"]["package-dir"]
    if "gte_onnx" not in mapping:
        raise ValueError("pyproject.toml maps no folder to the gte_onnx package")
    return dict(mapping)


def stage_sources(dest: Path, root: Path = ROOT) -> Path:
    """Copy the packages to DEST (replacing an earlier copy) and return DEST."""
    dest = Path(dest)
    target = dest / "gte_onnx"
    if target.exists():
        shutil.rmtree(target)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    # Parents first, so a subpackage folder lands inside its parent's copy.
    for package, folder in sorted(package_dirs(root).items(), key=lambda kv: kv[0].count(".")):
        where = dest.joinpath(*package.split("."))
        shutil.copytree(root / folder, where, ignore=ignore, dirs_exist_ok=True)
    return dest


def use_sources(dest: Path) -> None:
    """Stage the sources and put them first on sys.path (before any gte_onnx import)."""
    stage_sources(dest)
    if str(dest) not in sys.path:
        sys.path.insert(0, str(dest))
