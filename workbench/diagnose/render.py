"""Rendering of a Diagnosis (data in, text out): terminal (rich) and markdown.

    render_diagnosis(diag, full=False)     # rich renderable: the headline (+ a small map)
    render_diagnosis(diag, full=True)      # everything: candidates, maps, read map, notes
    diagnosis_markdown(diag, pictures_relpath=".")   # for the run's report.md
    error_grid_markup(error_map)           # the coloured tile grid alone, rich markup

`diag` may be a Diagnosis or its dict (as stored in run.json).

Tile colours (error of the tile's worst element relative to max |reference|):
green · within rounding (<= ok_level, 4 eps of the output dtype), yellow ▪ <= 10%,
orange ■ <= 50%, red █ above; magenta ✖ NaN/Inf/unwritten elements in the tile.
"""

from __future__ import annotations

from typing import Any

from workbench.diagnose.result import ErrorMap, as_diagnosis

_LEVELS = [  # (max ratio, rich style, glyph, ascii glyph)
    (None, "green", "·", "."),
    (0.1, "yellow", "▪", "-"),
    (0.5, "dark_orange", "■", "+"),
    (float("inf"), "red", "█", "#"),
]


def _level(emap: ErrorMap, err: float | None, bad: int) -> int:
    if bad:
        return -1
    scale = emap.ref_max if emap.ref_max else 1.0
    r = (err or 0.0) / scale
    if r <= emap.ok_level:
        return 0
    if r <= 0.1:
        return 1
    if r <= 0.5:
        return 2
    return 3


def _pooled(emap: ErrorMap, max_rows: int, max_cols: int):
    """Grid of levels, max-pooled to at most max_rows x max_cols; plus the pool factors."""
    rows = len(emap.grid)
    cols = len(emap.grid[0]) if rows else 0
    fy, fx = -(-rows // max_rows) if rows else 1, -(-cols // max_cols) if cols else 1
    out = []
    for r0 in range(0, rows, fy):
        line = []
        for c0 in range(0, cols, fx):
            lv = 0
            for r in range(r0, min(rows, r0 + fy)):
                for c in range(c0, min(cols, c0 + fx)):
                    lr = _level(emap, emap.grid[r][c], emap.bad[r][c])
                    lv = -1 if (lv == -1 or lr == -1) else max(lv, lr)
            line.append(lv)
        out.append(line)
    return out, fy, fx


def error_grid_markup(emap: ErrorMap | dict, max_rows: int = 16, max_cols: int = 48) -> str:
    """The tile grid as rich markup, one line per (pooled) row of tiles."""
    if isinstance(emap, dict):
        emap = ErrorMap(**emap)
    grid, fy, fx = _pooled(emap, max_rows, max_cols)
    lines = []
    for line in grid:
        cells = []
        for lv in line:
            if lv == -1:
                cells.append("[magenta]✖[/]")
            else:
                _, style, glyph, _ = _LEVELS[lv]
                cells.append(f"[{style}]{glyph}[/]")
        lines.append("".join(cells))
    note = f" (each cell = {fy}x{fx} tiles)" if fy > 1 or fx > 1 else ""
    head = f"[dim]{emap.output}: rows = {emap.row_label}s, cols = {emap.col_label or '-'}{note}[/]"
    return "\n".join([head] + lines)


def error_grid_ascii(emap: ErrorMap, max_rows: int = 32, max_cols: int = 64) -> str:
    grid, fy, fx = _pooled(emap, max_rows, max_cols)
    return "\n".join("".join("!" if lv == -1 else _LEVELS[lv][3] for lv in line) for line in grid)


def _f(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def render_diagnosis(diag: Any, full: bool = False):
    """A rich renderable for the terminal (None when `diag` is not a diagnosis)."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    d = as_diagnosis(diag)
    if d is None:
        return None
    style = {"ok": "green", "explained": "yellow", "unexplained": "red"}.get(d.status, "white")
    parts: list[Any] = [Text.from_markup(f"  [{style}]⮑ {escape(d.headline)}[/]")]
    if d.evidence and (full or d.status == "unexplained"):
        for i, line in enumerate(d.evidence.lines()):
            parts.append(Text.from_markup(f"    [bold]evidence:[/] {escape(line)}" if i == 0 else f"      · {escape(line)}"))
    if d.readmap and not full:
        parts.append(Text.from_markup(f"    [dim]read map:[/] {escape(d.readmap.summary)}"))
    if not full:
        if d.status == "unexplained":
            worst = _worst_map(d)
            if worst is not None:
                parts.append(Text.from_markup(_indent(error_grid_markup(worst, max_rows=8, max_cols=32), 4)))
        return Group(*parts)

    if d.reference:
        t = Table(title="kernel output vs the true reference", show_edge=False, title_justify="left")
        for col in ("output", "cos", "rel", "NaN/unwritten mismatch"):
            t.add_column(col)
        for n, f in d.reference.items():
            t.add_row(n, _f(f.cos, ".6f"), _f(f.rel), f"{f.mismatch:.2%}")
        parts.append(t)
    if d.candidates:
        t = Table(title="mutant references, best first", show_edge=False, title_justify="left")
        for col in ("", "mutant", "score", "cos", "rel", "vs ref", "what it models"):
            t.add_column(col, overflow="fold")
        for c in d.candidates:
            mark = "[green]✓[/]" if c.explains else ""
            t.add_row(mark, escape(c.name), _f(c.score), _f(c.cos, ".5f"), _f(c.rel), _f(c.distance_to_reference), escape(c.description))
        parts.append(t)
    for n, cs in d.partial.items():
        parts.append(Text.from_markup(f"  [yellow]{escape(n)}[/] alone matches: " + ", ".join(f"{escape(c.name)} (cos {_f(c.outputs[n].cos, '.5f')})" for c in cs)))
    for e in d.error_maps:
        parts.append(Text.from_markup(f"[bold]{escape(e.output)}[/] {escape(e.summary)}"))
        parts.append(Text.from_markup(_indent(error_grid_markup(e), 2)))
    if d.readmap:
        rm = d.readmap
        parts.append(Text.from_markup(f"[bold]read map[/] ({escape(rm.output)}): {escape(rm.summary)}"))
        t = Table(show_edge=False)
        for col in ("Q tile", "queries", "correct", "wrong row", "wrong tile", "unmatched", "intended KV tiles", "read KV tiles"):
            t.add_column(col)
        for r in rm.per_tile[:32]:
            t.add_row(*(str(r[k]) for k in ("q_tile", "queries", "correct", "wrong_row", "wrong_tile", "unmatched", "expected_tiles", "read_tiles")))
        parts.append(t)
        for ex in rm.examples[:4]:
            parts.append(Text(f"    e.g. {ex['head']} query {ex['query']}: should read V row {ex['expected_row']}, read {ex['read_row']}"))
    if d.unseen:
        parts.append(Text.from_markup("[dim]this fixture cannot see: " + escape(", ".join(d.unseen)) + "[/]"))
    if d.not_applicable:
        parts.append(Text.from_markup("[dim]not applicable here: " + escape(", ".join(d.not_applicable)) + "[/]"))
    for note in d.notes:
        parts.append(Text.from_markup(f"[dim]note: {escape(note)}[/]"))
    if d.pictures:
        parts.append(Text.from_markup("[dim]pictures: " + escape(", ".join(d.pictures)) + "[/]"))
    th = d.thresholds
    if th:
        parts.append(Text.from_markup(
            f"[dim]explains = score <= {th.get('fit_max')} and <= {th.get('ratio')} x reference score "
            f"(which must be >= {_f(th.get('fail_min'))}); diagnosis took {d.seconds:.2f} s[/]"
        ))
    return Group(*parts)


def _worst_map(d):
    if not d.error_maps:
        return None
    worst = max(d.reference, key=lambda n: d.reference[n].score or 0.0) if d.reference else None
    for e in d.error_maps:
        if e.output == worst:
            return e
    return d.error_maps[0]


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.split("\n"))


def _pic(rel: str, name: str | None) -> str:
    if not name:
        return ""
    rel = (rel or ".").rstrip("/")
    return name if rel in ("", ".") else f"{rel}/{name}"


def diagnosis_markdown(diag: Any, pictures_relpath: str = ".") -> str:
    """Markdown for report.md; picture links are pictures_relpath/<picture>."""
    d = as_diagnosis(diag)
    if d is None:
        return "_No diagnosis available._"
    out = [f"**Diagnosis ({d.status}):** {d.headline}", ""]
    if d.evidence and d.evidence.lines():
        out += ["Evidence:", ""] + [f"- {line}" for line in d.evidence.lines()] + [""]
    if d.candidates:
        out += ["| mutant | explains | score | cos | rel | distance to reference | models |", "|---|---|---|---|---|---|---|"]
        for c in d.candidates:
            out.append(
                f"| `{c.name}` | {'**yes**' if c.explains else ''} | {_f(c.score)} | {_f(c.cos, '.5f')} | {_f(c.rel)} | "
                f"{_f(c.distance_to_reference)} | {c.description} |"
            )
        out.append("")
    for n, cs in d.partial.items():
        out.append(f"- `{n}` alone matches " + ", ".join(f"`{c.name}` (cos {_f(c.outputs[n].cos, '.5f')})" for c in cs))
    if d.partial:
        out.append("")
    if d.reference:
        out.append("Kernel output vs the true reference: " + "; ".join(
            f"`{n}` cos {_f(f.cos, '.6f')}, rel {_f(f.rel)}" + (f", {f.mismatch:.2%} NaN/unwritten mismatch" if f.mismatch else "")
            for n, f in d.reference.items()))
        out.append("")
    for e in d.error_maps:
        out.append(f"Error map of `{e.output}` (tiles of {e.tile[0]}x{e.tile[1]}; rows: {e.row_label}, cols: {e.col_label or '-'}): {e.summary}")
        out += ["", "```", error_grid_ascii(e), "```", "", "`.` rounding, `-` <= 10%, `+` <= 50%, `#` > 50% of max |ref|, `!` NaN/Inf/unwritten", ""]
        if e.picture:
            out += [f"![error map of {e.output}]({_pic(pictures_relpath, e.picture)})", ""]
    if d.readmap:
        rm = d.readmap
        out += [f"Read map of `{rm.output}`: {rm.summary}", "",
                "| Q tile | queries | correct | wrong row | wrong tile | unmatched | intended KV tiles | read KV tiles |",
                "|---|---|---|---|---|---|---|---|"]
        for r in rm.per_tile[:64]:
            out.append("| " + " | ".join(str(r[k]) for k in ("q_tile", "queries", "correct", "wrong_row", "wrong_tile", "unmatched", "expected_tiles", "read_tiles")) + " |")
        out.append("")
        if rm.picture:
            out += [f"![read map]({_pic(pictures_relpath, rm.picture)})", "",
                    "_x: queries (groups side by side), y: V rows (KV tiles outlined); grey: intended row, green: read it, red: read another row, magenta (top): matched no V row._", ""]
    if d.unseen:
        out += ["This fixture cannot see: " + ", ".join(f"`{u}`" for u in d.unseen) + ".", ""]
    for note in d.notes:
        out.append(f"- note: {note}")
    if d.notes:
        out.append("")
    return "\n".join(out).rstrip() + "\n"
