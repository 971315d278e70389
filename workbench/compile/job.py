"""The worker side of `wb shapes` and `wb compile`: a run job of kind "compile"
(`{"op": "run", "kind": "compile", ...}`; worker.Job.execute hands it to CompileJob).

Job fields: workspace, stages [{kernel, letter, params, variants, arch}], need_kernel,
keep (artifact names), artifact_dir (one folder per stage is made inside it), use_cache.
Progress events: {"type": "progress", "phase": "compile", "stage", "index", "total"} before
each stage and {"phase": "compiled", "stage", "status", "seconds", "cache"} after it.
Result: {"stages": [one entry per stage, see `compile_one`]}.

A stage that fails to trace is reported (status "error", the readable message, the probes
captured before the failure) and the next stage still compiles; a crash of the DSL itself
ends the worker, which the supervisor reports as CRASH without taking wb down.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Callable

from workbench.compile.cache import _wb_code
from workbench.compile.compiler import KernelCheckError, compile_stage
from workbench.compile.trace_errors import KernelTraceError
from workbench.errors import UserError
from workbench.kernels.registry import forget_stage_modules, load_kernel
from workbench.kernels.stage import Params
from workbench.workspace import Workspace


class CompileJob:
    def __init__(self, job: dict[str, Any], emit: Callable[[dict], None]):
        self.job = job
        self.emit = emit
        self.must_exit = False

    def execute(self) -> dict[str, Any]:
        if self.job.get("wb_code") and self.job["wb_code"] != _wb_code():
            # a warm worker started before wb itself was edited: its records would be stale
            self.must_exit = True
            return {"stale_worker": True}
        ws = Workspace(Path(self.job["workspace"]))
        ws.activate()
        items = self.job["stages"]
        results = []
        for index, item in enumerate(items):
            stage_id = f"{item['kernel']}/stage-{item['letter']}"
            self.emit({"type": "progress", "phase": "compile", "stage": stage_id, "index": index, "total": len(items)})
            entry = compile_one(ws, item, self.job)
            self.emit(
                {
                    "type": "progress",
                    "phase": "compiled",
                    "stage": stage_id,
                    "status": entry["status"],
                    "seconds": entry.get("seconds"),
                    "cache": entry.get("cache"),
                    "index": index,
                    "total": len(items),
                }
            )
            results.append(entry)
        return {"stages": results}


def compile_one(ws, item: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """Compile one stage (or take it from the cache); never raises for kernel errors."""
    forget_stage_modules()  # fresh imports: edited sources, and exact dependency lists
    kernel = load_kernel(ws.stages_dir / item["kernel"] / "kernel.yaml")
    spec = kernel.stage(item["letter"])
    if spec is None:
        raise UserError(f"kernel {item['kernel']} has no stage {item['letter']!r}")
    arch = item.get("arch") or spec.arch
    entry: dict[str, Any] = {
        "stage": spec.id,
        "kernel": spec.kernel,
        "letter": spec.letter,
        "title": spec.title,
        "params": item["params"],
        "variants": item["variants"],
        "arch": arch,
        "shapes": [],
        "resources": None,
    }
    artifact_dir = None
    if job.get("artifact_dir"):
        artifact_dir = Path(job["artifact_dir"]) / spec.short
    try:
        stage = spec.load()
        if not stage.is_cute:
            entry.update(status="skipped", note=f"{spec.id} is not a CuTe DSL stage (is_cute = False)")
            return entry
        build = compile_stage(
            spec,
            stage,
            Params(item["params"]),
            item["variants"],
            arch,
            ws=ws,
            use_cache=job.get("use_cache", True),
            need_kernel=job.get("need_kernel", False),
            strict=False,
            keep=tuple(job.get("keep") or ()),
            artifact_dir=artifact_dir,
        )
    except UserError:
        raise
    except KernelTraceError as exc:
        entry.update(status="error", error=exc.to_dict(), shapes=exc.shapes)
        return entry
    except KernelCheckError as exc:  # not raised with strict=False; kept for completeness
        entry.update(status="error", error={"message": str(exc), "location": exc.location}, shapes=exc.shapes)
        return entry
    except Exception as exc:
        entry.update(
            status="error",
            error={"type": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
        )
        return entry
    entry.update(
        status="ok",
        shapes=build.shapes,
        resources=build.resources,
        seconds=build.seconds,
        cached=build.cached,
        cache=build.cache,
        cold_seconds=build.cold_seconds,
        cache_note=build.cache_note,
        output=build.output,
        artifacts=build.artifacts,
        key=build.key,
    )
    return entry
