"""The import structure: no import cycle anywhere in the project, imports made by string included.

``lint-imports`` (contracts in pyproject.toml, run by .ci/run) checks that arrows point down the layers;
it reads only import statements. This test reads the same graph (grimp, the library under import-linter)
and adds the imports made by string: a module that calls ``importlib.import_module`` (or ``__import__``)
imports every project module that one of its string constants names (``"pkg.mod"`` or ``"pkg.mod:attr"``).

    pytest tests/test_layers.py -q
"""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

from core.paths import REPO_ROOT

PACKAGES = ("core", "model", "inference", "curation", "evaluation", "trainers", "demo", "pipelines")
_IMPORT_CALLS = {"import_module", "__import__"}


def string_imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules named by string constants in a file that imports by string."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
             for node in ast.walk(tree) if isinstance(node, ast.Call)}
    if not calls & _IMPORT_CALLS:
        return set()
    named = {node.value.partition(":")[0] for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return named & modules


def import_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> project modules it imports (statements anywhere in the file, and by string)."""
    graph = grimp.build_graph(*packages, cache_dir=None)
    modules = set(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}
    for m in modules:
        origin = importlib.util.find_spec(m).origin
        edges[m] |= string_imports(Path(origin), modules) - {m}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; a self-import counts too."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def describe(component: list[str], edges: dict[str, set[str]]) -> str:
    inside = set(component)
    return "; ".join(f"{m} -> {', '.join(sorted(edges[m] & inside))}" for m in component)


def test_the_import_contracts_hold():
    """The same check .ci/run makes first, so a plain pytest run catches an upward import too."""
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in out.stdout


def test_the_project_has_no_import_cycle():
    edges = import_graph(PACKAGES)
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(describe(c, edges) for c in found)


def test_string_imports_are_edges():
    """The CLI loads its command modules by string; those are imports like any other."""
    edges = import_graph(PACKAGES)
    assert "pipelines.commands.data" in edges["pipelines.cli"]


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A package ``planted``: a imports b with a statement, b imports a by string; c stands apart."""
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from planted import b\n")
    (pkg / "b.py").write_text(textwrap.dedent("""\
        import importlib

        def load():
            return importlib.import_module("planted.a")
        """))
    (pkg / "c.py").write_text("import planted.b\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "planted"
    for name in [n for n in sys.modules if n == "planted" or n.startswith("planted.")]:
        del sys.modules[name]


def test_a_planted_cycle_through_a_string_import_is_found(planted):
    edges = import_graph((planted,))
    assert edges["planted.b"] == {"planted.a"}  # the string import, found
    assert cycles(edges) == [["planted.a", "planted.b"]]


def test_without_the_string_import_there_is_no_cycle(planted, tmp_path):
    (tmp_path / "planted" / "b.py").write_text("def load():\n    return 'planted.a'\n")  # a string, no import
    assert cycles(import_graph((planted,))) == []
