"""The house rules of docs/architecture.md that code can check: the library never imports the
CLI, and no two modules of workbench/ import each other, directly or around a circle (lazy
imports inside functions count: they tie the modules just the same)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The workbench module an import of ``name`` loads (its longest known prefix)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the workbench modules it imports anywhere in its body. Left out: the package
    __init__ files that run on the way to a submodule, and a package's __init__ importing its
    own submodules (cli/__init__ registers its command modules, which take `app` from it:
    the package's face, not a tie between two rooms)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for target in targets:
                if not target.startswith("workbench"):
                    continue
                found = _resolve(target, modules)
                if not found or found in (mod, "workbench"):
                    continue
                if path.name == "__init__.py" and found.startswith(mod + "."):
                    continue
                graph[mod].add(found)
    # `from workbench.x import y` names workbench.x.y (when y is a module) and workbench.x:
    # the package itself counts only where nothing inside it was meant
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if not any(o.startswith(d + ".") for o in deps)}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_library_never_imports_the_cli():
    graph = import_graph()
    offenders = {m: sorted(d for d in deps if d.startswith("workbench.cli")) for m, deps in graph.items() if not m.startswith("workbench.cli")}
    top = ("workbench.__main__", "workbench.entry")  # the `wb` command's way in: above the CLI
    assert not {m: d for m, d in offenders.items() if d and m not in top}


def test_no_import_circles():
    assert _circles(import_graph()) == []


def test_the_checks_see_a_circle_and_a_lazy_import(tmp_path, monkeypatch):
    """The checker itself: a lazy import inside a function closes a circle it reports."""
    pkg = tmp_path / "workbench"
    (pkg / "records").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "records" / "__init__.py").write_text("")
    (pkg / "records" / "store.py").write_text("def f():\n    from workbench.run import procs\n")
    (pkg / "run").mkdir()
    (pkg / "run" / "__init__.py").write_text("")
    (pkg / "run" / "procs.py").write_text("from workbench.records.store import f\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    assert _circles(import_graph()) == [["workbench.records.store", "workbench.run.procs"]]
