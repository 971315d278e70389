"""Facts about a stage read from its module's source, without importing it (importing a stage
imports the CuTe DSL, seconds and hundreds of MB): the literal value of a class attribute of
the module's stage classes (``compile_params``, ``is_cute``, ``needs_gpu``)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

UNKNOWN = object()  #: not a literal, set differently by two classes, no class tells, or the module does not parse
_NOT_SET = object()


def class_literal(module_path: Path, name: str, default: Any = None) -> Any:
    """The literal value the module's classes give attribute ``name``. Every class that sets
    it and every class deriving from Stage alone that does not (it has Stage's ``default``)
    must agree; UNKNOWN when they do not, when a setting is not a literal, when no class
    tells (a class deriving from an imported base inherits what the source does not show),
    or the module does not parse (or is no regular file: a FIFO's read would wait forever)."""
    if not Path(module_path).is_file():
        return UNKNOWN
    try:
        tree = ast.parse(Path(module_path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return UNKNOWN
    values = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        value = _setting(cls, name)
        if value is _NOT_SET and cls.bases and all(base_name(b) == "Stage" for b in cls.bases):
            value = default
        if value is UNKNOWN:
            return UNKNOWN
        if value is not _NOT_SET:
            values.append(value)
    if not values:
        return UNKNOWN
    first = values[0]
    return first if all(v == first for v in values) else UNKNOWN


def needs_gpu(module_path: Path) -> bool | None:
    """What the stage class's ``needs_gpu`` says (Stage's default: True); None when it cannot be
    told without importing (a literal other than True/False is the import's to refuse:
    StageSpec.load)."""
    value = class_literal(module_path, "needs_gpu", True)
    return value if isinstance(value, bool) else None


def base_name(node: ast.expr) -> str | None:
    """The name a class base is written with (``Stage`` or ``workbench.Stage``: Stage)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _setting(cls: ast.ClassDef, name: str) -> Any:
    """The class body's literal value of ``name`` (its last setting); _NOT_SET when it sets
    none, UNKNOWN when it is not a literal."""
    value = _NOT_SET
    for stmt in cls.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            try:
                value = ast.literal_eval(stmt.value) if stmt.value is not None else UNKNOWN
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                value = UNKNOWN
    return value
