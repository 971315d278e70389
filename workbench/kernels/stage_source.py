"""Facts about a stage read from its module's source, without importing it (importing a stage
imports the CuTe DSL, seconds and hundreds of MB): the literal value of a class attribute of
the classes deriving from Stage (``compile_params``, ``is_cute``)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from workbench.gpu import base_name

UNKNOWN = object()  #: not a literal, set differently by two Stage classes, or the module does not parse


def class_literal(module_path: Path, name: str, default: Any = None) -> Any:
    """The literal value the module's Stage classes give attribute ``name``; ``default`` when
    none sets it; UNKNOWN when it cannot be told without importing."""
    try:
        tree = ast.parse(Path(module_path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return UNKNOWN
    values = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        if not any(base_name(b) == "Stage" for b in cls.bases):
            continue
        value = default
        for stmt in cls.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                try:
                    value = ast.literal_eval(stmt.value) if stmt.value is not None else UNKNOWN
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    value = UNKNOWN
        values.append(value)
    if not values:
        return UNKNOWN
    first = values[0]
    return first if all(v is not UNKNOWN and v == first for v in values) else UNKNOWN

