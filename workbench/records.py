"""Run records: runs/<id>/run.json (+ report.md, pictures, artifacts).

Ids sort by time (YYYYMMDD-HHMMSS-micro). run.json is written atomically (temp file +
rename), so a reader sees either nothing or a whole record; a record that does not parse
is skipped with a warning by every reader.

Selectors: a full id, a unique id prefix, `last`, `last~N`, `STAGE@last`, `STAGE@last~N`
(STAGE as `wb run` takes it: c, stage-c, fmha/stage-c).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from workbench.errors import UserError

SCHEMA = 1
RECORD = "run.json"

# Verdicts of a whole run, from best to worst; fixtures use PASS/FAIL/SKIP.
VERDICTS = ("PASS", "FAIL", "COMPILE_ERROR", "CRASH", "HANG", "INTERRUPTED", "LOST")


class CorruptRecordWarning(UserWarning):
    pass


def new_run_dir(runs_dir: Path) -> Path:
    """Create and return a fresh, uniquely named run folder."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    while True:
        now = datetime.now()
        run_id = now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond:06d}"
        path = runs_dir / run_id
        try:
            path.mkdir()
            return path
        except FileExistsError:
            time.sleep(0.000_01 + secrets.randbelow(100) / 1e6)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    record = {"schema": SCHEMA, "id": run_dir.name, **record}
    path = run_dir / RECORD
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The record in `run_dir`, or None (with a warning) when it is missing or corrupt."""
    path = run_dir / RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        warnings.warn(f"skipping corrupt run record {path}: {exc}", CorruptRecordWarning, stacklevel=2)
        return None
    if not isinstance(data, dict) or "verdict" not in data or "stage" not in data:
        warnings.warn(f"skipping incomplete run record {path}", CorruptRecordWarning, stacklevel=2)
        return None
    data["id"] = run_dir.name
    data["_dir"] = str(run_dir)
    return data


_ID_RE = re.compile(r"^\d{8}-\d{6}-\d{6}$")


def run_ids(runs_dir: Path) -> list[str]:
    if not runs_dir.is_dir():
        return []
    return sorted(p.name for p in runs_dir.iterdir() if _ID_RE.match(p.name) and p.is_dir())


def iter_records(runs_dir: Path, newest_first: bool = True) -> Iterable[dict[str, Any]]:
    ids = run_ids(runs_dir)
    for run_id in reversed(ids) if newest_first else ids:
        record = read_record(runs_dir / run_id)
        if record is not None:
            yield record


def list_records(
    runs_dir: Path, where: Callable[[dict], bool] | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Records newest first, optionally filtered, at most `limit`."""
    out = []
    for record in iter_records(runs_dir):
        if where is None or where(record):
            out.append(record)
            if limit is not None and len(out) >= limit:
                break
    return out


_SELECTOR_RE = re.compile(r"^(?:(?P<stage>[^@]+)@)?last(?:~(?P<back>\d+))?$")


def select(runs_dir: Path, selector: str, stage_of: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Resolve a selector to one record (see the module doc). `stage_of` maps STAGE to a stage id."""
    selector = selector.strip()
    match = _SELECTOR_RE.match(selector)
    if match:
        back = int(match["back"] or 0)
        where = None
        label = "runs"
        if match["stage"]:
            stage_id = stage_of(match["stage"]) if stage_of else match["stage"]
            where = lambda r: r.get("stage") == stage_id  # noqa: E731
            label = f"runs of {stage_id}"
        found = list_records(runs_dir, where, limit=back + 1)
        if len(found) <= back:
            have = len(found)
            raise UserError(f"{selector}: only {have} {label} recorded" if have else f"{selector}: no {label} recorded yet")
        return found[back]
    ids = run_ids(runs_dir)
    if selector in ids:
        record = read_record(runs_dir / selector)
        if record is None:
            raise UserError(f"run {selector} has no readable record (corrupt or still running)")
        return record
    matches = [i for i in ids if i.startswith(selector)]
    if len(matches) == 1:
        record = read_record(runs_dir / matches[0])
        if record is None:
            raise UserError(f"run {matches[0]} has no readable record (corrupt or still running)")
        return record
    if len(matches) > 1:
        shown = ", ".join(matches[:4]) + (" ..." if len(matches) > 4 else "")
        raise UserError(f"run selector {selector!r} is ambiguous: {shown}")
    raise UserError(
        f"no run matches {selector!r}: use a run id (or a unique prefix), last, last~N or STAGE@last; `wb runs` lists them"
    )
