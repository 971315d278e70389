"""The house rules of docs/architecture.md that code can check: imports point down the
architecture's list of folders and modules (so the library never imports the CLI), and no two
modules of workbench/ import each other, directly or around a circle (lazy imports inside
functions count: they tie the modules just the same)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


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


def architecture_order(text: str) -> list[str]:
    """The package's folders and top-level modules in the order docs/architecture.md lists
    them (its "Folders" block: the entries one level under workbench/)."""
    block = text[text.index("    workbench/ "):]
    block = block[: block.index("\n    stages/")]
    return [m.group(1) for m in re.finditer(r"^      ([a-z_]+)(?:/|\.py)\s", block, re.M)]


def upward_imports(graph: dict[str, set[str]], order: list[str]) -> list[str]:
    """Imports from an entry of the list to one listed above it ("a -> b"); a module the
    list does not name is one too (the list must name every room)."""
    def place(module: str) -> int:
        top = module.split(".")[1] if "." in module else ""
        return order.index(top) if top in order else -1

    out = []
    for mod, deps in sorted(graph.items()):
        if mod == "workbench.__main__" or mod == "workbench":  # `python -m workbench`, and the package's face
            continue
        if place(mod) < 0:
            out.append(f"{mod}: not in docs/architecture.md's list")
        out += [f"{mod} -> {d}" for d in sorted(deps) if place(d) < place(mod)]
    return out


def test_imports_point_down_the_architecture():
    order = architecture_order(ARCHITECTURE.read_text(encoding="utf-8"))
    assert order[:2] == ["entry", "cli"]
    assert upward_imports(import_graph(), order) == []


def test_the_layer_check_sees_an_upward_import_and_an_unlisted_module(tmp_path, monkeypatch):
    pkg = tmp_path / "workbench"
    for folder in ("records", "run"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "records" / "importer.py").write_text("def f():\n    from workbench.run import bench\n")
    (pkg / "run" / "bench.py").write_text("from workbench.records import importer\n")
    (pkg / "extra.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    found = upward_imports(import_graph(), ["run", "records"])
    assert found == ["workbench.extra: not in docs/architecture.md's list", "workbench.records.importer -> workbench.run.bench"]


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


def test_the_cli_loads_no_pydantic_before_a_file_is_read():
    """architecture.md: schemas/' pydantic models load when a file is read (about 0.15 s of
    every start). remote/sweep.py imported schemas.hosts at its top, and cli/render.py (every
    `wb run`'s progress) imports remote/sweep.py: pydantic loaded on each run."""
    import subprocess
    import sys

    code = "import sys, workbench.cli, workbench.cli.render; print('pydantic' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
