"""A tool the worker process runs under: compute-sanitizer (`wb run --sanitize`), Nsight
Compute (`wb profile`). The supervisor starts a fresh worker as ``command(log) + worker``,
waits for it to exit after its job (the tool writes its report then), and ``summarize``
turns the tool's log into the record's field and, maybe, a new verdict."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from workbench.errors import UserError


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
    tool: str = "tool"  # the record field's `tool` ("ncu", "racecheck", ...)


#: a tool's log wb reads into memory at most (ncu's CSV of a long run is a few MiB)
LOG_MAX_BYTES = 256 * 1024 * 1024


def read_tool_log(path: Path) -> tuple[str, str | None]:
    """The tool's log as text ("" when it wrote none), and a note when wb would not read it: not
    a regular file (a FIFO would block wb, /dev/zero never end) or over LOG_MAX_BYTES."""
    try:
        if not path.exists():
            return "", None
        if not path.is_file():
            return "", f"{path.name} is not a regular file: not read"
        if path.stat().st_size > LOG_MAX_BYTES:
            return "", f"{path.name} is over {LOG_MAX_BYTES >> 20} MiB: not read"
        return path.read_text(errors="replace"), None
    except OSError as exc:
        return "", f"{path.name} cannot be read: {exc.strerror or exc}"


def cuda_tool(name: str, env: str, needed_by: str, what: str) -> str:
    """A CUDA toolkit executable: $env, PATH, $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin;
    refused in one line (UserError) when none has it."""
    given = os.environ.get(env)
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            raise UserError(f"{env}={given}: not an executable file")
        return given
    found = shutil.which(name)
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.access(candidate := os.path.join(home, "bin", name), os.X_OK):
            return candidate
    raise UserError(
        f"{needed_by} needs NVIDIA {what} (part of the CUDA toolkit) and this machine has none on PATH, "
        f"in $CUDA_HOME/bin or /usr/local/cuda/bin (or set {env})"
    )
