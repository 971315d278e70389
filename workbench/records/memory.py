"""MEMORY.md: the team's memory. Hand-written text is never modified.

wb owns only the lines between `<!-- wb:begin NAME -->` and `<!-- wb:end NAME -->`
(blocks `status`, `shapes`, `log`, `speed`), each rendered from data it keeps inside the
block (`<!-- wb:data {...} -->`). Every update takes a file lock, re-reads the file,
and replaces it atomically (keeping its mode, a symlink, a byte-order mark and CRLF line
endings). Every byte outside the blocks is kept as it is; a new block is appended at the end.

The markers must be well formed: each begin has its end, no block inside another, no block
twice. When they are not (a hand edit broke them), wb stops with one line naming the lines
and writes nothing: it never guesses which text is whose. A line typed *inside* a block (not
wb's rendering of its data) is kept, moved just below the block.

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
from typing import Any, Callable

from workbench.errors import UserError
from workbench.records.provenance import short_commit
from workbench.records.store import atomic_write_text
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
by wb (`wb run`, `wb shapes --accept`, `wb bench`); `wb note "..." --stage c` adds a lesson.

## Lessons

"""


class MarkerError(UserError):
    """MEMORY.md's wb markers are broken; wb changes nothing until a person fixes them."""


def cell(value: Any, limit: int = 200) -> str:
    """A value from a record as one safe line of Markdown: control characters and line
    breaks become spaces, `<` and `|` cannot open a comment or a table cell, and it is cut
    at `limit` characters."""
    text = "".join(" " if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in str(value))
    text = " ".join(text.split()).replace("<", "&lt;").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


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

    for i, line in enumerate(lines):
        m = MARKER_RE.match(line)
        if not m:
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


def _locked_edit(ws: Workspace, path: Path, edit: Callable[[str], str]) -> None:
    """Apply `edit` to the file's text under the lock, atomically; retry if a hand edit lands
    meanwhile. Temporary files of writers killed mid-write are removed (under the lock no
    other wb writes this file)."""
    from filelock import FileLock

    ws.ensure_state_dir()
    with FileLock(str(ws.state_dir / "memory.lock"), timeout=60):
        _remove_stale_temps(path)
        for _ in range(20):
            before, bom = read_memory(path)
            after = edit(before)
            if read_memory(path) == (before, bom):
                break
        atomic_write_text(path, (BOM if bom else "") + after, newline="")


def _remove_stale_temps(path: Path) -> None:
    import os

    target = Path(os.path.realpath(path))
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


def update_blocks(ws: Workspace, edits: dict[str, BlockEdit], path: Path | None = None) -> None:
    """Rewrite the named blocks of MEMORY.md; create the file if missing."""
    path = path or ws.memory_path
    _locked_edit(ws, path, lambda text: rewrite(text, edits, str(path)))


def update_blocks_or_warn(ws: Workspace, edits: dict[str, BlockEdit]) -> None:
    """update_blocks after a record is already safe in runs/: a MEMORY.md wb cannot update
    (broken markers, read-only, not UTF-8) is a warning, not a lost run."""
    import warnings

    try:
        update_blocks(ws, edits)
    except UserError as exc:
        warnings.warn(f"MEMORY.md not updated: {exc}")


def render_blocks(ws: Workspace, edits: dict[str, BlockEdit], path: Path | None = None) -> tuple[str, bool]:
    """What update_blocks would write, without writing: (text, bom). Raises what it would raise."""
    path = path or ws.memory_path
    text, bom = read_memory(path)
    return rewrite(text, edits, str(path)), bom


def _data_of(content: str | None) -> Any:
    for line in (content or "").splitlines():
        m = DATA_RE.match(line.strip())
        if m:
            try:
                return json.loads(m.group(1))
            except ValueError:
                return None
    return None


def _with_data(title: str, data: Any, body: str) -> str:
    # < and > escaped inside the JSON, so no value can close the HTML comment that holds it
    blob = json.dumps(data, sort_keys=True).replace("<", "\\u003c").replace(">", "\\u003e")
    return f"## {title}\n<!-- wb:data {blob} -->\n\n{body.rstrip()}\n"


def _params_key(record: dict[str, Any]) -> str:
    """The parameter set a run's n belongs to: every parameter but n (and m when m = n),
    plus the variants that differ from the stage's defaults (a bug variant is its own row)."""
    params = record.get("params", {})
    parts = [f"{k}={v}" for k, v in params.items() if k != "n" and not (k == "m" and v == params.get("n"))]
    parts += [f"{k}={v}" for k, v in (record.get("variants_changed") or {}).items()]
    return cell(" ".join(parts), 300)


# What a block's data may hold is whatever its merge and render accept: data a hand edit
# broke (valid JSON of the wrong shape) is not wb's any more, so its lines are kept as text.
_BROKEN_DATA = (TypeError, KeyError, AttributeError, ValueError, IndexError)


def data_block(name: str, merge: Callable[[Any], Any], render: Callable[[Any], str]) -> BlockEdit:
    """A block rendered from JSON data kept in it: merge new data into the old, re-render.
    wb's own lines are exactly the render of the old data, so anything else is kept."""
    title = BLOCK_TITLES.get(name, name.title())

    def update(old: str | None) -> str:
        try:
            data = merge(copy.deepcopy(_data_of(old)))
            return _with_data(title, data, render(data))
        except _BROKEN_DATA:
            data = merge(None)
            return _with_data(title, data, render(data))

    def owned(old: str) -> set[str]:
        data = _data_of(old)
        if data is None:
            return set()
        try:
            return set(_with_data(title, data, render(data)).splitlines())
        except _BROKEN_DATA:
            return set()

    return BlockEdit(update, owned)


LOG_LINE_RE = re.compile(r"^- \d{4}-\d{2}-\d{2} \d{2}:\d{2} \S+ \*\*[A-Z_]+\*\*.* · \d{8}-\d{6}-\d{6} · ")


def log_block(new_lines: list[str]) -> BlockEdit:
    """The run log: `new_lines` (newest first) above the old ones, LOG_CAP lines in all."""

    def update(old: str | None) -> str:
        lines = [line for line in (old or "").splitlines() if LOG_LINE_RE.match(line)]
        return f"## {BLOCK_TITLES['log']}\n\n" + "\n".join([*new_lines, *lines][:LOG_CAP]) + "\n"

    def owned(old: str) -> set[str]:
        return {f"## {BLOCK_TITLES['log']}"} | {line for line in old.splitlines() if LOG_LINE_RE.match(line)}

    return BlockEdit(update, owned)


def run_edits(records: list[dict[str, Any]]) -> dict[str, BlockEdit]:
    """The `status` and `log` edits that fold these runs (oldest first) into MEMORY.md."""

    def merge(data: Any) -> dict:
        data = data if isinstance(data, dict) else {}
        for record in records:
            entry = data.setdefault(record["stage"], {})
            prov = record.get("provenance", {})
            entry.update(
                verdict=record["verdict"],
                last_run=record["id"],
                commit=short_commit(prov) or None,
                date=(record.get("started") or "")[:10],
                card=prov.get("gpu"),
            )
            n = record.get("params", {}).get("n")
            if isinstance(n, int) and not isinstance(n, bool):
                per_key = entry.setdefault("cases", {}).setdefault(_params_key(record), {})
                per_key[str(n)] = record["verdict"]
        return data

    newest_first = [log_line(r) for r in reversed(records)]
    return {"status": data_block("status", merge, render_status), "log": log_block(newest_first)}


def record_run(ws: Workspace, record: dict[str, Any]) -> None:
    """Fold one run into the `status` and `log` blocks."""
    update_blocks(ws, run_edits([record]))


def render_status(data: dict[str, Any]) -> str:
    rows = ["| stage | last verdict | n passing (latest run per n) | last run | commit | card | date |", "|---|---|---|---|---|---|---|"]
    for stage in sorted(data):
        entry = data[stage]
        passing = []
        for key, per_n in sorted(entry.get("cases", {}).items()):
            ns = sorted(int(n) for n, v in per_n.items() if v == "PASS")
            failing = sorted(int(n) for n, v in per_n.items() if v != "PASS")
            text = ",".join(map(str, ns)) or "none"
            if failing:
                text += f" (failing: {','.join(map(str, failing))})"
            passing.append(cell(f"{key}: {text}", 400))
        fields = [entry.get("verdict"), entry.get("last_run"), entry.get("commit") or "-", entry.get("card") or "-", entry.get("date")]
        verdict, last_run, commit, card, date = (cell(f) for f in fields)
        rows.append(f"| {cell(stage)} | {verdict} | {'<br>'.join(passing) or '-'} | {last_run} | {commit} | {card} | {date} |")
    return "\n".join(rows)


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


def update_data_block(ws: Workspace, name: str, merge: Callable[[Any], Any], render: Callable[[Any], str]) -> None:
    """Generic data block (used by shapes and speed): merge new data into the old, re-render."""
    update_blocks(ws, {name: data_block(name, merge, render)})


def add_note(ws: Workspace, text: str, stage: str | None = None, path: Path | None = None) -> str:
    """Append a dated lesson to the Lessons section; returns the line added."""
    text = " ".join(text.split())
    line = f"- {datetime.now().strftime('%Y-%m-%d')}" + (f" [{stage}]" if stage else "") + f" {text}"
    path = path or ws.memory_path
    _locked_edit(ws, path, lambda current: insert_lesson(current, line, str(path)))
    return line


def insert_lesson(current: str, line: str, source: str = "MEMORY.md") -> str:
    """`line` added at the end of the Lessons section (made at the end of the file if there is
    none); nothing else changes but the line ending the last line lacked, if it goes after it."""
    nl = newline_of(current)
    lines = split_lines(current)
    blocks = _scan(lines, source)
    inside = {i for b in blocks.values() for i in range(b.begin, b.end + 1)}
    heading = next((i for i, l in enumerate(lines) if l.strip().lower() == "## lessons" and i not in inside), None)
    if heading is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += nl
        return "".join(lines + ([nl] if lines and lines[-1].strip() else []) + [f"## Lessons{nl}", nl, line + nl])
    # After the last non-blank line of the section, which ends at the next heading or block.
    end = heading + 1
    while end < len(lines) and not lines[end].startswith("## ") and end not in inside:
        end += 1
    insert_at = end
    while insert_at > heading + 1 and not lines[insert_at - 1].strip():
        insert_at -= 1
    if not lines[insert_at - 1].endswith("\n"):
        lines[insert_at - 1] += nl
    extra = [nl] if insert_at == heading + 1 else []
    tail = [nl] if insert_at < len(lines) and lines[insert_at].strip() else []
    lines[insert_at:insert_at] = extra + [line + nl] + tail
    return "".join(lines)
