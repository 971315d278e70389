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


#: set in every worker's environment when it is started (a fresh random token per worker):
#: whatever the worker starts inherits it, forked or exec'd, so its descendants are found after
#: they left its process group (setsid, a daemon) or lost it as their parent
TOKEN_ENV = "WB_WORKER_TOKEN"
#: set for a worker under a wrapping tool: it starts no sentinel (workbench/run/sentinel.py)
NO_SENTINEL_ENV = "WB_NO_SENTINEL"


def new_token() -> str:
    import uuid

    return uuid.uuid4().hex


def _needle(token: str) -> bytes:
    """``TOKEN_ENV=token`` as one whole entry of /proc/PID/environ."""
    return b"\0" + f"{TOKEN_ENV}={token}".encode() + b"\0"


def _carries(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return False
    return needle in b"\0" + env + (b"" if env.endswith(b"\0") else b"\0")


def with_token(token: str) -> list[int]:
    """Live processes other than this one whose environment carries ``TOKEN_ENV=token``
    (processes of other users, whose environment cannot be read, are not seen)."""
    needle = _needle(token)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    me = os.getpid()
    return [int(name) for name in entries if name.isdigit() and int(name) != me and _carries(int(name), needle)]


def kill_token(token: str | None, sig: int | None = None) -> int:
    """Signal (default SIGKILL) every process ``with_token``, again while new ones appear (a
    descendant may fork as it is signalled); how many were signalled. Each is pinned by a pidfd
    while its environment is read, so a pid reused in between is never hit."""
    import signal

    if not token:
        return 0
    sig = signal.SIGKILL if sig is None else sig
    needle = _needle(token)
    hit: set[int] = set()
    for _ in range(3):
        pids = [pid for pid in with_token(token) if pid not in hit]
        if not pids:
            break
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except (AttributeError, OSError):
                fd = None
            try:
                if not _carries(pid, needle):
                    continue
                if fd is not None:
                    signal.pidfd_send_signal(fd, sig)
                else:
                    os.kill(pid, sig)
                hit.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
            finally:
                if fd is not None:
                    os.close(fd)
    return len(hit)
