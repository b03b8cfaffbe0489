"""The import graph of the gte_onnx package and its layer rules (docs/architecture.md).

    python scripts/package_graph.py            # layers, arrows between them, and any cycle or violation
    python scripts/package_graph.py --modules  # every module's imports inside the package

Every import counts, including the lazy ones inside functions: a lazy import still makes the importing
module depend on the imported one. Exits 1 when a rule is broken; tests/repository/test_wall.py runs the same checks.
Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> package, as pyproject.toml's package-dir maps them (runtime/ is gte_onnx itself)
FOLDERS = {"runtime": "gte_onnx", "convert": "gte_onnx.convert", "export": "gte_onnx.export",
           "parity": "gte_onnx.parity", "quantize": "gte_onnx.quantize", "bench": "gte_onnx.bench"}

# The stages, lowest first. A module may import its own layer and the layers before it, never a later one.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("runtime", ("gte_onnx",)),  # everything of gte_onnx not named below: the torch-free package users install
    ("convert", ("gte_onnx.convert",)),
    ("export", ("gte_onnx.export",)),
    ("parity", ("gte_onnx.parity",)),
    ("quantize", ("gte_onnx.quantize",)),
    ("bench", ("gte_onnx.bench",)),
    ("pipeline", ("gte_onnx.pipeline",)),  # the first load's driver: may import every stage
)
# The runtime's own groups, lowest first (the same rule inside the runtime layer). "gte_onnx" alone is the
# package's __init__, whose lazy attributes (Embedder, Reranker, Manifest) sit above everything it offers.
RUNTIME_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("gte_onnx.errors", "gte_onnx.defaults", "gte_onnx.progress")),
    ("folder", ("gte_onnx.folder",)),
    ("inference", ("gte_onnx.inference",)),
    ("sources", ("gte_onnx.sources",)),
    ("api", ("gte_onnx.loaded_model", "gte_onnx.embedder", "gte_onnx.reranker", "gte_onnx.precision")),
    ("cli-options", ("gte_onnx.cli.options", "gte_onnx.cli.errors")),
    ("apps", ("gte_onnx.corpus", "gte_onnx.ray", "gte_onnx.server")),
    ("cli", ("gte_onnx.cli",)),
    ("package", ("gte_onnx",)),
)
# Arrows against the order that are allowed, each with its reason. Nothing else may point up.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("gte_onnx.convert", "gte_onnx.pipeline"):
        "gte_onnx.convert.convert_checkpoint, the public name of the whole build, forwards to the pipeline",
}


# Runtime modules that may name a later stage in a string (reached with importlib, never imported): the CLI's
# verb table, and the source resolver, which builds a folder on a hub id's first load.
NAMED_STAGE_HOLDERS = {"gte_onnx.cli", "gte_onnx.sources.resolve"}
STAGE_NAME = re.compile(r"^gte_onnx\.(pipeline|convert|export|parity|quantize|bench)\b")


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if folder == "runtime" and parts[0] in FOLDERS:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.stem == "__init__" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def edges(mods: dict[str, Path] | None = None) -> dict[str, dict[str, int]]:
    """module -> {imported module inside the package: first line}, lazy imports included."""
    mods = modules() if mods is None else mods
    graph: dict[str, dict[str, int]] = defaultdict(dict)

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, path, node)
                # `from pkg import submodule` depends on the submodule, not on pkg/__init__
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            for target in targets:
                found = owner(target) if target.startswith("gte_onnx") else None
                if found and found != module:
                    graph[module].setdefault(found, node.lineno)
    return graph


def _rank(module: str, table, root_exact: bool = False) -> tuple[int, str]:
    best = (-1, "", 0)
    for index, (name, prefixes) in enumerate(table):
        for prefix in prefixes:
            below = module.startswith(prefix + ".") and not (root_exact and prefix == "gte_onnx")
            if (module == prefix or below) and len(prefix) > best[2]:
                best = (index, name, len(prefix))
    return best[0], best[1]


def layer(module: str) -> tuple[int, str]:
    return _rank(module, LAYERS)


def group(module: str) -> tuple[int, str]:
    return _rank(module, RUNTIME_GROUPS, root_exact=True)


def violations(graph=None) -> list[str]:
    """Every arrow against the layer order (or the runtime's group order) not in ALLOWED_UPWARD."""
    graph = edges() if graph is None else graph
    found = []
    for src, targets in sorted(graph.items()):
        for dst, line in sorted(targets.items()):
            (ls, lname), (ld, dname) = layer(src), layer(dst)
            upward = ld > ls
            if not upward and ls == ld == 0:
                (gs, gname), (gd, dname) = group(src), group(dst)
                upward, lname = gd > gs, gname
            if upward and (src, dst) not in ALLOWED_UPWARD:
                found.append(f"{src}:{line} ({lname}) imports {dst} ({dname}), a later layer")
    return found


def named_stage_references() -> list[str]:
    """String constants naming a later stage (an importlib target) in runtime modules other than
    NAMED_STAGE_HOLDERS: such a name is an arrow the import graph cannot see."""
    found = []
    for module, path in modules().items():
        if layer(module)[1] != "runtime" or module in NAMED_STAGE_HOLDERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and STAGE_NAME.match(node.value):
                found.append(f"{module}:{node.lineno} names {node.value!r}")
    return found


def cycles(graph=None) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = edges() if graph is None else graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {w for ts in graph.values() for w in ts}):
        if v not in index:
            visit(v)
    return found


def main(argv: list[str]) -> int:
    mods = modules()
    graph = edges(mods)
    if "--modules" in argv:
        for module in sorted(mods):
            print(f"{module}: {', '.join(sorted(graph.get(module, {}))) or '-'}")
        return 0
    arrows: dict[tuple[str, str], int] = defaultdict(int)
    for src, targets in graph.items():
        for dst in targets:
            a, b = layer(src)[1], layer(dst)[1]
            if a == b == "runtime":
                a, b = f"runtime.{group(src)[1]}", f"runtime.{group(dst)[1]}"
            if a != b:
                arrows[(a, b)] += 1
    print("layers, lowest first: " + " <- ".join(name for name, _ in LAYERS))
    print("runtime groups, lowest first: " + " <- ".join(name for name, _ in RUNTIME_GROUPS))
    print(f"{len(mods)} modules, {sum(len(t) for t in graph.values())} imports inside the package\n")
    print("arrows between layers (importer -> imported: imports):")
    for (a, b), count in sorted(arrows.items()):
        print(f"  {a:<18} -> {b:<18} {count}")
    print("\nallowed upward arrows:")
    for (src, dst), why in ALLOWED_UPWARD.items():
        print(f"  {src} -> {dst}: {why}")
    print("\nruntime modules that reach a stage by name (importlib): " + ", ".join(sorted(NAMED_STAGE_HOLDERS)))
    bad, loops = violations(graph) + named_stage_references(), cycles(graph)
    print(f"\nviolations: {len(bad)}")
    for line in bad:
        print("  " + line)
    print(f"cycles: {len(loops)}")
    for loop in loops:
        print("  " + " <-> ".join(loop))
    return 1 if bad or loops else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
