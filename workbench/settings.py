"""wb's numeric environment settings, read where they are used (not at import, so a bad value
cannot break a command that never needs it) and refused in one line, exit 2, never a traceback:

    WB_WORKER_IDLE     seconds a warm worker waits idle before it exits (600; 0: no limit)
    WB_COMPILE_JOBS    compile workers of `wb shapes` / compile-ahead (0: one per core)
    WB_AGENT_GRACE     seconds a remote agent waits after SIGINT before SIGKILL (15)
    WB_IMPORT_MAX_MIB  the most `wb import` takes in, in MiB (records/importer.Limits)

and WB_HOME, the folder of what outlives a workspace (the compile cache, a card's peak), and
WB_DEBUG, which lets a user's error end in its traceback (any value but empty, 0, false, no, off).

and the fixed limit of a parameter product (`wb sweep`, `wb bench -p`): MAX_CASES.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from workbench.errors import UserError


def number(name: str, default: float, *, unit: str, whole: bool = False, positive: bool = False, most: float | None = None) -> float:
    """The value of environment variable ``name`` (``default`` when unset or empty): a finite
    number >= 0 (> 0 when ``positive``), a whole one when ``whole``, at most ``most``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        value = None
    shown = raw if len(raw) <= 40 else raw[:40] + "..."
    if value is None or not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "a whole number" if whole else "a number"
        floor = "above 0" if positive else "0 or more"
        raise UserError(f"{name}={shown!r} must be {kind} of {unit}, {floor}")
    if most is not None and value > most:
        raise UserError(f"{name}={shown!r} is over the {most:g} {unit} it can be")
    return value


#: the longest wait a setting of seconds may ask for (3 years): past ~9e9 s a socket's timeout
#: overflows time_t, which was a traceback and a half-made run folder
MOST_SECONDS = 1e8


#: the most cases one sweep or bench plans (at a second or more each, hours of GPU time); a
#: product past it is a typo, and checking millions of combinations took minutes before a word
MAX_CASES = 10_000


def check_case_count(sizes: list[int], what: str) -> None:
    """Refuse (one line) a product of axes of these sizes over MAX_CASES, before building it."""
    total = math.prod(sizes)
    if total > MAX_CASES:
        raise UserError(f"{what} of {total} cases ({' x '.join(map(str, sizes))}): over the {MAX_CASES} one plan takes; split it into several")


def worker_idle() -> float:
    return number("WB_WORKER_IDLE", 600.0, unit="seconds", most=MOST_SECONDS)


def compile_jobs() -> int:
    return int(number("WB_COMPILE_JOBS", 0, unit="workers", whole=True))


def agent_grace() -> float:
    return number("WB_AGENT_GRACE", 15.0, unit="seconds", most=MOST_SECONDS)


def import_max_mib() -> int | None:
    mib = number("WB_IMPORT_MAX_MIB", 0, unit="MiB", whole=True, positive=True)  # 0 only when unset
    return int(mib) or None


def wb_home() -> Path | None:
    """$WB_HOME with ~ expanded, or None when it is unset or empty."""
    raw = os.environ.get("WB_HOME", "")
    if not raw:
        return None
    try:
        return Path(raw).expanduser()
    except RuntimeError as exc:  # ~nosuchuser
        raise UserError(f"WB_HOME={raw!r}: {exc}") from None


def debug() -> bool:
    """WB_DEBUG is on: errors keep their traceback (WB_DEBUG=0 is off, not on)."""
    return os.environ.get("WB_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")
