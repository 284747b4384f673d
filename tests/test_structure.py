"""The package's shape, read from its source with ``ast``: no import cycles among the ``tppo``
modules, no function over 80 lines (its docstring left out), no module over 600 lines."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tppo"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600

KNOWN_CYCLES: list[set[str]] = []
"""Import cycles (as the sets of modules that import each other) that other changes remove."""

LONG_MODULES: set[str] = set()
"""Modules allowed over the line limit for now."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every ``tppo`` module ``path`` imports, wherever the import stands: at the top, inside a
    function (it runs when the function is called) or under ``if TYPE_CHECKING:`` (the type checker
    follows it). ``from tppo.x import y`` counts as ``tppo.x.y`` when that is a module, else ``tppo.x``;
    a relative import is resolved against the importing module's package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found |= {f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names}
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imported_modules(path, known) for name, path in modules().items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of ``graph`` with more than one module: each is a set of
    modules every one of which imports (directly or not) every other (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = {stack.pop()}
            while node not in component:
                component.add(stack.pop())
            if len(component) > 1:
                out.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_cycles_are_found_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(map(sorted, cycles(graph))) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_imports_are_read_wherever_they_stand(tmp_path, monkeypatch):
    package = tmp_path / "tppo"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import leaf\n")
    (package / "sub" / "leaf.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tppo.b import B\n"
        "def f():\n    import tppo.sub.leaf\n    from tppo import sub\n"
    )
    (package / "b.py").write_text("from tppo.a import f\nfrom .sub.leaf import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    graph = import_graph()
    assert graph["tppo.a"] == {"tppo.b", "tppo.sub.leaf", "tppo.sub"}
    assert graph["tppo.b"] == {"tppo.a", "tppo.sub.leaf"}
    assert graph["tppo.sub"] == {"tppo.sub.leaf"}
    assert cycles(graph) == [{"tppo.a", "tppo.b"}]


def test_the_package_has_no_import_cycles():
    """Imports inside functions and under ``TYPE_CHECKING`` count too: a deferred import still
    makes two modules depend on each other (it only hides the loop from the interpreter until the
    call), and a ``TYPE_CHECKING`` one ties them for the type checker and the reader."""
    found = cycles(import_graph())
    assert [sorted(c) for c in found if c not in KNOWN_CYCLES] == []
    # the allow-list names only cycles that are still there (delete an entry once it is gone)
    assert [sorted(c) for c in KNOWN_CYCLES if c not in found] == []


def function_lengths(path: Path) -> dict[str, int]:
    """``name:line`` -> lines of each function (methods and nested ones too) in ``path``: from its
    first decorator or ``def`` to its last line, its docstring left out (comments and blank lines
    inside count: they are what a reader scrolls through)."""
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = (node.end_lineno or node.lineno) - first + 1
            doc = node.body[0]
            if (
                isinstance(doc, ast.Expr)
                and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str)
            ):
                lines -= (doc.end_lineno or doc.lineno) - doc.lineno + 1
            out[f"{node.name}:{node.lineno}"] = lines
    return out


def test_function_lengths_leave_out_the_docstring(tmp_path):
    path = tmp_path / "m.py"
    source = (
        'def f(\n    x,\n):\n    """Doc\n    string."""\n\n    # a comment\n    return [\n        x,\n    ]\n'
    )
    path.write_text("@decorator\n" + source + "\n\nclass C:\n    def g(self):\n        return 1\n")
    assert function_lengths(path) == {"f:2": 9, "g:15": 2}


@pytest.mark.parametrize("name", sorted(modules()))
def test_functions_are_at_most_80_lines(name):
    long = {f: n for f, n in function_lengths(modules()[name]).items() if n > MAX_FUNCTION_LINES}
    assert not long, f"{name}: {long}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_are_at_most_600_lines(name):
    lines = len(modules()[name].read_text().splitlines())
    # an allowed module is still long (delete its entry once it is not)
    assert (lines > MAX_MODULE_LINES) == (name in LONG_MODULES), f"{name}: {lines} lines"
