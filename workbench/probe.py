"""Probes: record a tensor's layout at trace time, at no cost in the generated code.

    from workbench.probe import probe
    tBgK = probe("tBgK", tBgK)      # returns its argument unchanged

Outside `capture()` a probe does nothing. (Minimal first version; the shapes issue
extends the record with depth, dynamic extents, memory space and automatic capture.)
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

_active: list[dict] | None = None


def probe(name: str, value: Any) -> Any:
    if _active is not None:
        caller = inspect.stack()[1]
        _active.append(
            {
                "name": name,
                "location": f"{caller.filename}:{caller.lineno}",
                "layout": str(getattr(value, "layout", value)),
                "type": str(getattr(value, "type", type(value).__name__)),
            }
        )
    return value


@contextlib.contextmanager
def capture():
    """Collect every probe hit while tracing inside this block."""
    global _active
    saved, _active = _active, []
    try:
        yield _active
    finally:
        _active = saved
