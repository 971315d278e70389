"""The worker side of `wb export` (the supervisor side: workbench.run.export_job): a run job
of kind "export" (worker.Job hands it over) runs build.export_stage in the worker, so the
stage's code never runs in wb's own process, and sends its events as
{"type": "progress", "phase": "export", "export": event}. Result: {out, manifest, unverified}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from workbench.errors import UserError
from workbench.export.build import export_stage


class ExportJob:
    def __init__(self, job: dict[str, Any], emit: Callable[[dict], None]):
        self.job = job
        self.emit = emit
        self.must_exit = True  # the export imported stage modules and changed sys.path: no reuse

    def execute(self) -> dict[str, Any]:
        from workbench.kernels.registry import load_kernel
        from workbench.workspace import Workspace

        job = self.job
        ws = Workspace(Path(job["workspace"]))
        spec = load_kernel(ws.stages_dir / job["kernel"] / "kernel.yaml").stage(job["letter"])
        if spec is None:
            raise UserError(f"kernel {job['kernel']} has no stage {job['letter']!r}")
        result = export_stage(
            ws, spec, job["given"], job["variants"], job["arch"], Path(job["out"]),
            allow_unverified=job["allow_unverified"], force=job["force"], cwd=Path(job["cwd"]),
            on_event=lambda event: self.emit({"type": "progress", "phase": "export", "export": event}),
        )
        return {"out": str(result.out), "manifest": result.manifest, "unverified": [c["key"] for c in result.unverified]}
