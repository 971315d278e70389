"""MEMORY.md: the team's memory. Hand-written text is never modified.

wb owns only the lines between `<!-- wb:begin NAME -->` and `<!-- wb:end NAME -->`
(blocks `status`, `shapes`, `log`, `speed`), each rendered from data it keeps inside the
block (`<!-- wb:data {...} -->`). Every update takes a file lock, re-reads the file,
and replaces it atomically. Damaged markers are repaired without losing a line: only
exact marker lines that pair with nothing are dropped (they are wb's own); the text
around them stays, and a fresh block is appended. A line found inside a block that wb
did not render there (typed by hand, or enclosed by damaged markers) is kept too,
moved just below the block.
`wb note` appends a dated lesson to the Lessons section (it adds, never rewrites).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from workbench.provenance import short_commit
from workbench.records import atomic_write_text
from workbench.workspace import Workspace

MARKER_RE = re.compile(r"^[ \t]*<!--[ \t]*wb:(begin|end)[ \t]+([A-Za-z0-9_-]+)[ \t]*-->[ \t]*\r?\n?$")
DATA_RE = re.compile(r"^<!-- wb:data (.*) -->$")
LOG_CAP = 100
BLOCK_TITLES = {"status": "Status", "shapes": "Verified shapes", "speed": "Speed", "log": "Run log"}

TEMPLATE = """# MEMORY

The team's memory of results and lessons for this workspace. Write freely anywhere outside
the `wb:begin`/`wb:end` blocks: wb never touches hand-written text. The blocks are rewritten
by wb (`wb run`, `wb shapes --accept`, `wb bench`); `wb note "..." --stage c` adds a lesson.

## Lessons

"""


@dataclass
class _Block:
    name: str
    begin: int  # line index of the begin marker
    end: int  # line index of the end marker


def _scan(lines: list[str]) -> tuple[dict[str, _Block], list[int], list[_Block]]:
    """Valid blocks (first per name), marker lines that pair with nothing, duplicate blocks."""
    markers = [(i, m.group(1), m.group(2)) for i, line in enumerate(lines) if (m := MARKER_RE.match(line))]
    blocks: dict[str, _Block] = {}
    duplicates: list[_Block] = []
    orphans: list[int] = []
    k = 0
    while k < len(markers):
        i, kind, name = markers[k]
        if kind == "begin" and k + 1 < len(markers):
            j, kind2, name2 = markers[k + 1]
            if kind2 == "end" and name2 == name:
                block = _Block(name, i, j)
                if name in blocks:
                    duplicates.append(block)
                else:
                    blocks[name] = block
                k += 2
                continue
        orphans.append(i)
        k += 1
    return blocks, orphans, duplicates


def _render_block(name: str, content: str) -> list[str]:
    body = content if content.endswith("\n") or not content else content + "\n"
    return [f"<!-- wb:begin {name} -->\n", body, f"<!-- wb:end {name} -->\n"]


def block_content(text: str, name: str) -> str | None:
    lines = text.splitlines(keepends=True)
    blocks, _, _ = _scan(lines)
    block = blocks.get(name)
    if block is None:
        return None
    return "".join(lines[block.begin + 1 : block.end])


@dataclass
class BlockEdit:
    """How to rewrite one block: new content from the old, and which old lines wb wrote."""

    update: Callable[[str | None], str]
    owned: Callable[[str], set[str]]


def rewrite(text: str, edits: dict[str, BlockEdit]) -> str:
    """Apply block edits to the file's text. No line wb did not write is ever dropped:
    unpaired markers of an edited block are removed (they are wb's), and any line found
    inside an edited block that wb did not render (typed there by hand, or enclosed by a
    damaged marker) is kept, just below the block."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    blocks, orphans, duplicates = _scan(lines)
    drop: set[int] = {i for i in orphans if MARKER_RE.match(lines[i]).group(2) in edits}
    replaced: dict[int, list[str]] = {}
    for dup in duplicates:
        if dup.name in edits:
            owned = edits[dup.name].owned("".join(lines[dup.begin + 1 : dup.end]))
            drop.update(i for i in range(dup.begin, dup.end + 1) if i in (dup.begin, dup.end) or _owned(lines[i], owned))
    for name, edit in edits.items():
        block = blocks.get(name)
        if block is None:
            continue
        old_lines = lines[block.begin + 1 : block.end]
        old = "".join(old_lines)
        owned = edit.owned(old)
        foreign = [line for line in old_lines if not _owned(line, owned)]
        replaced[block.begin] = _render_block(name, edit.update(old)) + foreign
        drop.update(range(block.begin + 1, block.end + 1))
    out: list[str] = []
    for i, line in enumerate(lines):
        if i in replaced:
            out.extend(replaced[i])
        elif i not in drop:
            out.append(line)
    for name in (n for n in edits if n not in blocks):
        if out and out[-1].strip():
            out.append("\n")
        out.extend(_render_block(name, edits[name].update(None)))
    return "".join(out)


def _owned(line: str, owned: set[str]) -> bool:
    """Blank lines carry no hand-written bytes worth keeping; others must be wb's own."""
    return not line.strip() or line.rstrip("\r\n") in owned


def _locked_edit(ws: Workspace, path: Path, edit: Callable[[str], str]) -> None:
    """Apply `edit` to the file's text under the lock, atomically; retry if a hand edit lands meanwhile."""
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(ws.state_dir / "memory.lock"), timeout=60):
        for _ in range(20):
            before = path.read_text(encoding="utf-8") if path.exists() else TEMPLATE
            after = edit(before)
            now = path.read_text(encoding="utf-8") if path.exists() else TEMPLATE
            if now == before:
                atomic_write_text(path, after)
                return
        atomic_write_text(path, edit(path.read_text(encoding="utf-8")))


def update_blocks(ws: Workspace, edits: dict[str, BlockEdit], path: Path | None = None) -> None:
    """Rewrite the named blocks of MEMORY.md; create the file if missing."""
    _locked_edit(ws, path or ws.memory_path, lambda text: rewrite(text, edits))


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
    return f"## {title}\n<!-- wb:data {json.dumps(data, sort_keys=True)} -->\n\n{body.rstrip()}\n"


def _params_key(record: dict[str, Any]) -> str:
    """The parameter set a run's n belongs to: every parameter but n (and m when m = n),
    plus the variants that differ from the stage's defaults (a bug variant is its own row)."""
    params = record.get("params", {})
    parts = [f"{k}={v}" for k, v in params.items() if k != "n" and not (k == "m" and v == params.get("n"))]
    parts += [f"{k}={v}" for k, v in (record.get("variants_changed") or {}).items()]
    return " ".join(parts)


def data_block(name: str, merge: Callable[[Any], Any], render: Callable[[Any], str]) -> BlockEdit:
    """A block rendered from JSON data kept in it: merge new data into the old, re-render.
    wb's own lines are exactly the render of the old data, so anything else is kept."""
    title = BLOCK_TITLES.get(name, name.title())

    def update(old: str | None) -> str:
        data = merge(_data_of(old))
        return _with_data(title, data, render(data))

    def owned(old: str) -> set[str]:
        data = _data_of(old)
        return set(_with_data(title, data, render(data)).splitlines()) if data is not None else set()

    return BlockEdit(update, owned)


LOG_LINE_RE = re.compile(r"^- \d{4}-\d{2}-\d{2} \d{2}:\d{2} \S+ \*\*[A-Z_]+\*\*.* · \d{8}-\d{6}-\d{6} · ")


def log_block(new_line: str) -> BlockEdit:
    def update(old: str | None) -> str:
        lines = [line for line in (old or "").splitlines() if LOG_LINE_RE.match(line)]
        return f"## {BLOCK_TITLES['log']}\n\n" + "\n".join([new_line, *lines][:LOG_CAP]) + "\n"

    def owned(old: str) -> set[str]:
        return {f"## {BLOCK_TITLES['log']}"} | {line for line in old.splitlines() if LOG_LINE_RE.match(line)}

    return BlockEdit(update, owned)


def record_run(ws: Workspace, record: dict[str, Any]) -> None:
    """Fold one run into the `status` and `log` blocks."""

    def merge(data: Any) -> dict:
        data = data if isinstance(data, dict) else {}
        entry = data.setdefault(record["stage"], {})
        prov = record.get("provenance", {})
        entry.update(
            verdict=record["verdict"],
            last_run=record["id"],
            commit=short_commit(prov) or None,
            date=record.get("started", "")[:10],
            card=prov.get("gpu"),
        )
        n = record.get("params", {}).get("n")
        if n is not None:
            per_key = entry.setdefault("cases", {}).setdefault(_params_key(record), {})
            per_key[str(n)] = record["verdict"]
        return data

    update_blocks(ws, {"status": data_block("status", merge, render_status), "log": log_block(log_line(record))})


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
            passing.append(f"{key}: {text}")
        rows.append(
            f"| {stage} | {entry.get('verdict')} | {'<br>'.join(passing) or '-'} | {entry.get('last_run')} | "
            f"{entry.get('commit') or '-'} | {entry.get('card') or '-'} | {entry.get('date')} |"
        )
    return "\n".join(rows)


def log_line(record: dict[str, Any]) -> str:
    prov = record.get("provenance", {})
    params = " ".join(f"{k}={v}" for k, v in record.get("params", {}).items())
    variants = " ".join(f"{k}={v}" for k, v in record.get("variants", {}).items() if v)
    commit = (prov.get("commit") or "nogit")[:8] + ("+" if prov.get("dirty") else "")
    when = (record.get("started") or "")[:16].replace("T", " ")
    where = f" on {prov['gpu']}" if prov.get("gpu") else ""
    return f"- {when} {record['stage']} **{record['verdict']}** {params} {variants}".rstrip() + f" · {record['id']} · {commit}{where}"


def update_data_block(ws: Workspace, name: str, merge: Callable[[Any], Any], render: Callable[[Any], str]) -> None:
    """Generic data block (used by shapes and speed): merge new data into the old, re-render."""
    update_blocks(ws, {name: data_block(name, merge, render)})


def add_note(ws: Workspace, text: str, stage: str | None = None, path: Path | None = None) -> str:
    """Append a dated lesson to the Lessons section; returns the line added."""
    text = " ".join(text.split())
    line = f"- {datetime.now().strftime('%Y-%m-%d')}" + (f" [{stage}]" if stage else "") + f" {text}\n"
    _locked_edit(ws, path or ws.memory_path, lambda current: insert_lesson(current, line))
    return line.strip()


def insert_lesson(current: str, line: str) -> str:
    lines = current.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    blocks, _, _ = _scan(lines)
    inside = {i for b in blocks.values() for i in range(b.begin, b.end + 1)}
    heading = next((i for i, l in enumerate(lines) if l.strip().lower() == "## lessons" and i not in inside), None)
    if heading is None:
        return "".join(lines + (["\n"] if lines and lines[-1].strip() else []) + ["## Lessons\n", "\n", line])
    # After the last non-blank line of the section, which ends at the next heading or block.
    end = heading + 1
    while end < len(lines) and not lines[end].startswith("## ") and end not in inside:
        end += 1
    insert_at = end
    while insert_at > heading + 1 and not lines[insert_at - 1].strip():
        insert_at -= 1
    extra = ["\n"] if insert_at == heading + 1 else []
    tail = ["\n"] if insert_at < len(lines) and lines[insert_at].strip() else []
    lines[insert_at:insert_at] = extra + [line] + tail
    return "".join(lines)
