"""A tool the worker process runs under: compute-sanitizer (`wb run --sanitize`), Nsight
Compute (`wb profile`). The supervisor starts a fresh worker as ``command(log) + worker``,
waits for it to exit after its job (the tool writes its report then), and ``summarize``
turns the tool's log into the record's field and, maybe, a new verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class Instrument:
    label: str  # for progress lines: "compute-sanitizer racecheck"
    record_field: str  # the run record's field it fills: "sanitizer", "profile"
    log_name: str  # its log, in the run's folder
    command: Callable[[Path], list[str]]  # the log's path -> the command line the worker's is appended to
    # log, the run's verdict, the worker's result (its "flops": one launch's) -> verdict, field
    summarize: Callable[[Path, str, dict[str, Any]], tuple[str, dict[str, Any]]]
    environment: dict[str, str] = field(default_factory=dict)
    timeout_factor: float = 1.0  # the stage's own timeout is scaled by this (not a --timeout given)
