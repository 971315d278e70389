"""Small text helpers shared by reports (Markdown) and the terminal."""

from __future__ import annotations

import json
import math
import re
from typing import Any


def fmt(x: Any, spec: str = ".4g") -> str:
    """A number for a table: formatted with `spec`, "-" when missing."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def signed(x: Any, spec: str = ".3g") -> str:
    """A difference for a table, its sign always shown; "-" when missing. An integer too large
    for a float (a record from elsewhere may hold 10**307 on one side and -10**307 on the
    other) is shown by its leading digits and its length."""
    if x is None:
        return "-"
    try:
        return format(x, "+" + spec)
    except (OverflowError, ValueError, TypeError):
        text = str(x)
        return text if len(text) <= 12 else f"{text[:6]}…({len(text.lstrip('+-'))} digits)"


def strict_json(data: Any) -> Any:
    """``data`` with every float that JSON cannot spell (NaN, +-inf) as None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(v) for v in data]
    return data


def json_or_none(text: str) -> Any:
    """``text`` as JSON, or None when it is none: cut off, not JSON, or nested past the
    decoder's limit ('[[[[...' raises RecursionError, not ValueError). For what another
    process printed (a remote host's answers)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def first_line(text: str | None, limit: int = 80) -> str:
    """The first line of ``text``, cut at ``limit`` characters (an ellipsis says so)."""
    text = (text or "").strip().splitlines()[0] if text else ""
    return text[:limit] + ("…" if len(text) > limit else "")


def decimal_int(text: str) -> int | None:
    """The whole number a string of decimal digits spells; None when it is not one, or is too
    long for int() (Python refuses over 4300 digits: a hand-edited file may hold such a key)."""
    return int(text) if text.isdecimal() and len(text) <= 4000 else None


def natural_key(text: str) -> list:
    """Sort key of natural order: runs of digits by value (n=512 before n=4096)."""
    out = []
    for word in re.split(r"(\d+)", text):
        number = decimal_int(word)
        out.append((0, number, "") if number is not None else (1, 0, word))
    return out
