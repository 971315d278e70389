"""A finished record's way out: written atomically (Ctrl-C and SIGTERM held), given its id, then
published (the run's report.md, the stage report and MEMORY.md's blocks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from workbench.errors import UserError
from workbench.interrupts import held_signals
from workbench.records import memory, report
from workbench.records.store import write_record
from workbench.workspace import Workspace


def publish(ws: Workspace, record: dict[str, Any]) -> None:
    """Write the run's report.md and update MEMORY.md's wb-owned blocks; a report or a
    MEMORY.md wb cannot write is a warning (the record is already safe in runs/), and the
    one does not keep the other from being written."""
    import warnings

    try:
        report.write_run_report(ws, record)
    except UserError as exc:
        warnings.warn(f"report not written: {exc}")
    memory.update_blocks_or_warn(ws, memory.run_edits([record], *memory.stage_facts(ws)))


def commit(
    ws: Workspace, run_dir: Path, record: dict[str, Any],
    publish: Callable[[Workspace, dict[str, Any]], None] | None = publish,
) -> dict[str, Any]:
    """Write `record` to run_dir/run.json, give it its id (the folder's name), then publish it
    (`publish=None`: a record no report or MEMORY.md block shows, e.g. `wb compile`)."""
    with held_signals():
        write_record(run_dir, record)
        record["id"] = run_dir.name
        record["_dir"] = str(run_dir)
        if publish is not None:
            publish(ws, record)
    return record
