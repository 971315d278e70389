"""Probes: record a tensor's layout at trace time, at no cost in the generated code.

    from workbench.compile.probe import probe
    tBgK = probe("tBgK", tBgK)      # returns its argument unchanged

Use it in `@cute.jit` and `@cute.kernel` code alike. A probe runs while the DSL traces
the kernel (Python executes once, at compile time), reads the value's layout the way
the DSL prints it, and emits no IR: the compiled kernel is the same with or without it.
Outside `capture()` a probe does nothing but return its argument.

Each hit becomes one record (a plain dict, JSON-ready):

    name, stage, kind="probe", location (/abs/file.py:LINE), source (the line's text),
    what (tensor | coord_tensor | smem_desc | layout | composed_layout | tuple | ...),
    layout (exactly as the DSL prints it), type (the value as the DSL prints it),
    shape, rank (top-level modes), depth, modes (per-mode shape), dynamic (paths of
    dynamic extents, "1" or "0.1"), size (None when dynamic), dtype, memspace
    (gmem | smem | rmem | coord), swizzle, count (hits with the same record)

Tuples (e.g. a TMA partition's (smem, gmem) pair) record each element as `name[i]`.
Automatically captured ops (see workbench.compile.trace) produce records of the same form with
kind="op".
"""

from __future__ import annotations

import contextlib
import linecache
import sys
from typing import Any, Iterator

from workbench.compile.layouts import describe_layout, describe_type

_active: "Capture | None" = None

# Python names of DSL element types -> the MLIR names the traced IR prints.
_DTYPE_NAMES = {
    "BFloat16": "bf16",
    "Float16": "f16",
    "Float32": "f32",
    "Float64": "f64",
    "TFloat32": "tf32",
    "Int8": "i8",
    "Int16": "i16",
    "Int32": "i32",
    "Int64": "i64",
    "Uint8": "ui8",
    "Uint16": "ui16",
    "Uint32": "ui32",
    "Uint64": "ui64",
    "Boolean": "i1",
    "Float8E4M3FN": "f8E4M3FN",
    "Float8E5M2": "f8E5M2",
}


class Capture:
    """Records collected while tracing inside `capture()`."""

    def __init__(self, stage: str | None = None):
        self.stage = stage
        self.records: list[dict] = []
        self._index: dict[tuple, dict] = {}

    def add(self, record: dict) -> None:
        if self.stage and not record.get("stage"):
            record["stage"] = self.stage
        key = (record.get("kind"), record["name"], record["location"], record["layout"], record.get("type"))
        seen = self._index.get(key)
        if seen is not None:
            seen["count"] += 1
            return
        record.setdefault("count", 1)
        self._index[key] = record
        self.records.append(record)


def probe(name: str, value: Any) -> Any:
    """Record `value`'s layout under `name` while a capture is active; return `value`."""
    active = _active
    if active is None:
        return value
    try:
        frame = sys._getframe(1)
        location = (frame.f_code.co_filename, frame.f_lineno)
    except ValueError:
        location = ("<unknown>", 0)
    try:
        for record in describe_value(name, value, location):
            active.add(record)
    except Exception as exc:  # a probe must never break a trace
        active.add(_record(name, location, {"what": "error", "layout": f"<probe failed: {type(exc).__name__}: {exc}>"}))
    return value


def describe_value(name: str, value: Any, location: tuple[str, int]) -> list[dict]:
    """Records for one probed value (several for a tuple)."""
    if isinstance(value, (tuple, list)) and value and not _looks_like_int_tuple(value):
        out = []
        for i, item in enumerate(value):
            out += describe_value(f"{name}[{i}]", item, location)
        return out
    return [_record(name, location, _facts(value))]


def _looks_like_int_tuple(value: Any) -> bool:
    """A shape or coordinate such as (64, 64, Int32(?)) rather than a tuple of tensors."""
    return all(isinstance(v, (int, tuple, list)) or type(v).__name__ in ("Int32", "Int64", "IntTuple") for v in value)


def _dtype_name(element_type: Any) -> str | None:
    if element_type is None:
        return None
    name = getattr(element_type, "__name__", None) or str(element_type)
    return _DTYPE_NAMES.get(name, name)


def _facts(value: Any) -> dict[str, Any]:
    """what/layout/type/dtype/memspace/swizzle of a DSL value."""
    kind = type(value).__name__
    if hasattr(value, "layout") and hasattr(value, "iterator"):  # a cute.Tensor
        layout = str(value.layout)
        text = str(value)
        try:
            memspace = value.memspace
        except Exception:  # coordinate tensors have none
            memspace = None
        facts = {
            "what": "tensor",
            "layout": layout,
            "type": text,
            "dtype": None,
            "memspace": str(memspace) if memspace is not None else None,
            "swizzle": None,
        }
        try:
            facts["dtype"] = _dtype_name(value.element_type)
        except Exception:
            pass
        iterator = text[len("tensor<") : text.rfind(" o " + layout)] if text.startswith("tensor<") else ""
        if "OpResult(" in iterator or "smem_desc" in iterator:
            facts.update(what="smem_desc", type=f"tensor<smem_desc o {layout}>", memspace="smem", dtype=None)
        elif iterator.startswith("ptr<"):
            for part in iterator[4:-1].split(", "):
                if part.startswith("S<"):
                    facts["swizzle"] = part.rstrip(">") + ">" if not part.endswith(">") else part
        elif iterator:
            facts.update(what="coord_tensor", memspace="coord", dtype=None)
        return facts
    if kind in ("_ComposedLayout", "ComposedLayout"):
        return {"what": "composed_layout", "layout": str(value), "type": str(value)}
    if kind in ("_Layout", "Layout"):
        return {"what": "layout", "layout": str(value), "type": str(value)}
    if kind in ("TiledMma", "TiledCopy", "CopyAtom", "MmaAtom") or kind.endswith(("Atom", "TiledMma", "TiledCopy")):
        return {"what": kind, "layout": "", "type": str(value)}
    return {"what": kind, "layout": str(value), "type": str(value)}


def _source_line(filename: str, line: int) -> str:
    linecache.checkcache(filename)  # the file may have changed since this process last read it
    return linecache.getline(filename, line).strip() if line else ""


def _record(name: str, location: tuple[str, int], facts: dict[str, Any]) -> dict:
    filename, line = location
    record: dict[str, Any] = {
        "name": name,
        "stage": None,
        "kind": "probe",
        "op": None,
        "location": f"{filename}:{line}",
        "source": _source_line(filename, line),
        "what": facts.get("what"),
        "layout": facts.get("layout", ""),
        "type": facts.get("type"),
        "dtype": facts.get("dtype"),
        "memspace": facts.get("memspace"),
        "swizzle": facts.get("swizzle"),
    }
    if facts.get("what") in ("tensor", "coord_tensor", "smem_desc", "layout", "composed_layout") and facts.get("layout"):
        record.update(describe_layout(facts["layout"]))
    else:
        record.update(shape=None, rank=None, depth=None, modes=None, dynamic=None, size=None)
    return record


def record_from_type(name: str, location: str, source: str, type_str: str, op: str) -> dict | None:
    """A kind="op" record for a traced op's result (see workbench.compile.trace)."""
    facts = describe_type(type_str)
    if facts is None:
        return None
    record: dict[str, Any] = {
        "name": name,
        "stage": None,
        "kind": "op",
        "op": op,
        "location": location,
        "source": source,
        "what": facts["what"],
        "layout": facts["layout"],
        "type": facts["type"],
        "dtype": facts["dtype"],
        "memspace": facts["memspace"],
        "swizzle": facts["swizzle"],
    }
    record.update(describe_layout(facts["layout"]))
    return record


def record_key(record: dict) -> str:
    """name@file of a record (no line number: moving code is not a shape change)."""
    location = record.get("location") or ""
    filename = location.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{record['name']}@{filename}"


def with_keys(records: list[dict]) -> list[dict]:
    """Records with a stable `key`: name@file for probes, name@file~op for captured ops,
    #k appended for the k-th repeat of the same key."""
    seen: dict[str, int] = {}
    out = []
    for r in records:
        base = record_key(r) + ("" if r.get("kind", "probe") == "probe" else f"~{r.get('op')}")
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append({**r, "key": base if n == 0 else f"{base}#{n + 1}"})
    return out


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No probe records inside this block (a stage's second build of the same code, whose
    probes would list every tensor twice in `wb shapes`)."""
    global _active
    saved, _active = _active, None
    try:
        yield
    finally:
        _active = saved


@contextlib.contextmanager
def capture(stage: str | None = None) -> Iterator[list[dict]]:
    """Collect every probe hit while tracing inside this block (records tagged with `stage`)."""
    global _active
    saved, _active = _active, Capture(stage)
    try:
        yield _active.records
    finally:
        _active = saved


def active_capture() -> Capture | None:
    return _active
