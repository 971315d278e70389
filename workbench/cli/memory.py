"""`wb note`: add a lesson to MEMORY.md."""

from __future__ import annotations

from typing import Optional

import typer

from workbench.cli import app, state
from workbench.errors import UserError


@app.command()
def note(
    text: str = typer.Argument(..., help="The lesson, e.g. \"TMA coords: mode 2 is the KV tile index\"."),
    stage: Optional[str] = typer.Option(None, "--stage", "-s", help="The stage it is about (c, stage-c, KERNEL/stage-c)."),
) -> None:
    """Append a dated lesson to MEMORY.md's Lessons section."""
    from workbench.records import memory
    from workbench.terminal import console, escape

    if not memory.one_line(text):  # what MEMORY.md would get: control and invisible characters are spaces there
        raise UserError("the note is empty")
    ws = state.workspace()
    stage_id = None
    if stage is not None and not stage.strip():
        raise UserError("--stage is empty: give the stage the lesson is about (c, stage-c, KERNEL/stage-c), or leave it out")
    if stage:
        from workbench.kernels.registry import resolve_stage

        stage_id = resolve_stage(ws, stage).id
    line, added = memory.add_note(ws, text, stage_id)
    shown = line if len(line) <= 300 else line[:299] + "…"
    console.print(f"{'added to' if added else 'already in'} {ws.memory_path.name}: {escape(shown)}")
