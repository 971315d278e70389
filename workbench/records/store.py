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
import shutil
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from workbench import processes
from workbench.errors import UserError
from workbench.files import atomic_write_text, folder_problem
from workbench.schemas import SchemaError, load_json, short
from workbench.text import cut_middle

SCHEMA = 1
RECORD = "run.json"

# Verdicts of a whole run, from best to worst; fixtures use PASS/FAIL/SKIP.
VERDICTS = ("PASS", "FAIL", "COMPILE_ERROR", "CRASH", "HANG", "INTERRUPTED", "LOST")


class CorruptRecordWarning(UserWarning):
    pass


def ensure_runs_dir(runs_dir: Path) -> Path:
    """runs/, created and writable; else one line saying what is in the way (new_run_dir
    checks it before a run starts; a sweep before its first case)."""
    problem = not_a_folder(runs_dir)
    if problem is None:
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = not_a_folder(runs_dir) or f"cannot create {runs_dir}: {exc.strerror or exc}"
    if problem is None and not os.access(runs_dir, os.W_OK | os.X_OK):
        problem = f"{runs_dir} is not writable: wb records every run there (runs/<id>/run.json); make it writable"
    if problem is not None:
        raise UserError(problem)
    return runs_dir


def not_a_folder(runs_dir: Path) -> str | None:
    """Why `runs_dir` cannot hold runs (a file, a link loop, a link to a device or to nothing
    is in the way), or None: it is a folder, or nothing is there yet (no runs recorded)."""
    problem = folder_problem(runs_dir)
    return f"{problem}: wb keeps the run records there; move it away" if problem else None


def new_run_dir(runs_dir: Path) -> Path:
    """Create and return a fresh, uniquely named run folder."""
    ensure_runs_dir(runs_dir)
    while True:
        now = datetime.now()
        run_id = now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond:06d}"
        path = runs_dir / run_id
        try:
            path.mkdir()
        except FileExistsError:
            time.sleep(0.000_01 + secrets.randbelow(100) / 1e6)
            continue
        _mark_owner(path)
        return path


#: in a run folder until its record is written: which wb made it (a folder left without a
#: record says whether its wb still runs or was killed)
OWNER = ".wb-owner.json"


def _mark_owner(run_dir: Path) -> None:
    try:
        (run_dir / OWNER).write_text(json.dumps(processes.identity(os.getpid())))
    except OSError:
        pass  # a hint only


def unfinished_run(run_dir: Path) -> str:
    """Why a run folder has no record: its wb still runs, or ended before writing it."""
    try:
        marker = run_dir / OWNER
        owner = json.loads(marker.read_text()) if marker.is_file() and marker.stat().st_size < 4096 else None
    except (OSError, ValueError, RecursionError):  # (RecursionError: JSON nested past the parser's depth)
        owner = None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return f"run {run_dir.name} has no readable record (corrupt, or written by a wb older than this one)"
    if processes.same_process(owner["pid"], owner.get("starttime"), owner.get("boot_id")):
        return f"run {run_dir.name} has no record yet: its wb (pid {owner['pid']}) is still running it"
    return f"run {run_dir.name} has no record: its wb (pid {owner['pid']}) ended before writing it (killed?)"


@contextmanager
def discarded_unless_recorded(run_dir: Path) -> Iterator[None]:
    """A Ctrl-C (or SIGTERM) or a user's mistake (UserError: a stage module that is missing,
    ...) inside removes `run_dir` unless its record was written: a command that records
    nothing then (wb compile) leaves no run folder behind."""
    try:
        yield
    except (KeyboardInterrupt, UserError):
        if not (run_dir / RECORD).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_record(kind: str, spec: Any, params: dict[str, Any], variants: dict[str, str], verdict: str, **fields: Any) -> dict[str, Any]:
    """A record of a stage (`spec`: a kernels.registry.StageSpec) with every field of the run
    record schema (workbench/schemas/run_record.py; schema and id are added when it is
    written). `fields` fill or add fields (a compile record adds arch, resources, sass...)."""
    record: dict[str, Any] = {
        "kind": kind,
        "kernel": spec.kernel,
        "stage": spec.id,
        "letter": spec.letter,
        "stage_title": spec.title,
        "verdict": verdict,
        "params": params,
        "variants": variants,
        "variants_changed": {k: v for k, v in variants.items() if spec.variants.get(k, (v,))[0] != v},
        "fixtures_requested": [],
        "seed": None,
        "error": None,
        "crashed_on": None,
        "results": [],
        "shapes": [],
        "about": None,
        "fixture_notes": {},
        "timing": {},
        "provenance": {},
        "started": None,
        "finished": None,
        "bench": [],
        "bench_sweep": None,  # wb bench: whether its cases are the kernel's bench.sweep (its perf doc's source)
        "peak": None,
        "notes": [],
        "host_name": None,
        "remote": None,
        "sweep": None,
        "exported": None,  # wb run --exported: the package, its configuration, skipped fixtures
        "sanitizer": None,  # wb run --sanitize: the tool, its findings (workbench.run.sanitize)
        "profile": None,  # wb profile: ncu's headline counters of the stage's kernel (workbench.run.profile)
        "trace": None,  # wb run --trace: the tile timeline's file and summary (workbench.run.timeline)
    }
    record.update(fields)
    return record


#: the longest string a record keeps (the schema takes 4 MiB): whatever a stage's code put
#: into an error, a note or a name, the record stays one wb reads back
RECORD_TEXT_MAX = 1 << 20


def _bounded(value: Any) -> Any:
    if isinstance(value, str):
        return cut_middle(value, RECORD_TEXT_MAX)
    if isinstance(value, dict):
        return {k: _bounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_bounded(v) for v in value]
    return value


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    record = _bounded({"schema": SCHEMA, "id": run_dir.name, **record})
    path = run_dir / RECORD
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    (run_dir / OWNER).unlink(missing_ok=True)
    return path


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The record in `run_dir`, or None (with a warning) when it is missing, corrupt or does
    not match the declared schema (workbench/schemas/run_record.py)."""
    try:
        return load_record(run_dir)
    except FileNotFoundError:
        return None
    except UserError as exc:
        warnings.warn(f"skipping corrupt run record {exc}", CorruptRecordWarning, stacklevel=2)
        return None


def load_record(run_dir: Path) -> dict[str, Any]:
    """The validated record in `run_dir`; FileNotFoundError when there is none, SchemaError
    (one line naming the file and the key) when it is corrupt or has a wrong type."""
    from workbench.schemas.run_record import MAX_BYTES, RunRecord  # lazy: pydantic loads when a file is read, not at start-up

    path = run_dir / RECORD
    data, _ = load_json(path, RunRecord, MAX_BYTES)
    if not isinstance(data, dict):  # the schema has already refused it; keeps type checkers calm
        raise SchemaError(str(path), "not a JSON object")
    data["id"] = run_dir.name
    data["_dir"] = str(run_dir)
    return data


_ID_RE = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9]{6}")  # fullmatch, ASCII: "$" took "<id>\n", \d took other scripts' digits


def is_run_id(name: str) -> bool:
    return bool(_ID_RE.fullmatch(name))


def run_ids(runs_dir: Path) -> list[str]:
    """The run ids in `runs_dir`, oldest first; none when it is not there yet. A file, a link
    loop or a dangling link in its place is one line, not "no runs"."""
    problem = not_a_folder(runs_dir)
    if problem is not None:
        raise UserError(problem)
    if not runs_dir.is_dir():
        return []
    try:
        return sorted(p.name for p in runs_dir.iterdir() if _ID_RE.fullmatch(p.name) and p.is_dir())
    except OSError as exc:
        raise UserError(f"cannot read {runs_dir}: {exc.strerror or exc}") from None


def unfinished_runs(runs_dir: Path, newest: int = 20) -> list[str]:
    """What each of the `newest` run folders without a record says (its wb still runs it, or
    was killed before writing it: unfinished_run), newest first."""
    out = []
    for run_id in reversed(run_ids(runs_dir)[-newest:]):
        if not (runs_dir / run_id / RECORD).exists():
            out.append(unfinished_run(runs_dir / run_id))
    return out


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
    out: list[dict[str, Any]] = []
    if limit is not None and limit <= 0:
        return out
    for record in iter_records(runs_dir):
        if where is None or where(record):
            out.append(record)
            if limit is not None and len(out) >= limit:
                break
    return out


_SELECTOR_RE = re.compile(r"^(?:(?P<stage>[^@]+)@)?last(?:~(?P<back>[0-9]+))?$")


def select(runs_dir: Path, selector: str, stage_of: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Resolve a selector to one record (see the module doc). `stage_of` maps STAGE to a stage id."""
    selector = selector.strip()
    if not selector:
        raise UserError("an empty run selector: give a run id (or its start), last, last~N or STAGE@last")
    match = _SELECTOR_RE.match(selector)
    if match:
        digits = match["back"] or "0"
        back = int(digits) if len(digits) <= 9 else 10**9  # past any runs/; int() refuses over 4300 digits
        where = None
        label = "runs"
        if match["stage"]:
            stage_id = stage_of(match["stage"]) if stage_of else match["stage"]
            where = lambda r: r.get("stage") == stage_id  # noqa: E731
            label = f"runs of {stage_id}"
        found = list_records(runs_dir, where, limit=back + 1)
        if len(found) <= back:
            have = len(found)
            if have == 1:
                label = label.replace("runs", "run", 1)
            raise UserError(f"{selector}: only {have} {label} recorded" if have else f"{selector}: no {label} recorded yet")
        return found[back]
    ids = run_ids(runs_dir)
    if selector in ids:
        record = read_record(runs_dir / selector)
        if record is None:
            raise UserError(unfinished_run(runs_dir / selector))
        return record
    matches = [i for i in ids if i.startswith(selector)]
    if len(matches) == 1:
        record = read_record(runs_dir / matches[0])
        if record is None:
            raise UserError(unfinished_run(runs_dir / matches[0]))
        return record
    if len(matches) > 1:
        shown = ", ".join(matches[:4]) + (" ..." if len(matches) > 4 else "")
        raise UserError(f"run selector {short(selector)} is ambiguous: {shown}")
    raise UserError(
        f"no run matches {short(selector)}: use a run id (or a unique prefix), last, last~N or STAGE@last; `wb runs` lists them"
    )
