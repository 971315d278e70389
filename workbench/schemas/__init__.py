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
import re
import sys
from pathlib import Path
from typing import Any, TypeVar

from workbench.errors import UserError

T = TypeVar("T")

MiB = 1 << 20

# What a run record keeps, checked where the values come in too (a parameter on the command
# line, WB_GIT_* from the environment): a record that its own reader refuses is a lost run.
PARAM_TEXT_MAX = 1000  # a text parameter's value (run_record.Scalar; kernel.yaml's defaults and choices): a varlen batch's lengths
CONTROL_CHARS = r"\x00-\x1f\x7f"
COMMIT_PATTERN = r"^[0-9A-Za-z._+-]{1,64}$"  # provenance.commit
LINE_MAX = 1000  # run_record.Line: one value shown in a table or MEMORY.md
_CONTROL_RE = re.compile(f"[{CONTROL_CHARS}]")


def fits_param_text(text: str) -> bool:
    """Can a run record keep ``text`` as a parameter's value (run_record.Scalar)?"""
    return len(text) <= PARAM_TEXT_MAX and not _CONTROL_RE.search(text)


class SchemaError(UserError):
    """A file wb reads is malformed: wrong type, missing key, too large, not UTF-8, ..."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


def short(value: Any, limit: int = 60) -> str:
    """A value as a message shows it: repr, one line, cut at `limit` characters. Only the
    start of the repr is ever built: a value of millions of items costs what its first
    `limit` characters do."""
    text, cut = _repr_start(value, 4 * limit)
    text = " ".join(text.split())
    return text if len(text) <= limit and not cut else text[: limit - 1] + "…"


def _repr_start(value: Any, budget: int) -> tuple[str, bool]:
    """(repr(value) or its start of at least `budget` characters, whether it was cut)."""
    parts: list[str] = []
    left = budget

    def put(text: str) -> bool:
        nonlocal left
        parts.append(text)
        left -= len(text)
        return left > 0

    def walk(v: Any, depth: int) -> bool:  # False once the budget is spent
        if type(v) in (list, tuple, dict):
            if depth >= 100:
                return put("…")
            items = list(v.items()) if type(v) is dict else v
            if type(v) is tuple and len(v) == 1:
                return put("(") and walk(v[0], depth + 1) and put(",)")
            if not put({list: "[", tuple: "(", dict: "{"}[type(v)]):
                return False
            for i, item in enumerate(items):
                if i and not put(", "):
                    return False
                if type(v) is dict:
                    if not (walk(item[0], depth + 1) and put(": ") and walk(item[1], depth + 1)):
                        return False
                elif not walk(item, depth + 1):
                    return False
            return put({list: "]", tuple: ")", dict: "}"}[type(v)])
        if isinstance(v, (str, bytes)) and len(v) > budget:
            return put(repr(v[: budget + 1])[:-1])
        try:
            return put(repr(v))
        except (ValueError, RecursionError):  # an int past str()'s digit limit, ...
            return put(f"<{type(v).__name__}>")

    whole = walk(value, 0)
    return "".join(parts), not whole and left <= 0


def yaml_problem(exc: Exception) -> str:
    """A YAML parser error in a line: where (line N) and what, as the file's reader names it."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1})" if mark else ""
    return f"not valid YAML{where}: {getattr(exc, 'problem', None) or ' '.join(str(exc).split())[:160] or type(exc).__name__}"


def _first_problem(exc: Any) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
    problem = f"{where}: {first.get('msg', 'invalid')}"
    if "input" in first and first.get("type") != "missing" and "got" not in (first.get("ctx") or {}):  # (a message of ours names it)
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


#: the most digits of an integer in a JSON file: more is past a float's range (1.8e308), and
#: every reader that divides, formats or compares it with a float raises OverflowError
MAX_INT_DIGITS = 308


class _HugeInteger(Exception):
    pass


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _HugeInteger(digits)
    return int(digits)


def load_json(path: Path, model: type[T], max_bytes: int, source: str | None = None) -> tuple[Any, T]:
    """(the parsed JSON, the validated model) of a JSON file."""
    source = source or str(path)
    text = read_text(path, max_bytes, source)
    try:
        data = json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise SchemaError(source, "JSON nested too deeply") from None
    except _HugeInteger as exc:
        raise SchemaError(source, f"an integer of {len(str(exc).lstrip('-'))} digits, past what wb reads ({MAX_INT_DIGITS})") from None
    except ValueError as exc:
        raise SchemaError(source, f"not valid JSON: {exc}") from None
    return data, check(model, data, source)


#: what YAML aliases may add to a document, in nodes: an alias is a reference, so a few
#: hundred bytes of aliases to aliases ("billion laughs") expand to billions of nodes for
#: anything that walks the data (validation, repr); wb's own files use none or a few
MAX_ALIAS_NODES = 100_000


def safe_load_yaml(text: str, source: str) -> Any:
    """yaml.safe_load(text), refusing a document whose aliases expand past MAX_ALIAS_NODES
    nodes or refer to a node that holds them (SchemaError), before anything is built from
    it. Every YAML file wb reads goes through here. yaml.YAMLError passes to the caller."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        return _load_checked(loader, source)
    except RecursionError:
        raise SchemaError(source, "YAML nested too deeply") from None
    finally:
        loader.dispose()


def _load_checked(loader: Any, source: str) -> Any:
    node = loader.get_single_node()  # the node graph: an alias is the same node again
    if node is None:
        return None
    sizes: dict[int, int] = {}
    expanded = _expanded_nodes(node, sizes, set())
    if expanded is None:
        raise SchemaError(source, "a YAML alias refers to a node that holds it (a loop); wb refuses it")
    if expanded - len(sizes) > MAX_ALIAS_NODES:
        raise SchemaError(source, f"its YAML aliases expand to over {MAX_ALIAS_NODES:,} nodes (an alias bomb?); wb refuses it")
    twice = _key_given_twice(node, set())
    if twice is not None:
        raise SchemaError(source, twice)
    try:
        return loader.construct_document(node)
    except ValueError as exc:  # e.g. an integer of more digits than int() takes
        if "int_max_str_digits" in str(exc):  # not Python's advice to the programmer
            raise SchemaError(source, f"not valid YAML: an integer of over {sys.get_int_max_str_digits()} digits") from None
        raise SchemaError(source, f"not valid YAML: {' '.join(str(exc).split())[:160]}") from None


def _key_given_twice(node: Any, seen: set[int]) -> str | None:
    """'line N: the key K is given twice ...' for the first mapping that repeats a key (YAML
    keeps the last one without a word: a second `timeout:` silently replaced the first), or
    None. Each distinct node is visited once (aliases are the same node)."""
    if id(node) in seen or not isinstance(node.value, list):
        return None
    seen.add(id(node))
    if node.id == "mapping":
        keys: set[tuple[str, Any]] = set()
        for key, _ in node.value:
            if key.id != "scalar" or key.tag == "tag:yaml.org,2002:merge":
                continue
            if (key.tag, key.value) in keys:
                return f"line {key.start_mark.line + 1}: the key {key.value!r} is given twice (YAML would keep only the last)"
            keys.add((key.tag, key.value))
    for child in node.value:
        for part in child if isinstance(child, tuple) else (child,):
            found = _key_given_twice(part, seen)
            if found is not None:
                return found
    return None


def _expanded_nodes(node: Any, sizes: dict[int, int], open_: set[int]) -> int | None:
    """How many nodes `node` is with every alias expanded (None: an alias loop). Each
    distinct node is counted once (`sizes`), so the cost is the document's size."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        return None
    total = 1
    if isinstance(node.value, list):  # a sequence (nodes) or a mapping ((key, value) pairs)
        open_.add(key)
        for child in node.value:
            for part in child if isinstance(child, tuple) else (child,):
                size = _expanded_nodes(part, sizes, open_)
                if size is None:
                    return None
                total += size
        open_.discard(key)
    sizes[key] = total
    return total


def load_yaml(path: Path, model: type[T], max_bytes: int, source: str | None = None) -> tuple[Any, T]:
    """(the parsed YAML, the validated model) of a YAML file (safe_load_yaml)."""
    import yaml

    source = source or str(path)
    text = read_text(path, max_bytes, source)
    try:
        data = safe_load_yaml(text, source)
    except yaml.YAMLError as exc:
        raise SchemaError(source, yaml_problem(exc)) from None
    return data, check(model, data, source)
