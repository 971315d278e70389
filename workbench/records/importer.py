"""`wb import`: bring run records made elsewhere (a GPU box reached without ssh, a CI
artifact) into this workspace: the run folders into runs/, their results into MEMORY.md and
the stage reports, exactly as a local run would.

All or nothing. The source (a .tgz or a folder) is first copied into a staging folder under
.wb/ with limits (bytes per file, bytes in all, number of files) and without following or
keeping any link; every record is validated (workbench/schemas/run_record.py) and
MEMORY.md's new text and MEMORY.json's new data are computed. Only then are the run folders
renamed into runs/ and MEMORY.json and MEMORY.md replaced (MEMORY.json is put back when
MEMORY.md cannot be written); if that fails, the folders are taken out again. A record that
is malformed, a link, a file over a limit or a MEMORY.md or MEMORY.json wb cannot update
stops the import with one line and leaves the workspace as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from workbench import settings
from workbench.errors import UserError, path_error
from workbench.files import atomic_write_text, held_lock
from workbench.kernels.registry import load_kernels
from workbench.records import memory, report, speed
from workbench.interrupts import held_signals
from workbench.records.store import RECORD, ensure_runs_dir, is_run_id, load_record, run_ids
from workbench.schemas import SchemaError
from workbench.workspace import Workspace

MiB = 1 << 20
#: how long an import waits for another import into the same workspace to finish
LOCK_WAIT_S = 600.0


@dataclass(frozen=True)
class Limits:
    """What one import may bring (WB_IMPORT_MAX_MIB raises the total for large archives)."""

    file_bytes: int = 256 * MiB
    total_bytes: int = 1024 * MiB
    files: int = 100_000

    @classmethod
    def from_env(cls) -> "Limits":
        mib = settings.import_max_mib()
        if mib is None:
            return cls()
        total = mib * MiB
        return cls(file_bytes=min(cls.file_bytes, total), total_bytes=total)


class _Budget:
    def __init__(self, source: Path, limits: Limits):
        self.source, self.limits = source, limits
        self.bytes = self.files = 0

    def take(self, name: str, size: int) -> None:
        self.files += 1
        self.bytes += size
        if size > self.limits.file_bytes:
            raise UserError(f"{self.source}: {name} is {size / MiB:.0f} MiB, over the {self.limits.file_bytes // MiB} MiB a file may have; nothing was imported")
        if self.bytes > self.limits.total_bytes:
            raise UserError(
                f"{self.source}: holds over {self.limits.total_bytes // MiB} MiB (WB_IMPORT_MAX_MIB raises the limit); nothing was imported"
            )
        if self.files > self.limits.files:
            raise UserError(f"{self.source}: holds over {self.limits.files} files; nothing was imported")


def _refuse_link(source: Path, name: str) -> UserError:
    return UserError(f"{source}: {name} is a link: wb imports regular files and folders only; nothing was imported")


#: folders a source may nest below its top: a run folder is runs/<id>/artifacts/<stage>/...; far
#: deeper (1500 levels) made Python's recursive walk and removal raise RecursionError, and the
#: staging folder left behind broke every later import
MAX_DEPTH = 32


def _refuse_depth(source: Path, name: str) -> UserError:
    return UserError(f"{source}: {name[:120]} is nested over {MAX_DEPTH} folders deep; nothing was imported")


def _extract_tar(source: Path, into: Path, budget: _Budget) -> None:
    try:
        with tarfile.open(source) as tar:
            for member in tar:
                folders = len(Path(member.name).parts) - (0 if member.isdir() else 1)
                if folders > MAX_DEPTH:  # as _copy_folder counts them
                    raise _refuse_depth(source, member.name)
                if ".." in Path(member.name).parts:  # runs/../<id> lands beside runs/, where no run is read
                    raise UserError(f"{source}: {member.name[:120]} climbs out of its folder ('..'); nothing was imported")
                if member.issym() or member.islnk():
                    raise _refuse_link(source, member.name)
                if not (member.isfile() or member.isdir()):
                    raise UserError(f"{source}: {member.name} is not a regular file or folder; nothing was imported")
                budget.take(member.name, member.size)
                tar.extract(member, into, filter="data")
    except tarfile.FilterError as exc:
        raise UserError(f"{source}: refused: {exc}; nothing was imported") from None
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
        raise UserError(f"{source}: not a readable tar archive of runs ({type(exc).__name__}: {exc})") from None


def _copy_folder(source: Path, into: Path, budget: _Budget) -> None:
    """Copy regular files and folders; a link anywhere (to a file or folder, dangling or not)
    refuses, and so does a folder that cannot be listed (os.walk would skip it in silence)."""

    def unlistable(exc: OSError) -> None:
        where = Path(exc.filename or source)
        where = where.relative_to(source) if where.is_relative_to(source) and where != source else where
        raise path_error(f"{source}: cannot read", where, exc, then="nothing was imported")

    for folder, dirs, files in os.walk(source, onerror=unlistable, followlinks=False):
        rel = Path(folder).relative_to(source)
        if len(rel.parts) + 1 > MAX_DEPTH and dirs:  # a subfolder past the limit; top-down: before the walk goes deeper
            raise _refuse_depth(source, str(rel / dirs[0]))
        (into / rel).mkdir(parents=True, exist_ok=True)
        for name in [*dirs, *files]:
            path = Path(folder) / name
            try:
                st = path.lstat()
            except OSError as exc:
                raise UserError(f"{source}: cannot read {rel / name}: {exc.strerror or exc}") from None
            if stat.S_ISLNK(st.st_mode):
                raise _refuse_link(source, str(rel / name))
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise UserError(f"{source}: {rel / name} is not a regular file or folder; nothing was imported")
            budget.take(str(rel / name), st.st_size)
            try:
                shutil.copyfile(path, into / rel / name, follow_symlinks=False)
            except OSError as exc:
                raise UserError(f"{source}: cannot copy {rel / name}: {exc.strerror or exc}") from None


def _runs_dir_in(folder: Path, source: Path) -> Path:
    if (folder / "runs").is_dir():
        return folder / "runs"
    if run_ids(folder):
        return folder
    raise UserError(f"{source} holds no run records (expected runs/<id>/run.json)")


@dataclass
class Imported:
    records: list[dict]  # oldest first
    without_record: list[str]  # run folders that had no run.json (still running or killed where they were made)
    not_runs: list[str] = field(default_factory=list)  # folders in runs/ whose names are no run ids: left out
    already_here: list[str] = field(default_factory=list)  # the same run.json is in runs/ already
    taken: list[str] = field(default_factory=list)  # runs/ holds another run of this id: left out
    ahead: list[str] = field(default_factory=list)  # imported runs dated ahead of this machine's clock


#: how far past this machine's clock an imported run's id may be dated before the import says so
AHEAD_SLACK = timedelta(minutes=10)


def dated_ahead(run_ids_: list[str], now: datetime | None = None) -> list[str]:
    """The ids dated more than ``AHEAD_SLACK`` past ``now`` (this machine's local clock, as run
    ids are written): made on a machine whose clock or time zone is ahead of this one's, they
    sort after every run made here until then, so `last` names them."""
    now = now or datetime.now()
    ahead = []
    for run_id in run_ids_:
        try:
            made = datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S")
        except ValueError:  # an id of the right shape but no date (month 13): no clock to compare
            continue
        if made > now + AHEAD_SLACK:
            ahead.append(run_id)
    return ahead


def import_runs(ws: Workspace, source: Path, limits: Limits | None = None) -> Imported:
    """Copy runs from `source` (a runs/ folder, a folder holding runs/, or a .tgz of it) and
    publish them; all or nothing (see the module doc). Runs already here are skipped."""
    source = Path(source)
    try:
        exists, is_link, is_dir = source.exists(), source.is_symlink(), source.is_dir()
    except OSError as exc:  # a name too long for the OS, ...
        raise path_error("", source, exc) from None
    if not exists and not is_link:
        raise UserError(f"{source} does not exist")
    if is_link and not exists:
        raise UserError(f"{source} is a link to nothing")
    if is_dir and ws.state_dir.resolve().is_relative_to(source.resolve()):
        # copying it would copy the copy being made (.wb/import-*/source/.wb/import-*/...)
        raise UserError(f"{source} holds this workspace's own state (.wb): import its runs/ folder, or another workspace")
    limits = limits or Limits.from_env()
    ws.ensure_state_dir()
    lock = held_lock(ws.state_dir / "import.lock", LOCK_WAIT_S)
    if lock is None:
        raise UserError(
            f"another wb import into this workspace has held {ws.state_dir / 'import.lock'} for {LOCK_WAIT_S:.0f} s: "
            "let it finish (or end it), then import again"
        ) from None
    try:
        _finish_killed_import(ws)
        return _import_locked(ws, source, limits)
    finally:
        lock.release()


def _import_locked(ws: Workspace, source: Path, limits: Limits) -> Imported:
    ensure_runs_dir(ws.runs_dir)  # a read-only or broken runs/ is named, not "Permission denied" after the copy
    with tempfile.TemporaryDirectory(prefix="import-", dir=ws.state_dir) as tmp:
        staged = Path(tmp) / "source"
        staged.mkdir()
        budget = _Budget(source, limits)
        if source.is_file():
            _extract_tar(source, staged, budget)
        else:
            _copy_folder(source.resolve(), staged, budget)
        runs = _runs_dir_in(staged, source)
        have = set(run_ids(ws.runs_dir))
        records, without, already, taken = [], [], [], []
        for run_id in run_ids(runs):
            if run_id in have:
                (already if _same_record(runs / run_id, ws.runs_dir / run_id) else taken).append(run_id)
                continue
            if not (runs / run_id / RECORD).is_file():
                without.append(run_id)
                continue
            try:
                record = load_record(runs / run_id)
            except SchemaError as exc:  # named inside the source, not in the staging folder that goes away
                inside = Path(exc.source)
                inside = inside.relative_to(staged) if inside.is_relative_to(staged) else inside
                raise SchemaError(f"{source}: {inside}", f"{exc.problem}; nothing was imported") from None
            record["_dir"] = str(ws.runs_dir / run_id)
            records.append(record)
        # wb's own stage reports live in runs/reports; any other folder is not wb's to import
        not_runs = sorted(p.name for p in runs.iterdir() if p.is_dir() and not is_run_id(p.name) and p.name != "reports")
        _complete(ws, records)
        _commit(ws, runs, records)
    return Imported(records, without, not_runs, already, taken, dated_ahead([r["id"] for r in records]))


def _same_record(a: Path, b: Path) -> bool:
    try:
        return (a / RECORD).read_bytes() == (b / RECORD).read_bytes()
    except OSError:  # one without a run.json: not the same run
        return False


def _complete(ws: Workspace, records: list[dict]) -> None:
    """Fill `variants_changed` of records older than the field, from the stage's defaults."""
    specs = {s.id: s for k in load_kernels(ws).values() for s in k.stages}
    for record in records:
        spec = specs.get(record.get("stage"))
        if "variants_changed" not in record and spec is not None:
            record["variants_changed"] = {k: v for k, v in record.get("variants", {}).items() if spec.variants.get(k, (v,))[0] != v}


def memory_edits(records: list[dict], ws: Workspace | None = None) -> dict:
    """MEMORY.md's block edits for these records: runs into status/log, benches into speed."""
    runs = [r for r in records if r.get("kind", "run") == "run"]
    edits = memory.run_edits(runs, *(memory.stage_facts(ws) if ws is not None else ({}, {}))) if runs else {}
    benches = [r for r in records if r.get("kind") == "bench"]
    if benches:
        edits["speed"] = speed.speed_edit(benches, ws)
    return edits


def _commit(ws: Workspace, staged_runs: Path, records: list[dict]) -> None:
    """Rename the staged run folders into runs/ and update MEMORY.json and MEMORY.md; undo
    the renames if they cannot be written (update_blocks puts MEMORY.json back itself when
    MEMORY.md fails). Stage reports are derived data and follow."""
    if not records:
        return
    edits = memory_edits(records, ws)
    if edits:
        memory.render_blocks(ws, edits)  # fails here, before anything moved, on a MEMORY.md or MEMORY.json wb cannot update
    # a SIGKILL between the renames and MEMORY.md (no handler runs) left runs in runs/ that
    # no later import publishes (they are "already here"): the next import finishes from this
    atomic_write_text(_pending(ws), json.dumps([r["id"] for r in records]) + "\n")
    moved: list[Path] = []
    # a Ctrl-C or SIGTERM here waits until every run is in runs/ and in MEMORY.md (one landing
    # between a rename and its note in `moved` left a run that no later import would publish)
    with held_signals():
        try:
            for record in records:
                target = ws.runs_dir / record["id"]
                os.rename(staged_runs / record["id"], target)
                moved.append(target)
            if edits:
                memory.update_blocks(ws, edits)
        except BaseException as exc:
            for target in moved:
                shutil.rmtree(target, ignore_errors=True)
            _pending(ws).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise UserError(f"import failed and was undone: {exc.strerror or exc}") from None
            raise
        _pending(ws).unlink(missing_ok=True)
    _write_stage_reports(ws, records)


def _write_stage_reports(ws: Workspace, records: list[dict]) -> None:
    """The stage reports of the imported runs: derived data, written after the runs and
    MEMORY.md are in, so one wb cannot write is a warning (the import is done)."""
    for stage in sorted({r["stage"] for r in records if r.get("kind", "run") == "run"}):
        try:
            report.write_stage_report(ws, stage)
        except UserError as exc:
            warnings.warn(f"stage report not written: {exc}")


def _pending(ws: Workspace) -> Path:
    return ws.state_dir / "import-pending.json"


def _remove_tree(path: Path) -> None:
    """shutil.rmtree, and rm -rf where the tree is deeper than Python's recursion (a staging
    folder an older wb left from a source nested 1500 deep)."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        subprocess.run(["rm", "-rf", "--", str(path)], check=False)


def _finish_killed_import(ws: Workspace) -> None:
    """An import killed with SIGKILL (under the import lock, nothing else imports now): its
    staging folders are removed, and the runs it had moved into runs/ are published."""
    for stale in ws.state_dir.glob("import-*"):
        if stale.is_dir():
            _remove_tree(stale)
    pending = _pending(ws)
    if not pending.is_file():
        return
    try:
        ids = json.loads(pending.read_text())
    except (OSError, ValueError, RecursionError):
        ids = []
    records = []
    for run_id in ids if isinstance(ids, list) else []:
        if isinstance(run_id, str) and (ws.runs_dir / run_id / RECORD).is_file():
            try:
                records.append(load_record(ws.runs_dir / run_id))
            except UserError:
                continue
    try:  # killed after MEMORY.md was written: those runs are in its log already
        logged = memory.block_content(memory.read_memory(ws.memory_path)[0], "log") or ""
    except UserError:
        logged = ""
    records = [r for r in records if r["id"] not in logged]
    if records:
        with held_signals():
            memory.update_blocks(ws, memory_edits(records, ws))
        _write_stage_reports(ws, records)
        warnings.warn(f"an earlier import was killed before MEMORY.md: its {len(records)} run(s) in runs/ are published now")
    pending.unlink(missing_ok=True)
