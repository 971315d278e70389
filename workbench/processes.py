"""A process's identity on this machine: its pid, its start time (field 22 of /proc/<pid>/stat,
clock ticks after boot) and the kernel's boot id. A recorded process matches a live one only
when all three do, so a pid the kernel has since handed to another program is never taken
for it (pid files: workbench.run.procs; a run folder's owner: workbench.records.store)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rfind(")") + 2:].split()


def starttime(pid: int) -> int | None:
    """The process's start time in clock ticks after boot, or None when it is not running."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in ("Z", "X"):  # state: a zombie runs nothing
        return None
    return int(fields[19])  # field 22 overall; fields[0] is field 3


def identity(pid: int) -> dict[str, Any]:
    return {"pid": pid, "starttime": starttime(pid), "boot_id": boot_id()}


def same_process(pid: int | None, expected_start: int | None, expected_boot: str | None = None) -> bool:
    """True when `pid` runs now and is the process that was recorded (not a reused pid)."""
    if not pid or expected_start is None:
        return False
    if expected_boot and boot_id() and expected_boot != boot_id():
        return False
    return starttime(pid) == expected_start


def process_age(start_ticks: int) -> float | None:
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
