"""MEMORY.md: the team's memory. Hand-written text is never modified.

wb owns only the lines between `<!-- wb:begin NAME -->` and `<!-- wb:end NAME -->` (blocks
`status`, `speed`, `shapes`, `log`). The log block is its own data (one line per run). The
other three are short renderings for a person; their data lives in MEMORY.json beside
MEMORY.md (beside its target when MEMORY.md is a link), written by wb, committed with it,
validated on every read (workbench/schemas/memory_data.py). A MEMORY.md from before
MEMORY.json kept that data in a `<!-- wb:data {...} -->` line inside each block: the first
update moves it into MEMORY.json (MEMORY.json's entry wins where both have one) and renders
the blocks anew.

Every update takes a file lock, re-reads both files, writes MEMORY.json and then replaces
MEMORY.md atomically (keeping its mode, a symlink, a byte-order mark and CRLF line endings);
if MEMORY.md cannot be written, MEMORY.json is put back as it was. Every byte outside the
blocks is kept as it is; a new block is appended at the end.

The markers must be well formed: each begin has its end, no block inside another, no block
twice. A marker inside a closed code fence (``` or ~~~) is an example in the hand text, not a
marker. When they are not well formed (a hand edit broke them), wb stops with one line naming the lines
and writes nothing: it never guesses which text is whose. A line typed *inside* a block (not
wb's rendering) is kept, moved just below the block.

Values from run records (parameters, stage names, cards) are escaped before they reach the
file: one line each, no HTML or table syntax, at most a few hundred characters.
`wb note` appends a dated lesson to the Lessons section (it adds, never rewrites).
"""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

from workbench.errors import UserError
from workbench.records.provenance import short_commit
from workbench.text import decimal_int, natural_key, strict_json
from workbench.files import Changed, atomic_write_text, held_lock
from workbench.schemas import read_text
from workbench.workspace import Workspace

MARKER_RE = re.compile(r"^[ \t]*<!--[ \t]*wb:(begin|end)[ \t]+([A-Za-z0-9_-]+)[ \t]*-->[ \t]*\r?\n?$")
DATA_RE = re.compile(r"^<!-- wb:data (.*) -->$")
LOG_CAP = 100
MAX_BYTES = 64 << 20
BOM = "\ufeff"
BLOCK_TITLES = {"status": "Status", "shapes": "Verified shapes", "speed": "Speed", "log": "Run log"}

TEMPLATE = """# MEMORY

The team's memory of results and lessons for this workspace. Write freely anywhere outside
the `wb:begin`/`wb:end` blocks: wb never touches hand-written text. The blocks are rewritten
by wb (`wb run`, `wb shapes --accept`, `wb bench`) from their data in MEMORY.json;
`wb note "..." --stage c` adds a lesson.

## Lessons

"""


class MarkerError(UserError):
    """MEMORY.md's wb markers are broken; wb changes nothing until a person fixes them."""


def cell(value: Any, limit: int = 200) -> str:
    """A value from a record as one safe line of Markdown: control characters and line
    breaks become spaces, `<` and `|` cannot open a comment or a table cell, and it is cut
    at `limit` characters."""
    text = one_line(value).replace("<", "&lt;").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(value: Any) -> str:
    """`value` as text on one line: control characters (a terminal's escape sequences), line
    breaks and other separators become spaces, and runs of spaces one."""
    text = "".join(" " if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in str(value))
    return " ".join(text.split())


@dataclass
class _Block:
    name: str
    begin: int  # line index of the begin marker
    end: int  # line index of the end marker


def split_lines(text: str) -> list[str]:
    """Lines with their endings; only \\n ends a line (a lone \\r or a form feed is text)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def _scan(lines: list[str], source: str = "MEMORY.md") -> dict[str, _Block]:
    """The blocks by name; MarkerError (naming the lines) when the markers are not well formed."""
    blocks: dict[str, _Block] = {}
    open_at: tuple[int, str] | None = None

    def broken(problem: str) -> MarkerError:
        return MarkerError(
            f"{source}: wb's markers are broken: {problem}; fix those lines by hand (wb changes nothing until then)"
        )

    quoted = _fenced(lines, closed_only=True)  # a marker shown in a code example is hand text
    for i, line in enumerate(lines):
        m = MARKER_RE.match(line)
        if not m or i in quoted:
            continue
        kind, name = m.group(1), m.group(2)
        if kind == "begin":
            if open_at is not None:
                raise broken(f"line {i + 1} begins block '{name}' inside block '{open_at[1]}' begun at line {open_at[0] + 1}")
            if name in blocks:
                b = blocks[name]
                raise broken(f"block '{name}' appears twice (lines {b.begin + 1}-{b.end + 1} and from line {i + 1})")
            open_at = (i, name)
        elif open_at is None:
            raise broken(f"line {i + 1} ends block '{name}', which was never begun")
        elif open_at[1] != name:
            raise broken(f"line {i + 1} ends block '{name}' while block '{open_at[1]}' begun at line {open_at[0] + 1} is open")
        else:
            blocks[name] = _Block(name, open_at[0], i)
            open_at = None
    if open_at is not None:
        raise broken(f"block '{open_at[1]}' begun at line {open_at[0] + 1} has no end")
    return blocks


def _render_block(name: str, content: str) -> list[str]:
    body = content if content.endswith("\n") or not content else content + "\n"
    return [f"<!-- wb:begin {name} -->\n", *split_lines(body), f"<!-- wb:end {name} -->\n"]


def block_content(text: str, name: str) -> str | None:
    lines = split_lines(text)
    block = _scan(lines).get(name)
    if block is None:
        return None
    return "".join(lines[block.begin + 1 : block.end]).replace("\r\n", "\n")


@dataclass
class BlockEdit:
    """How to rewrite one block: new content from the old, and which old lines wb wrote."""

    update: Callable[[str | None], str]
    owned: Callable[[str], set[str]]


def newline_of(text: str) -> str:
    """The file's line ending: CRLF when most of its lines end so."""
    crlf = text.count("\r\n")
    return "\r\n" if crlf and crlf >= text.count("\n") - crlf else "\n"


def rewrite(text: str, edits: dict[str, BlockEdit], source: str = "MEMORY.md") -> str:
    """Apply block edits to the file's text. Every line outside the edited blocks stays as it
    is; a line found inside an edited block that wb did not render is kept just below it;
    blocks that do not exist yet are appended. wb's own lines take the file's line ending."""
    nl = newline_of(text)
    lines = split_lines(text)
    blocks = _scan(lines, source)
    replaced: dict[int, list[str]] = {}
    skip: set[int] = set()
    for name, edit in edits.items():
        block = blocks.get(name)
        if block is None:
            continue
        old_lines = lines[block.begin + 1 : block.end]
        old = "".join(old_lines).replace("\r\n", "\n")
        owned = edit.owned(old)
        foreign = [line for line in old_lines if not _owned(line, owned)]
        replaced[block.begin] = [_ending(line, nl) for line in _render_block(name, edit.update(old))] + foreign
        skip.update(range(block.begin + 1, block.end + 1))
    out: list[str] = []
    for i, line in enumerate(lines):
        if i in replaced:
            out.extend(replaced[i])
        elif i not in skip:
            out.append(line)
    for name in (n for n in edits if n not in blocks):
        if out and not out[-1].endswith("\n"):
            out[-1] += nl
        if out and out[-1].strip():
            out.append(nl)
        out.extend(_ending(line, nl) for line in _render_block(name, edits[name].update(None)))
    return "".join(out)


def _ending(line: str, nl: str) -> str:
    return line[:-1] + nl if line.endswith("\n") and not line.endswith("\r\n") else line


def _owned(line: str, owned: set[str]) -> bool:
    """Blank lines carry no hand-written bytes worth keeping; others must be wb's own."""
    return not line.strip() or line.rstrip("\r\n") in owned


def read_memory(path: Path) -> tuple[str, bool]:
    """(text without a byte-order mark, whether it had one); TEMPLATE when there is no file.
    A folder, a file over 64 MiB or one that is not UTF-8 is one UserError."""

    try:
        text = read_text(path, MAX_BYTES, keep_bom=True)
    except FileNotFoundError:
        return TEMPLATE, False
    if text.startswith(BOM):
        return text[1:], True
    return text, False


def data_path(path: Path) -> Path:
    """MEMORY.json: beside MEMORY.md, or beside its target when MEMORY.md is a link (so a
    shared MEMORY.md shares its data)."""
    import os

    return Path(os.path.realpath(path)).with_suffix(".json")


def _read_raw(path: Path) -> bytes | None:
    """The file's bytes (to put back or to notice a change); None when there are none to
    read (read_data then says why, in one line, when it is not simply missing)."""
    from workbench.schemas.memory_data import MAX_BYTES as DATA_MAX

    try:  # a FIFO would block, a link to /dev/urandom never end: only a regular file of bounded size
        if not path.is_file() or path.stat().st_size > DATA_MAX:
            return None
        return path.read_bytes()
    except OSError:
        return None


def read_data(path: Path) -> dict[str, Any]:
    """MEMORY.json's data, validated; {} when there is none. A broken file is one SchemaError
    (wb writes neither file until a person fixes or restores it: its data is not lost)."""
    from workbench.schemas import SchemaError, load_json
    from workbench.schemas.memory_data import MAX_BYTES as DATA_MAX, MemoryData

    try:
        data, _ = load_json(path, MemoryData, DATA_MAX)
    except FileNotFoundError:
        return {}
    except SchemaError as exc:
        raise SchemaError(exc.source, f"{exc.problem}; fix it or restore it (git checkout), wb changes neither it nor MEMORY.md until then") from None
    return data


def last_runs(ws: Workspace, stages: dict[str, Iterable[str]]) -> dict[str, dict[str, Any]]:
    """Each stage's last run, as MEMORY.md's status counts it (not a run of an injected bug:
    a ``bug`` variant or a value of ``stages[stage]``, the stage's wrong-on-purpose words):
    {"verdict", "id", "from"} -- the newest such record in runs/ ("runs"), else the one
    MEMORY.json's status block remembers ("MEMORY.json": committed, so a fresh clone knows
    what the team verified where). A MEMORY.json that does not read is left out here (the
    commands that write it say what is wrong with it)."""
    from workbench.records.store import iter_records

    wanted = set(stages)
    found: dict[str, dict[str, Any]] = {}
    for record in iter_records(ws.runs_dir):
        stage = record.get("stage")
        if (
            stage in wanted and stage not in found and record.get("kind", "run") == "run"
            and not injects_a_bug(record, stages[stage])
        ):
            found[stage] = {"verdict": record.get("verdict"), "id": record.get("id"), "from": "runs"}
            if len(found) == len(wanted):
                return found
    try:
        remembered = read_data(data_path(ws.memory_path)).get("status") or {}
    except UserError:
        remembered = {}
    for stage in wanted - set(found):
        entry = remembered.get(stage)
        if isinstance(entry, dict) and entry.get("verdict"):
            found[stage] = {"verdict": entry["verdict"], "id": entry.get("last_run"), "from": "MEMORY.json"}
    return found


def _dump_data(data: dict[str, Any]) -> str:
    from workbench.schemas.memory_data import VERSION

    out = {"version": VERSION, **{k: v for k, v in data.items() if k != "version"}}
    # a NaN typed into MEMORY.json is read back, but written as null: the file stays strict JSON
    return json.dumps(strict_json(out), indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def _locked_edit(ws: Workspace, path: Path, edit: Callable[[str], str]) -> None:
    """Apply `edit` to the file's text under the lock, atomically; retry if a hand edit lands
    meanwhile. Temporary files of writers killed mid-write are removed (under the lock no
    other wb writes this file)."""
    _locked_update(ws, path, lambda text, data: (edit(text), data), with_data=False)


def _locked_update(ws: Workspace, path: Path, compose_fn: Callable[[str, dict], tuple[str, dict]], with_data: bool = True) -> None:
    """MEMORY.md's text and MEMORY.json's data through `compose_fn`, under the lock: write
    MEMORY.json (when its data changed), then MEMORY.md; put MEMORY.json back if MEMORY.md
    cannot be written, so both change or neither does."""
    _refuse_dangling_link(path)
    dpath = data_path(path)
    ws.ensure_state_dir()
    lock = held_lock(ws.state_dir / "memory.lock", LOCK_WAIT)
    if lock is None:
        raise UserError(f"{path} is being updated by another wb (its lock {ws.state_dir / 'memory.lock'} was held for {LOCK_WAIT:.0f} s): not updated")
    try:
        _remove_stale_temps(path)
        _remove_stale_temps(dpath)
        for _ in range(20):
            before, bom = read_memory(path)
            raw = _read_raw(dpath) if with_data else None
            data = read_data(dpath) if with_data else {}
            after, new_data = compose_fn(before, data)
            if read_memory(path) != (before, bom) or (with_data and _read_raw(dpath) != raw):
                continue
            writes_data = with_data and new_data != data
            if writes_data:
                atomic_write_text(dpath, _dump_data(new_data), follow_link=True)
            try:  # checked again just before the rename: a save that lands meanwhile is read again, not written over
                atomic_write_text(path, (BOM if bom else "") + after, newline="", unless=lambda: read_memory(path) != (before, bom), follow_link=True)
                return
            except BaseException as exc:
                if writes_data:
                    _put_back(dpath, raw)
                if not isinstance(exc, Changed):
                    raise
        # writing now would drop what changed since it was read (an editor saving it again and again)
        raise UserError(f"{path} kept changing while wb read it (20 times): not updated, so that no hand edit is lost")
    finally:
        lock.release()


def _refuse_dangling_link(path: Path) -> None:
    """A MEMORY.md link whose target's folder does not exist is refused: writing through it
    would create that folder (outside the workspace) with MEMORY.md and MEMORY.json in it. A
    link to an existing file, or to a new one in an existing folder, is written through."""
    import os

    if os.path.islink(path):
        target = Path(os.path.realpath(path))
        if not target.parent.is_dir():
            raise UserError(f"{path} is a link to {os.readlink(path)}, whose folder does not exist: wb does not create it; restore the link's target or remove the link")


LOCK_WAIT = 60.0  # seconds another wb may hold MEMORY.md's lock before an update gives up


def _put_back(path: Path, raw: bytes | None) -> None:
    if raw is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_text(path, raw.decode("utf-8"), newline="", follow_link=True)


def _remove_stale_temps(path: Path) -> None:
    import os

    target = Path(os.path.realpath(path))
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


def update_blocks(ws: Workspace, edits: dict[str, Any], path: Path | None = None) -> None:
    """Rewrite the named blocks of MEMORY.md (and MEMORY.json); create them if missing.
    Every data block already in the file is rendered again from MEMORY.json, so an update
    (even with no edits) also migrates a MEMORY.md that still holds `wb:data` lines."""
    path = path or ws.memory_path
    _locked_update(ws, path, lambda text, data: compose(text, data, edits, str(path)))


def update_blocks_or_warn(ws: Workspace, edits: dict[str, Any]) -> None:
    """update_blocks after a record is already safe in runs/: a MEMORY.md or MEMORY.json wb
    cannot update (broken markers, read-only, not UTF-8, malformed) is a warning, not a lost run."""
    import warnings

    try:
        update_blocks(ws, edits)
    except UserError as exc:
        warnings.warn(f"MEMORY.md not updated: {exc}")


def render_blocks(ws: Workspace, edits: dict[str, Any], path: Path | None = None) -> tuple[str, bool]:
    """What update_blocks would write to MEMORY.md, without writing: (text, bom). Raises what
    it would raise (broken markers, a MEMORY.json wb cannot read)."""
    path = path or ws.memory_path
    text, bom = read_memory(path)
    return compose(text, read_data(data_path(path)), edits, str(path))[0], bom


# ------------------------------------------------------------------------------ data blocks


@dataclass
class DataEdit:
    """Fold new data into one block's entry of MEMORY.json: `merge(old)` -> new (old may be None)."""

    name: str
    merge: Callable[[Any], Any]


def data_block(name: str, merge: Callable[[Any], Any]) -> DataEdit:
    return DataEdit(name, merge)


def _data_of(content: str | None) -> Any:
    """The JSON of a block's `<!-- wb:data ... -->` line (MEMORY.md before MEMORY.json)."""
    for line in (content or "").splitlines():
        m = DATA_RE.match(line.strip())
        if m:
            try:
                return json.loads(m.group(1))
            except (ValueError, RecursionError):  # '[[[[...' nests past the decoder's limit
                return None
    return None


def _legacy_data(name: str, content: str, source: str) -> dict | None:
    """A block's wb:data, when it is valid data for that block; None otherwise (then its lines
    are not wb's any more and are kept as text below the block)."""
    from workbench.schemas import SchemaError, check
    from workbench.schemas.memory_data import MemoryData

    blob = _data_of(content)
    if not isinstance(blob, dict):
        return None
    try:
        check(MemoryData, {name: blob}, source)
    except SchemaError:
        return None
    return blob


def compose(text: str, data: dict[str, Any], edits: dict[str, Any], source: str = "MEMORY.md") -> tuple[str, dict[str, Any]]:
    """MEMORY.md's new text and MEMORY.json's new data: wb:data lines still in the file move
    into the data, the edits' merges fold into it, every data block in the file (and every
    edited one) is rendered from it; other BlockEdits (the log) apply as they are."""
    lines = split_lines(text)
    blocks = _scan(lines, source)
    data = copy.deepcopy(data)
    legacy: dict[str, dict] = {}
    for name in DATA_BLOCKS:
        if name in blocks:
            b = blocks[name]
            blob = _legacy_data(name, "".join(lines[b.begin + 1 : b.end]).replace("\r\n", "\n"), source)
            if blob is not None:
                legacy[name] = blob
                data[name] = {**blob, **(data.get(name) or {})}
    before = copy.deepcopy(data)
    for edit in edits.values():
        if isinstance(edit, DataEdit):
            data[edit.name] = edit.merge(copy.deepcopy(data.get(edit.name)))
    if data != before:
        from workbench.schemas import check
        from workbench.schemas.memory_data import MemoryData

        check(MemoryData, data, f"{source} (new data)")  # wb never writes data it would refuse to read
    block_edits: dict[str, BlockEdit] = {}
    for name, edit in edits.items():
        block_edits[name] = _render_edit(name, before.get(name), data.get(name), legacy.get(name)) if isinstance(edit, DataEdit) else edit
    for name in DATA_BLOCKS:
        if name in blocks and name not in block_edits:
            block_edits[name] = _render_edit(name, before.get(name), data.get(name), legacy.get(name))
    return rewrite(text, block_edits, source), data


def _render_edit(name: str, before: Any, after: Any, legacy: Any) -> BlockEdit:
    """The block rendered from `after`. wb's own lines in the old block: its title, what
    `before` or `after` render to, and table rows whose first cell names one of their entries
    (or the old wb:data line and the rows it rendered); any other line is a person's."""
    render, first_cells = DATA_BLOCKS[name]
    title = f"## {BLOCK_TITLES[name]}"

    def full(data: Any) -> str:
        return f"{title}\n\n{render(data or {}).rstrip()}\n"

    firsts = first_cells(before or {}) | first_cells(after or {}) | first_cells(legacy or {})

    def owned(old: str) -> set[str]:
        rendered = set(full(before).splitlines()) | set(full(after).splitlines())
        mine = {title} | rendered
        # a row is wb's by its first cell only with as many cells as wb's rows: a person's
        # "| fmha/stage-d | my note |" under the table is theirs
        widths = {len(row) for row in map(_table_row, rendered) if row is not None}
        intro = _INTROS.get(name)
        for line in old.splitlines():
            row = _table_row(line)
            if row is not None and (
                (row[0] in firsts and (len(row) in widths or not widths))
                or row[0] in _HEADER_CELLS
                or set(line.strip()) <= {"|", "-", " "}
            ):
                mine.add(line)
            elif legacy is not None and DATA_RE.match(line.strip()):
                mine.add(line)
            elif intro and line.startswith(intro):  # the block's opening sentence as an older wb wrote it
                mine.add(line)
        return mine

    return BlockEdit(lambda old: full(after), owned)


_HEADER_CELLS = {"stage", "stage · case · card", "case"}
# How each block's opening sentence starts: its wording changes between wb versions, and the
# old sentence is wb's, not a person's line to keep below the block
_INTROS = {"status": "The last run of every stage;", "speed": "wb's TFLOP/s, and ×:"}


def _table_row(line: str) -> list[str] | None:
    text = line.strip()
    if len(text) < 2 or not (text.startswith("|") and text.endswith("|")):
        return None
    return [c.strip() for c in re.split(r"(?<!\\)\|", text[1:-1])]


def _params_key(record: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """The parameter set a run's n belongs to: every parameter but n (and m when m = n),
    plus the variants that differ from the stage's defaults (a bug variant is its own row).
    With the stage's parameter ``defaults`` (kernel.yaml's, in its order): the parameters
    that differ from them, in kernel.yaml's order, so a case has one key whatever the order
    its parameters were given in and whichever parameters the stage has gained since."""
    params = record.get("params", {})
    pairs = [(k, str(v)) for k, v in params.items() if k != "n" and not (k == "m" and v == params.get("n"))]
    pairs += [(k, str(v)) for k, v in (record.get("variants_changed") or {}).items()]
    return cell(_case_key(pairs, defaults), 300)


def _case_key(pairs: list[tuple[str, str]], defaults: dict[str, Any] | None) -> str:
    if defaults is None:
        return " ".join(f"{k}={v}" for k, v in pairs)
    from workbench.kernels.registry import at_default

    given = dict(pairs)  # (m "=n" is never at default here: n is never in a key)
    order = {k: i for i, k in enumerate(defaults)}
    kept = sorted((kv for kv in pairs if not at_default(defaults, given, kv[0])), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    return " ".join(f"{k}={v}" for k, v in kept)


def canonical_cases(cases: dict[str, dict], defaults: dict[str, Any] | None) -> dict[str, dict]:
    """A stage's status cases keyed as ``_params_key`` keys them now: keys written before (all
    parameters, in the order they were given) fold into the canonical one; where two held the
    same n, the later key's verdict wins. A key cut short by ``cell`` is kept as it is."""
    if defaults is None:
        return cases
    out: dict[str, dict] = {}
    for key, per_n in cases.items():
        words = key.split(" ") if key else []
        if "…" in key or not all("=" in w for w in words):
            out.setdefault(key, {}).update(per_n)
            continue
        canonical = _case_key([tuple(w.split("=", 1)) for w in words], defaults)
        out.setdefault(canonical, {}).update(per_n)
    return out


def stage_facts(ws: Workspace) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Per stage id: its parameters' defaults in kernel.yaml's order ("=other" as written),
    and the ``variant=value`` words kernel.yaml declares wrong on purpose; ({}, {}) when the
    kernels cannot be read (MEMORY.md then keys cases by every parameter)."""
    from workbench.kernels.registry import load_kernels

    try:
        kernels = load_kernels(ws)
    except Exception:  # a broken kernel.yaml must not lose a run's MEMORY.md line
        return {}, {}
    stages = [s for spec in kernels.values() for s in spec.stages]
    return {s.id: s.defaults for s in stages}, {s.id: s.injections for s in stages}


LOG_LINE_RE = re.compile(r"^- \d{4}-\d{2}-\d{2} \d{2}:\d{2} \S+ \*\*[A-Z_]+\*\*.* · \d{8}-\d{6}-\d{6} · ")


def log_block(new_lines: list[str]) -> BlockEdit:
    """The run log: `new_lines` (newest first) above the old ones, LOG_CAP lines in all."""

    def update(old: str | None) -> str:
        lines = [line for line in (old or "").splitlines() if LOG_LINE_RE.match(line)]
        return f"## {BLOCK_TITLES['log']}\n\n" + "\n".join([*new_lines, *lines][:LOG_CAP]) + "\n"

    def owned(old: str) -> set[str]:
        return {f"## {BLOCK_TITLES['log']}"} | {line for line in old.splitlines() if LOG_LINE_RE.match(line)}

    return BlockEdit(update, owned)


# A variant named `bug` or `*_bug` with another value than "none" injects a bug on purpose (a
# kernel.yaml convention), as does a value kernel.yaml lists under a stage's
# `wrong_on_purpose`: such a run is expected to fail, so it is a case apart in the status and
# never the stage's "last run".
_INJECTED = re.compile(r"(?:^| )(?:\w+_)?bug=(?!none(?: |$))\S")


def is_injected(case_key: str, wrong_on_purpose: Iterable[str] = ()) -> bool:
    """Does a status case (its ``_params_key``) inject a bug: a ``bug``/``*_bug`` variant,
    or one of the stage's ``variant=value`` words declared wrong on purpose?"""
    return bool(_INJECTED.search(case_key)) or not set(wrong_on_purpose).isdisjoint(case_key.split(" "))


def injected_words(variants: dict[str, Any], wrong_on_purpose: Iterable[str] = ()) -> list[str]:
    """The ``variant=value`` words of ``variants`` that inject a bug (the rule above)."""
    return [w for w in (f"{k}={v}" for k, v in variants.items()) if is_injected(w, wrong_on_purpose)]


def injects_a_bug(record: dict[str, Any], wrong_on_purpose: Iterable[str] = ()) -> bool:
    return is_injected(_params_key(record), wrong_on_purpose)


def run_edits(
    records: list[dict[str, Any]],
    defaults: dict[str, dict[str, Any]] | None = None,
    injections: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The `status` and `log` edits that fold these runs (oldest first) into MEMORY.md.
    ``defaults``, ``injections`` (``stage_facts``): each stage's parameter defaults, which key
    its cases, and its variant values wrong on purpose, kept with the stage's status."""
    defaults = defaults or {}
    injections = injections or {}

    def merge(data: Any) -> dict:
        data = data if isinstance(data, dict) else {}
        for stage in set(defaults) & set(data):  # keys written before: folded into today's
            if "cases" in data[stage]:
                data[stage]["cases"] = canonical_cases(data[stage]["cases"], defaults.get(stage))
        for stage in set(injections) & (set(data) | {r["stage"] for r in records}):
            entry = data.setdefault(stage, {})
            if injections[stage]:
                entry["wrong_on_purpose"] = list(injections[stage])
            else:
                entry.pop("wrong_on_purpose", None)
        for record in records:
            entry = data.setdefault(record["stage"], {})
            prov = record.get("provenance", {})
            newer = str(record["id"]) >= str(entry.get("last_run") or "")  # ids sort by start time; an import brings older runs
            if (newer and not injects_a_bug(record, entry.get("wrong_on_purpose") or ())) or "last_run" not in entry:
                entry.update(
                    verdict=record["verdict"],
                    last_run=record["id"],
                    commit=short_commit(prov) or None,
                    date=(record.get("started") or "")[:10],
                    card=prov.get("gpu"),
                )
            n = record.get("params", {}).get("n")
            per_key = entry.setdefault("cases", {}).setdefault(_params_key(record, defaults.get(record["stage"])), {})
            per_key[str(n) if isinstance(n, int) and not isinstance(n, bool) else ""] = record["verdict"]  # "": a stage without n
        return data

    newest_first = [log_line(r) for r in reversed(records)]
    return {"status": data_block("status", merge), "log": log_block(newest_first)}


def record_run(ws: Workspace, record: dict[str, Any]) -> None:
    """Fold one run into the `status` and `log` blocks."""
    update_blocks(ws, run_edits([record], *stage_facts(ws)))


# The order "worst failing case" picks by: a crash or hang before an error before wrong numbers.
SEVERITY = ["CRASH", "HANG", "LOST", "ERROR", "COMPILE_ERROR", "FAIL"]


def _n_key(n: str) -> tuple:
    number = decimal_int(n)
    return (0, number, "") if number is not None else (1, 0, n)


def render_status(data: dict[str, Any]) -> str:
    """One line per stage: its last run (not one of an injected bug), how many cases (latest
    verdict per parameter set and n) pass, the worst failing one, and how many of the cases
    with an injected bug did not pass (the bug was caught)."""
    rows = [
        "The last run of every stage; cases: the latest verdict per parameter set and n, apart from the"
        " cases with an injected bug (a `bug` or `*_bug` variant, or a variant value kernel.yaml declares"
        " `wrong_on_purpose`), which should not pass. The cases and runs"
        " of a stage: `wb report STAGE`; this block's data: MEMORY.json.",
        "",
        "| stage | last run | verdict | cases passing | worst failing case | injected bugs caught | date · commit · card |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in sorted(data):
        entry = data[stage]
        every = [(key, n, v) for key, per_n in sorted(entry.get("cases", {}).items()) for n, v in sorted(per_n.items(), key=lambda i: _n_key(i[0]))]
        on_purpose = entry.get("wrong_on_purpose") or ()
        cases = [c for c in every if not is_injected(c[0], on_purpose)]
        bugs = [c for c in every if is_injected(c[0], on_purpose)]
        caught = f"{sum(1 for c in bugs if c[2] != 'PASS')}/{len(bugs)}" if bugs else "-"
        failing = [c for c in cases if c[2] != "PASS"]
        worst = "-"
        if failing:
            rank = {v: i for i, v in enumerate(SEVERITY)}
            key, n, verdict = min(failing, key=lambda c: rank.get(c[2], len(SEVERITY)))
            worst = cell(f"{verdict} {key}{f' n={n}' if n else ''}".replace("  ", " ").strip(), 160) + (f" (+{len(failing) - 1} more)" if len(failing) > 1 else "")
        passing = f"{len(cases) - len(failing)}/{len(cases)}" if cases else "-"
        when = " · ".join(cell(entry.get(k) or "-", 60) for k in ("date", "commit", "card"))
        rows.append(f"| {cell(stage, 100)} | {cell(entry.get('last_run'), 40)} | {cell(entry.get('verdict'), 32)} | {passing} | {worst} | {caught} | {when} |")
    return "\n".join(rows)


def _status_firsts(data: dict[str, Any]) -> set[str]:
    return {cell(stage, 100) for stage in data} | {cell(stage) for stage in data}


def _case_sort_key(case: str) -> list:
    """Natural order of a case's `k=v` words (n=512 before n=4096)."""
    return natural_key(case)


def _speed_parts(key: str) -> tuple[str, str, str]:
    """(stage, case, card) of a speed entry's key."""
    stage, _, rest = key.partition(" · ")
    case, _, card = rest.rpartition(" · ")
    return stage, case, card


def _speed_place(key: str, entry: dict[str, Any]) -> tuple[str, int | None]:
    """The entry's row and column: as wb bench placed it, else the case without n (and m = n)."""
    if entry.get("row") is not None:
        return entry["row"], entry.get("n")
    words = [w.split("=", 1) for w in _speed_parts(key)[1].split() if "=" in w]
    params = dict(words)
    n = params.get("n", "")
    row = " ".join(f"{k}={v}" for k, v in words if k != "n" and not (k == "m" and v == n))
    return row, decimal_int(n)


def render_speed(data: dict[str, Any]) -> str:
    """Per stage and card, a table: one row per case without its n, one column per n (or the
    kernel's bench.column); a cell
    holds wb's TFLOP/s and its ratio to the fastest peer timed in the same run (the latest
    run where two entries share a cell)."""
    out = [
        "wb's TFLOP/s, and ×: wb over the fastest peer timed in the same run (above 1: wb is faster). A row is a case"
        " without its column parameter (n, or the kernel's bench.column) and the parameters its bench hook derives;"
        " every peer, run and commit: MEMORY.json.",
    ]
    groups: dict[tuple[str, str], dict[str, dict[int | None, dict]]] = {}
    columns: dict[tuple[str, str], str] = {}  # the parameter of a table's columns (kernel.yaml bench.column)
    for key, entry in data.items():
        stage, _, card = _speed_parts(key)
        if entry.get("column"):
            columns.setdefault((stage, card), entry["column"])
        row, n = _speed_place(key, entry)
        cells = groups.setdefault((stage, card), {}).setdefault(row, {})
        if n not in cells or (entry.get("run") or "") > (cells[n].get("run") or ""):
            cells[n] = entry
    for (stage, card), rows in sorted(groups.items()):
        ns = sorted({n for cells in rows.values() for n in cells}, key=lambda n: (n is None, n or 0))
        out += ["", f"**{cell(stage, 100)} · {cell(card or '?', 80)}**", ""]
        name = columns.get((stage, card), "n")
        out.append("| case | " + " | ".join(cell(f"{name}={n}" if n is not None else f"{name}=?", 60) for n in ns) + " | date |")
        out.append("|" + "---|" * (len(ns) + 2))
        for row in sorted(rows, key=_case_sort_key):
            cells = rows[row]
            dates = sorted(e.get("date") or "" for e in cells.values())
            when = dates[0] if dates[0] == dates[-1] else f"{dates[0]}…{dates[-1]}"
            out.append(f"| {cell(row, 300) or '-'} | " + " | ".join(_speed_text(cells.get(n)) for n in ns) + f" | {cell(when or '-', 40)} |")
    return "\n".join(out)


def _speed_text(entry: dict | None) -> str:
    if entry is None:
        return ""
    from workbench.records.charts import speed  # NaN, inf, 0, -5 or 1e308 from an imported record: no speed

    tflops = speed(entry.get("tflops"))
    if tflops is None:
        return cell(entry.get("verdict") or "-", 32)
    peers = entry.get("peers")
    timed = [t for t in map(speed, (peers.values() if isinstance(peers, dict) else ())) if t is not None]
    return f"{tflops:.0f}" + (f" ×{tflops / max(timed):.2f}" if timed else "")


def _speed_firsts(data: dict[str, Any]) -> set[str]:
    rows = {cell(_speed_place(k, e)[0], 300) or "-" for k, e in data.items()}
    return rows | {cell(key, 300) for key in data} | {cell(_speed_parts(key)[0], 100) for key in data}


def render_shapes(data: dict[str, Any]) -> str:
    """`wb shapes --accept`'s probes per stage (the whole snapshot is in shapes.lock.yaml)."""
    rows = ["| stage | arch · params · variants | probes (name: layout, modes) | commit | date |", "|---|---|---|---|---|"]
    for stage in sorted(data):
        for label, entry in sorted(data[stage].items()):
            probes = entry.get("probes") or []
            shown = [f"`{cell(n, 80)}`: `{cell(l, 200)}` ({r})" for n, l, r in probes[:12]]
            if len(probes) > 12:
                shown.append(f"… {len(probes) - 12} more in shapes.lock.yaml")
            if not probes:
                shown = [f"no probes ({entry.get('ops', 0)} captured ops in shapes.lock.yaml with --all-ops)"]
            rows.append(f"| {cell(stage, 100)} | {cell(label, 300)} | {'<br>'.join(shown)} | {cell(entry.get('commit') or '-', 40)} | {cell(entry.get('date'), 40)} |")
    return "\n".join(rows)


def _shapes_firsts(data: dict[str, Any]) -> set[str]:
    return {cell(stage, 100) for stage in data} | set(data)


# How each data block reads (its renderer) and which first cells of a table row are its entries.
DATA_BLOCKS: dict[str, tuple[Callable[[Any], str], Callable[[Any], set[str]]]] = {
    "status": (render_status, _status_firsts),
    "speed": (render_speed, _speed_firsts),
    "shapes": (render_shapes, _shapes_firsts),
}


_WHEN_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def log_line(record: dict[str, Any]) -> str:
    """One line of the run log (LOG_LINE_RE reads it back), every value escaped."""
    prov = record.get("provenance", {})
    params = " ".join(f"{k}={v}" for k, v in record.get("params", {}).items())
    variants = " ".join(f"{k}={v}" for k, v in record.get("variants", {}).items() if v)
    commit = cell((prov.get("commit") or "nogit")[:8]) + ("+" if prov.get("dirty") else "")
    started = str(record.get("started") or "")
    rid = str(record["id"])
    when = started[:16].replace("T", " ") if _WHEN_RE.match(started) else f"{rid[:4]}-{rid[4:6]}-{rid[6:8]} {rid[9:11]}:{rid[11:13]}"
    where = f" on {cell(prov['gpu'], 80)}" if prov.get("gpu") else ""
    what = cell(f"{params} {variants}".strip(), 300)
    return f"- {when} {cell(record['stage'], 100)} **{cell(record['verdict'], 32)}** {what}".rstrip() + f" · {cell(rid, 40)} · {commit}{where}"


def update_data_block(ws: Workspace, name: str, merge: Callable[[Any], Any]) -> None:
    """One data block (shapes, speed): merge new data into MEMORY.json's entry, re-render."""
    update_blocks(ws, {name: data_block(name, merge)})


def add_note(ws: Workspace, text: str, stage: str | None = None, path: Path | None = None) -> tuple[str, bool]:
    """Append a dated lesson to the Lessons section (one_line: MEMORY.md is read in editors);
    returns the line and whether it was added: the section holds it once (``insert_lesson``),
    so a line already there is not (as read under the lock, where the edit is made)."""
    line = lesson_line(text, stage)
    path = path or ws.memory_path
    added = False

    def edit(current: str) -> str:
        nonlocal added
        after = insert_lesson(current, line, str(path))
        added = after != current  # the last try's, the one written (_locked_update retries)
        return after

    _locked_edit(ws, path, edit)
    return line, added


def lesson_line(text: str, stage: str | None = None) -> str:
    """The line ``add_note`` writes for ``text`` today. An HTML comment's opening is written
    as an entity (it renders the same): an unclosed `<!--` hid the rest of MEMORY.md, wb's
    blocks included, wherever the file is rendered."""
    lesson = one_line(text).replace("<!--", "&lt;!--")
    return f"- {datetime.now().strftime('%Y-%m-%d')}" + (f" [{stage}]" if stage else "") + f" {lesson}"


def _fenced(lines: list[str], closed_only: bool = False) -> set[int]:
    """Indices of the lines inside Markdown code fences (``` or ~~~), fences included: a
    `## Lessons` or a wb marker in an example there is not the section or a block.
    ``closed_only``: leave out a fence never closed (Markdown runs it to the end of the file;
    for wb's markers that would hide every block after a stray fence, and wb would append its
    blocks again at every update)."""
    out, fence, start = set(), None, 0
    for i, line in enumerate(lines):
        text = line.lstrip()
        mark = text[:3] if text[:3] in ("```", "~~~") else None
        if fence is None and mark:
            fence, start = mark, i
            out.add(i)
        elif fence is not None:
            out.add(i)
            if mark == fence:
                fence = None
    if fence is not None and closed_only:
        out -= set(range(start, len(lines)))
    return out


def insert_lesson(current: str, line: str, source: str = "MEMORY.md") -> str:
    """`line` added at the end of the Lessons section (made at the end of the file if there is
    none); nothing else changes but the line ending the last line lacked, if it goes after it.
    A line the section already holds is not added again (a `wb note` retried after its output
    was lost, or run twice by a script)."""
    nl = newline_of(current)
    lines = split_lines(current)
    blocks = _scan(lines, source)
    inside = {i for b in blocks.values() for i in range(b.begin, b.end + 1)} | _fenced(lines)
    heading = next((i for i, l in enumerate(lines) if l.strip().lower() == "## lessons" and i not in inside), None)
    if heading is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += nl
        return "".join(lines + ([nl] if lines and lines[-1].strip() else []) + [f"## Lessons{nl}", nl, line + nl])
    # After the last non-blank line of the section, which ends at the next heading or block.
    end = heading + 1
    while end < len(lines) and not lines[end].startswith("## ") and end not in inside:
        end += 1
    if any(l.rstrip("\r\n") == line for l in lines[heading + 1:end]):
        return current
    insert_at = end
    while insert_at > heading + 1 and not lines[insert_at - 1].strip():
        insert_at -= 1
    if not lines[insert_at - 1].endswith("\n"):
        lines[insert_at - 1] += nl
    extra = [nl] if insert_at == heading + 1 else []
    tail = [nl] if insert_at < len(lines) and lines[insert_at].strip() else []
    lines[insert_at:insert_at] = extra + [line + nl] + tail
    return "".join(lines)
