"""Layering: no import cycles among ``lumos`` modules, function-level imports included.

Every module under ``src/lumos`` is parsed (not imported), every ``import lumos...`` /
``from lumos... import ...`` anywhere in it (module level, inside functions, under
``TYPE_CHECKING``) becomes an edge, and the strongly-connected components of that graph must all
be single modules without a self-edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lumos

ROOT = Path(lumos.__file__).parent


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """``lumos.a.b`` -> its file, for every ``.py`` under ``root`` (packages by ``__init__``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = ("lumos", *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """``module -> {imported lumos module: first line}``. ``from P import x`` points at ``P.x``
    when that is a module, else at ``P``; relative imports are resolved against the package."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                # `import lumos.a.b` names lumos.a.b; an unknown tail (an attribute) falls back to its parent
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("lumos") and target in modules:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly-connected components with more than one module, plus self-imports."""

    def reachable(start: str) -> set[str]:
        seen, stack = set(), list(graph[start])
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(graph.get(node, ()))
        return seen

    reach = {name: reachable(name) for name in graph}
    components, done = [], set()
    for name in sorted(graph):
        if name in done or name not in reach[name]:
            continue
        component = sorted(m for m in reach[name] if name in reach[m])
        done.update(component)
        components.append(component)
    return components


def describe(component: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    edges = [
        f"{a} -> {b} ({modules[a].relative_to(ROOT.parent)}:{line})"
        for a in component
        for b, line in graph[a].items()
        if b in component
    ]
    return "cycle among " + ", ".join(component) + ":\n    " + "\n    ".join(edges)


def test_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "lumos"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from lumos.sub.b import g\n    return g\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import lumos.sub.a\n")
    (pkg / "sub" / "d.py").write_text("from lumos.sub.a import f\n")
    modules = module_names(pkg)
    graph = import_graph(modules)
    assert graph["lumos.sub.a"] == {"lumos.sub.b": 2}
    assert graph["lumos.sub.b"] == {"lumos.sub.c": 1}
    assert cycles(graph) == [["lumos.sub.a", "lumos.sub.b", "lumos.sub.c"]]
    (pkg / "sub" / "c.py").write_text("import torch\n")
    assert cycles(import_graph(module_names(pkg))) == []


def test_no_import_cycles():
    modules = module_names()
    graph = import_graph(modules)
    found = cycles(graph)
    assert not found, "\n".join(describe(c, graph, modules) for c in found)


def modules_loaded_by(imports: str, watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` are in ``sys.modules`` after ``import <imports>`` in a fresh
    interpreter."""
    code = f"import sys, {imports}\nprint(sorted(m for m in {watched!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout.strip())


def test_parsing_a_training_config_does_not_import_the_model():
    watched = ("lumos.model.transformer", "lumos.training.objective")
    assert modules_loaded_by("lumos.training.config", watched) == []


def test_generation_does_not_import_the_compiler():
    """``torch._dynamo`` (with sympy) adds about 70 MB of resident memory at import; generation
    without ``compile=True`` and the CLI must not pay it (it showed as peak RSS in
    ``benchmarks/bench_generation.py``)."""
    imports = "lumos, lumos.generation.pipeline, lumos.cli.main, lumos.cli.generate, "
    imports += "lumos.training.objective"
    assert modules_loaded_by(imports, ("torch._dynamo", "sympy")) == []
