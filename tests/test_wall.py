"""The runtime's wall: runtime/ never imports torch, transformers or the export/quantize/parity/bench subpackages,
and a fresh environment with only `.[cpu]` installed embeds texts while `import torch` fails there."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_TOP = {"torch", "transformers", "optimum", "sentence_transformers", "onnx", "onnxscript"}
FORBIDDEN_SUBPACKAGES = {"export", "quantize", "parity", "bench"}


def runtime_imports():
    for path in sorted((ROOT / "runtime").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        depth_of_pkg = len(path.relative_to(ROOT / "runtime").parts) - 1  # 0 for runtime/x.py
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    yield path, node.lineno, node.module or ""
                else:
                    # resolve the relative import against gte_onnx (= runtime/)
                    parts = ["gte_onnx"] + list(path.relative_to(ROOT / "runtime").parts[:-1])
                    base = parts[: len(parts) - (node.level - 1)] if node.level - 1 <= depth_of_pkg else ["<outside>"]
                    module = ".".join(base + ([node.module] if node.module else []))
                    if node.module is None:
                        for alias in node.names:
                            yield path, node.lineno, f"{module}.{alias.name}"
                    else:
                        yield path, node.lineno, module


def test_runtime_never_imports_torch_side_packages():
    offenders = []
    seen = 0
    for path, line, module in runtime_imports():
        seen += 1
        top = module.split(".")[0]
        parts = module.split(".")
        if top in FORBIDDEN_TOP or (top == "gte_onnx" and len(parts) > 1 and parts[1] in FORBIDDEN_SUBPACKAGES):
            offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert seen > 20, "the scan found too few imports: is it reading runtime/?"
    assert not offenders, "\n".join(offenders)


def test_the_scan_catches_a_forbidden_import(tmp_path, monkeypatch):
    # The scan must be able to fail: plant a file that imports torch lazily and one relative import of a subpackage.
    bad = ROOT / "runtime" / "_wall_probe_tmp.py"
    bad.write_text("def f():\n    import torch\n    from .export import onnx_export\n", encoding="utf-8")
    try:
        found = [m for p, _, m in runtime_imports() if p == bad]
        assert "torch" in found and "gte_onnx.export" in found
    finally:
        bad.unlink()


def _wheel_or_source() -> str:
    wheel = os.environ.get("GTE_ONNX_WHEEL")
    if wheel:
        return wheel
    return str(ROOT)


@pytest.mark.slow
def test_fresh_cpu_only_environment_embeds_and_has_no_torch(tmp_path, tiny_gte_dir):
    """Install the package (CI: the built wheel) with only the [cpu] extra into an empty venv."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    target = _wheel_or_source()
    spec = f"{target}[cpu]" if target.endswith(".whl") else f"{target}[cpu]"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec],
        capture_output=True, text=True, env=env,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        from gte_onnx import Embedder
        e = Embedder({str(tiny_gte_dir)!r})
        v = e.encode(["hello world", "a second text"])
        assert v.shape == (2, e.dim), v.shape
        mods = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'onnx'))
        print(json.dumps({{"shape": list(v.shape), "torch_spec": importlib.util.find_spec('torch') is not None,
                          "loaded": mods}}))
        """
    )
    run = subprocess.run([str(py), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert '"torch_spec": false' in run.stdout and '"loaded": []' in run.stdout, run.stdout
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, env=env).stdout.lower()
    assert "torch" not in freeze and "transformers" not in freeze, freeze


def test_missing_onnxruntime_names_the_install_command(monkeypatch):
    from gte_onnx.errors import MissingDependencyError
    from gte_onnx.session import import_onnxruntime

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'gte-onnx\[cpu\]'"):
        import_onnxruntime()


def test_import_gte_onnx_loads_nothing_heavy():
    code = "import sys, gte_onnx; print(sorted(m for m in ('onnxruntime','torch','tokenizers','numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
