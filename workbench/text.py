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
    """``data`` with every float that JSON cannot spell (NaN, +-inf) as None. Without
    recursion: a record's free-form fields may nest as deep as its reader allows (about a
    thousand levels), past what Python's stack takes at two frames a level."""
    def plain(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {}
        if isinstance(value, (list, tuple)):
            return []
        return value

    top = plain(data)
    pending = [(data, top)] if isinstance(top, (dict, list)) else []
    while pending:
        source, copy = pending.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, value in items:
            new = plain(value)
            if isinstance(copy, dict):
                copy[key] = new
            else:
                copy.append(new)
            if isinstance(new, (dict, list)):
                pending.append((value, new))
    return top


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


def cut_middle(text: str, limit: int, sep: str = "\n") -> str:
    """``text`` cut to about ``limit`` characters, its head and tail kept (where an error's
    message and its last frames are) and, between them after ``sep``, how much was left out."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}{sep}… ({len(text) - 2 * half} characters left out) …{sep}{text[-half:]}"


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
