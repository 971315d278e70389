"""`wb import`: bring run records made elsewhere (a GPU box reached without ssh, a CI
artifact) into this workspace: copy the run folders, then fold them into MEMORY.md and the
stage reports exactly as a local run would."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

from workbench.errors import UserError
from workbench.records import read_record, run_ids
from workbench.workspace import Workspace


def _runs_dir_in(folder: Path) -> Path:
    if (folder / "runs").is_dir():
        return folder / "runs"
    if run_ids(folder):
        return folder
    raise UserError(f"{folder} holds no run records (expected runs/<id>/run.json)")


def import_runs(ws: Workspace, source: Path) -> list[dict]:
    """Copy runs from `source` (a runs/ folder, a folder holding runs/, or a .tgz of it);
    returns the imported records, oldest first. Runs already here are skipped."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        if source.is_file():
            try:
                with tarfile.open(source) as tar:
                    tar.extractall(tmp, filter="data")
            except tarfile.TarError as exc:
                raise UserError(f"{source}: not a tar archive of runs ({exc})") from None
            source = Path(tmp)
        runs = _runs_dir_in(source)
        have = set(run_ids(ws.runs_dir))
        imported = []
        for run_id in run_ids(runs):
            if run_id in have or read_record(runs / run_id) is None:
                continue
            shutil.copytree(runs / run_id, ws.runs_dir / run_id)
            imported.append(read_record(ws.runs_dir / run_id))
    publish_imported(ws, imported)
    return imported


def publish_imported(ws: Workspace, records: list[dict]) -> None:
    from workbench import bench, memory, report
    from workbench.registry import load_kernels

    specs = {s.id: s for k in load_kernels(ws).values() for s in k.stages}
    stages = set()
    for record in records:
        spec = specs.get(record.get("stage"))
        if "variants_changed" not in record and spec is not None:  # records older than the field
            record["variants_changed"] = {k: v for k, v in record.get("variants", {}).items() if spec.variants.get(k, (v,))[0] != v}
        if record.get("kind", "run") == "run":
            memory.record_run(ws, record)
            stages.add(record["stage"])
        elif record.get("kind") == "bench":
            bench.record_speed(ws, record)
    for stage in sorted(stages):
        report.write_stage_report(ws, stage)
