"""A finished record's way out: written atomically (Ctrl-C held off), given its id, then
published (the run's report.md, the stage report and MEMORY.md's blocks)."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Callable

from workbench.errors import UserError
from workbench.records import memory, report
from workbench.records.store import write_record
from workbench.workspace import Workspace


_held: list[int] = []  # signals that came while held (the outermost hold raises for them)
_depth = 0


@contextlib.contextmanager
def held_signals():
    """Hold Ctrl-C and SIGTERM off while a record is made and written, so it is never half
    done: one that comes meanwhile is raised as KeyboardInterrupt when the outermost hold
    ends (nothing is lost, and wb still stops). Off the main thread it holds nothing."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    if _depth == 0:
        _held.clear()
        for sig in (signal.SIGINT, signal.SIGTERM):
            before = signal.getsignal(sig)
            if before is signal.SIG_IGN:
                continue  # ignored by whoever started wb: stays ignored
            previous[sig] = before if before is not None else signal.SIG_DFL
            signal.signal(sig, lambda signum, frame: _held.append(signum))
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if _depth == 0 and _held:
        _held.clear()
        raise KeyboardInterrupt


def publish(ws: Workspace, record: dict[str, Any]) -> None:
    """Write the run's report.md and update MEMORY.md's wb-owned blocks; a report or a
    MEMORY.md wb cannot write is a warning (the record is already safe in runs/), and the
    one does not keep the other from being written."""
    import warnings

    try:
        report.write_run_report(ws, record)
    except UserError as exc:
        warnings.warn(f"report not written: {exc}")
    memory.update_blocks_or_warn(ws, memory.run_edits([record], memory.stage_defaults(ws)))


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
