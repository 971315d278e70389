"""What wb accepts from the files it reads: one declared schema per file.

Every file wb reads that a person, another machine or a crash may have written is checked
at the boundary, before any of its values is used:

    run_record.py   runs/<id>/run.json            (wb runs, diff-run, report, explain, import)
    cache_meta.py   .wb/cache/.../meta.json        (the compile cache)
    kernel_yaml.py  stages/<kernel>/kernel.yaml    (the registry)
    shapes_lock.py  stages/<kernel>/shapes.lock.yaml (wb shapes --check / --accept)
    memory_data.py  MEMORY.json                    (the data behind MEMORY.md's blocks)
    hosts.py        wb.yaml `hosts:` / [tool.wb.hosts]

The schemas are pydantic models (pydantic comes with typer); this module is imported only
where a file is read, so `wb --help` never pays for it. `load_json` / `load_yaml` read a
file with a size limit, as UTF-8, parse it and validate it; `check` validates data already
parsed. Every failure is a `SchemaError` (a UserError: one line, exit 2) that names the
file, the key path and what was expected, e.g.

    runs/20261203-101010-000001/run.json: verdict: Input should be a valid string, got {'x': 1}

Readers that skip a bad file (run records) catch SchemaError and warn; readers that cannot
go on without the file (kernel.yaml, hosts) let it reach the user.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from workbench.errors import UserError

T = TypeVar("T")

MiB = 1 << 20


class SchemaError(UserError):
    """A file wb reads is malformed: wrong type, missing key, too large, not UTF-8, ..."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


def short(value: Any, limit: int = 60) -> str:
    """A value as a message shows it: repr, one line, cut at `limit` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_problem(exc: Any) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
    problem = f"{where}: {first.get('msg', 'invalid')}"
    if "input" in first and first.get("type") != "missing":
        problem += f", got {short(first['input'])}"
    if len(errors) > 1:
        problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return problem


def check(model: type[T], data: Any, source: str) -> T:
    """Validate parsed data against `model`; the model instance, or SchemaError."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)  # type: ignore[attr-defined]
    except ValidationError as exc:
        raise SchemaError(source, _first_problem(exc)) from None
    except (RecursionError, ValueError, TypeError) as exc:  # absurdly nested or odd input
        raise SchemaError(source, f"{type(exc).__name__}: {short(str(exc), 120)}") from None


def read_text(path: Path, max_bytes: int, source: str | None = None, keep_bom: bool = False) -> str:
    """The file as UTF-8 text (a BOM is dropped unless `keep_bom`), refusing what is too
    large or not text."""
    source = source or str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SchemaError(source, f"cannot be read: {exc.strerror or exc}") from None
    if path.is_dir():
        raise SchemaError(source, "is a folder, not a file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise SchemaError(source, "is not a regular file")
    if size > max_bytes:
        raise SchemaError(source, f"is {size / MiB:.1f} MiB, over wb's limit of {max_bytes / MiB:.0f} MiB for this file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SchemaError(source, f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # it grew between stat and read
        raise SchemaError(source, f"is over wb's limit of {max_bytes / MiB:.0f} MiB for this file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SchemaError(source, f"is not UTF-8 text (byte {exc.start}, line {line})") from None
    return text[1:] if text.startswith("\ufeff") and not keep_bom else text


def load_json(path: Path, model: type[T], max_bytes: int, source: str | None = None) -> tuple[Any, T]:
    """(the parsed JSON, the validated model) of a JSON file."""
    source = source or str(path)
    text = read_text(path, max_bytes, source)
    try:
        data = json.loads(text)
    except RecursionError:
        raise SchemaError(source, "JSON nested too deeply") from None
    except ValueError as exc:
        raise SchemaError(source, f"not valid JSON: {exc}") from None
    return data, check(model, data, source)


def load_yaml(path: Path, model: type[T], max_bytes: int, source: str | None = None) -> tuple[Any, T]:
    """(the parsed YAML, the validated model) of a YAML file (safe_load only)."""
    import yaml

    source = source or str(path)
    text = read_text(path, max_bytes, source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SchemaError(source, f"not valid YAML: {first}") from None
    except RecursionError:
        raise SchemaError(source, "YAML nested too deeply") from None
    return data, check(model, data, source)
