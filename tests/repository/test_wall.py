"""The walls: the package graph has no cycle and no arrow against the layer order of docs/architecture.md
(scripts/package_graph.py, lazy imports included); runtime/ never imports torch, transformers, llama_cpp or a
later stage (only gte_onnx.pipeline, the first load's driver, imports convert and quantize); convert/ never
imports torch, transformers or gte_onnx.export; a fresh environment with only `.[cpu]` installed converts a
safetensors checkpoint and embeds texts while `import torch` fails there."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_TOP = {"torch", "transformers", "optimum", "sentence_transformers", "onnx", "onnxscript", "llama_cpp", "onnxslim"}
FORBIDDEN_SUBPACKAGES = {"export", "quantize", "parity", "bench", "convert"}
DRIVER = ROOT / "runtime" / "pipeline.py"  # the first load's pipeline: the one runtime module that imports stages
CONVERT_FORBIDDEN_TOP = {"torch", "transformers", "optimum", "sentence_transformers", "onnxscript"}
CONVERT_FORBIDDEN_SUBPACKAGES = {"export"}


def _module_level(tree) -> set[int]:
    """ids of the import nodes that run at import time (not inside a function)."""
    found: set[int] = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.add(id(child))
            visit(child)

    visit(tree)
    return found


def runtime_imports(subpackage: str = "runtime", package: str = "gte_onnx", with_level: bool = False):
    """(path, line, module) of every import in the subpackage's files, lazy ones included; with_level adds
    whether the import runs at module level."""
    for path in sorted((ROOT / subpackage).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        depth_of_pkg = len(path.relative_to(ROOT / subpackage).parts) - 1  # 0 for runtime/x.py
        top_level = _module_level(tree)
        for node in ast.walk(tree):
            extra = (id(node) in top_level,) if with_level else ()
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield (path, node.lineno, alias.name, *extra)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    yield (path, node.lineno, node.module or "", *extra)
                else:
                    # resolve the relative import against the subpackage's package (runtime/ = gte_onnx)
                    parts = package.split(".") + list(path.relative_to(ROOT / subpackage).parts[:-1])
                    base = parts[: len(parts) - (node.level - 1)] if node.level - 1 <= depth_of_pkg else ["<outside>"]
                    module = ".".join(base + ([node.module] if node.module else []))
                    if node.module is None:
                        for alias in node.names:
                            yield (path, node.lineno, f"{module}.{alias.name}", *extra)
                    else:
                        yield (path, node.lineno, module, *extra)


def test_runtime_never_imports_torch_side_packages():
    offenders = []
    seen = 0
    for path, line, module in runtime_imports():
        seen += 1
        top = module.split(".")[0]
        parts = module.split(".")
        stage = top == "gte_onnx" and len(parts) > 1 and parts[1] in FORBIDDEN_SUBPACKAGES
        if top in FORBIDDEN_TOP or (stage and path != DRIVER):
            offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert seen > 20, "the scan found too few imports: is it reading runtime/?"
    assert not offenders, "\n".join(offenders)


def _package_graph():
    spec = importlib.util.spec_from_file_location("package_graph", ROOT / "scripts" / "package_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_graph_has_no_cycle_and_no_arrow_against_the_layers():
    graph = _package_graph()
    edges = graph.edges()
    assert len(graph.modules()) > 100 and sum(len(t) for t in edges.values()) > 300, "the scan found too little"
    assert graph.violations(edges) == []
    assert graph.cycles(edges) == []
    assert graph.named_stage_references() == []


def test_the_graph_check_catches_an_upward_arrow_a_cycle_and_a_named_stage(tmp_path):
    """Plant a runtime module that imports a later stage lazily, two modules that import each other, and a
    runtime module that reaches a stage by name: each check must fail."""
    graph = _package_graph()
    planted = {
        ROOT / "runtime" / "_wall_probe_up.py": "def f():\n    from gte_onnx.quantize import build\n",
        ROOT / "runtime" / "_wall_probe_a.py": "from gte_onnx import _wall_probe_b\n",
        ROOT / "runtime" / "_wall_probe_b.py": "def g():\n    from gte_onnx import _wall_probe_a\n",
        ROOT / "runtime" / "_wall_probe_named.py": "import importlib\nSTAGE = importlib.import_module('gte_onnx.bench.cli')\n",
    }
    try:
        for path, text in planted.items():
            path.write_text(text, encoding="utf-8")
        edges = graph.edges()
        assert any("gte_onnx._wall_probe_up" in v and "gte_onnx.quantize.build" in v for v in graph.violations(edges))
        assert ["gte_onnx._wall_probe_a", "gte_onnx._wall_probe_b"] in graph.cycles(edges)
        assert any("_wall_probe_named" in v and "gte_onnx.bench.cli" in v for v in graph.named_stage_references())
    finally:
        for path in planted:
            path.unlink(missing_ok=True)


def test_the_scan_tells_a_lazy_converter_import_from_a_module_level_one():
    probe = ROOT / "runtime" / "_wall_probe_lazy_tmp.py"
    probe.write_text("from gte_onnx.convert import converter\n\ndef f():\n    from .convert import onnx_import\n",
                     encoding="utf-8")
    try:
        found = {(m, top) for p, _, m, top in runtime_imports(with_level=True) if p == probe}
        assert found == {("gte_onnx.convert", True), ("gte_onnx.convert", False)}, found
    finally:
        probe.unlink()


def test_convert_never_imports_torch_or_export():
    offenders = []
    seen = 0
    for path, line, module in runtime_imports("convert", "gte_onnx.convert"):
        seen += 1
        parts = module.split(".")
        if parts[0] in CONVERT_FORBIDDEN_TOP or (parts[0] == "gte_onnx" and len(parts) > 1
                                                  and parts[1] in CONVERT_FORBIDDEN_SUBPACKAGES):
            offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert seen > 20, "the scan found too few imports: is it reading convert/?"
    assert not offenders, "\n".join(offenders)


def test_convert_and_what_it_loads_run_with_torch_blocked():
    """Every convert module and the quantize and parity code the converter calls import with torch,
    transformers and gte_onnx.export made unimportable."""
    modules = sorted(f"gte_onnx.convert.{p.stem}" for p in (ROOT / "convert").glob("*.py") if p.stem != "__init__")
    code = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {sorted(CONVERT_FORBIDDEN_TOP | {"gte_onnx.export"})!r}:
            sys.modules[name] = None  # import of a None entry raises ImportError
        for name in {modules + ["gte_onnx.quantize.build", "gte_onnx.quantize.int8", "gte_onnx.quantize.fidelity"]!r}:
            importlib.import_module(name)
        from gte_onnx.quantize.build import calibration_texts
        assert calibration_texts(8)
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') and sys.modules[m]))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_the_scan_catches_a_forbidden_import(tmp_path, monkeypatch):
    # The scan must be able to fail: plant a file that imports torch lazily and one relative import of a subpackage.
    bad = ROOT / "runtime" / "_wall_probe_tmp.py"
    bad.write_text("from .convert import converter\n\ndef f():\n    import torch\n    from .export import onnx_export\n",
                   encoding="utf-8")
    try:
        found = {m: top for p, _, m, top in runtime_imports(with_level=True) if p == bad}
        assert found == {"gte_onnx.convert": True, "torch": False, "gte_onnx.export": False}, found
    finally:
        bad.unlink()


def _wheel_or_source() -> str:
    wheel = os.environ.get("GTE_ONNX_WHEEL")
    if wheel:
        return wheel
    return str(ROOT)


@pytest.fixture
def tiny_fp16_checkpoint(tmp_path):
    """A tiny gte saved as fp16 safetensors, as the released weights are (made here, where torch is)."""
    import torch

    from gte_onnx.export.checkpoint import load_checkpoint, save_checkpoint

    from ..conftest import GTE_ID, TINY_OVERRIDES

    ckpt = load_checkpoint(GTE_ID, random_weights=True, seed=0, config_overrides=TINY_OVERRIDES)
    ckpt.model.to(torch.float16)
    return save_checkpoint(ckpt, tmp_path / "tiny-fp16-ckpt")


@pytest.mark.slow
def test_fresh_cpu_only_environment_embeds_and_has_no_torch(tmp_path, tiny_gte_dir, tiny_fp16_checkpoint):
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
    convert = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from gte_onnx import Embedder
        from gte_onnx.convert import convert_checkpoint
        out = convert_checkpoint(Path({str(tiny_fp16_checkpoint)!r}), Path({str(tmp_path / "converted")!r}),
                                 variants=("int8",), log=lambda _m: None)
        e = Embedder(out, variant="auto")
        v = e.encode(["hello world", "a second text"])
        assert v.shape == (2, e.dim), v.shape
        manifest = json.loads((out / "gte-onnx.json").read_text())
        assert manifest["validation"]["reference"] == "numpy", manifest["validation"]
        assert manifest["variants"]["int8"]["fidelity"]["passed"] is True
        ranking = manifest["speed_ranking"]["CPUExecutionProvider"]  # measured by the conversion
        assert e.variant == ranking[0], (e.variant, ranking)
        print(json.dumps({{"variant": e.variant, "torch": [m for m in sys.modules if m.split('.')[0] == 'torch']}}))
        """
    )
    run = subprocess.run([str(py), "-c", convert], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert '"torch": []' in run.stdout, run.stdout
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, env=env).stdout.lower()
    assert "torch" not in freeze and "transformers" not in freeze, freeze


def test_missing_onnxruntime_names_the_install_command(monkeypatch):
    from gte_onnx.errors import MissingDependencyError
    from gte_onnx.inference.session import import_onnxruntime

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'gte-onnx\[cpu\]'"):
        import_onnxruntime()


def test_import_gte_onnx_loads_nothing_heavy():
    code = "import sys, gte_onnx; print(sorted(m for m in ('onnxruntime','torch','tokenizers','numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
