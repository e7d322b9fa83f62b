"""The module graph: no import cycle among the project's modules, and the database reached only
through vpnca/store (nothing else imports sqlalchemy)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("vpnca", "enrollment", "ocsp", "hsm")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, name: str, is_package: bool) -> set[str]:
    """Every module `path` imports, at module level or inside a function (an import deferred into a
    function hides a cycle, it does not cut it); only `if TYPE_CHECKING:` blocks are left out."""
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                imported |= {alias.name for alias in inner.names}
            elif isinstance(inner, ast.ImportFrom):
                base = inner.module or ""
                if inner.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - inner.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                imported.add(base)
                imported |= {f"{base}.{alias.name}" for alias in inner.names}
    return imported


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path, name, path.name == "__init__.py") if m in modules and m != name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_among_the_project_modules() -> None:
    graph = _graph()
    # a package's __init__ re-exporting its submodules is not a cycle of the design: leave the edge
    # from a submodule to its own package's __init__ out
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    assert _cycles(graph) == []


def test_only_the_store_imports_sqlalchemy() -> None:
    offenders = sorted(name for name, path in _modules().items()
                       if not name.startswith("vpnca.store")
                       and any(m == "sqlalchemy" or m.startswith("sqlalchemy.")
                               for m in _imports(path, name, path.name == "__init__.py")))
    assert offenders == []


def test_the_checker_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
