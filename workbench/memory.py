"""MEMORY.md: the team's memory. Hand-written text is never modified.

wb owns only the lines between `<!-- wb:begin NAME -->` and `<!-- wb:end NAME -->`
(blocks `status`, `shapes`, `log`, `speed`), each rendered from data it keeps inside the
block (`<!-- wb:data {...} -->`). Every update takes a file lock, re-reads the file,
and replaces it atomically. Damaged markers are repaired without losing a line: only
exact marker lines that pair with nothing are dropped (they are wb's own); the text
around them stays, and a fresh block is appended.
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


def rewrite(text: str, updates: dict[str, Callable[[str | None], str]]) -> str:
    """Apply block updates to the file's text; hand-written lines come out unchanged."""
    lines = text.splitlines(keepends=True)
    blocks, orphans, duplicates = _scan(lines)
    drop: set[int] = set(orphans)
    for dup in duplicates:
        drop.update(range(dup.begin, dup.end + 1))
    replaced: dict[int, list[str]] = {}
    for name, update in updates.items():
        block = blocks.get(name)
        if block is not None:
            old = "".join(lines[block.begin + 1 : block.end])
            replaced[block.begin] = _render_block(name, update(old))
            drop.update(range(block.begin + 1, block.end + 1))
    out: list[str] = []
    for i, line in enumerate(lines):
        if i in replaced:
            out.extend(replaced[i])
        elif i not in drop:
            out.append(line)
    missing = [name for name in updates if name not in blocks]
    if missing and out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    for name in missing:
        if out and out[-1].strip():
            out.append("\n")
        out.extend(_render_block(name, updates[name](None)))
    return "".join(out)


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


def update_blocks(ws: Workspace, updates: dict[str, Callable[[str | None], str]], path: Path | None = None) -> None:
    """Rewrite the named blocks of MEMORY.md; create the file if missing."""
    _locked_edit(ws, path or ws.memory_path, lambda text: rewrite(text, updates))


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


def _params_key(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items() if k not in ("n",))


def record_run(ws: Workspace, record: dict[str, Any]) -> None:
    """Fold one run into the `status` and `log` blocks."""

    def status(old: str | None) -> str:
        data = _data_of(old) or {}
        entry = data.setdefault(record["stage"], {})
        prov = record.get("provenance", {})
        commit = (prov.get("commit") or "")[:10] + ("+dirty" if prov.get("dirty") else "")
        entry.update(
            verdict=record["verdict"],
            last_run=record["id"],
            commit=commit or None,
            date=record.get("started", "")[:10],
            card=prov.get("gpu"),
        )
        n = record.get("params", {}).get("n")
        if n is not None:
            cases = entry.setdefault("cases", {})
            per_key = cases.setdefault(_params_key(record["params"]), {})
            per_key[str(n)] = record["verdict"]
        return _with_data(BLOCK_TITLES["status"], data, render_status(data))

    def log(old: str | None) -> str:
        lines = [line for line in (old or "").splitlines() if line.startswith("- ")]
        lines.insert(0, log_line(record))
        return f"## {BLOCK_TITLES['log']}\n\n" + "\n".join(lines[:LOG_CAP]) + "\n"

    update_blocks(ws, {"status": status, "log": log})


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

    def update(old: str | None) -> str:
        data = merge(_data_of(old))
        return _with_data(BLOCK_TITLES.get(name, name.title()), data, render(data))

    update_blocks(ws, {name: update})


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
