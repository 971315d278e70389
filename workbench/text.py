"""Small text helpers shared by reports (Markdown) and the terminal."""

from __future__ import annotations

from typing import Any


def fmt(x: Any, spec: str = ".4g") -> str:
    """A number for a table: formatted with `spec`, "-" when missing."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)
