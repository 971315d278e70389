"""`wb compile` as a library call: a fresh compile in a worker, artifacts in runs/<id>/,
a record of kind "compile" (readers of run records filter on kind)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

from workbench.compile import resources as res, shapes
from workbench.run import compile_jobs
from workbench.errors import UserError
from workbench.kernels.registry import StageSpec
from workbench.records.provenance import git_state, record_provenance
from workbench.records.publish import commit
from workbench.records.store import discarded_unless_recorded, new_record, new_run_dir, utc_now
from workbench.workspace import Workspace


def compile_stage_record(
    ws: Workspace,
    spec: StageSpec,
    params: dict[str, Any],
    variants: dict[str, str],
    arch: str,
    keep: tuple[str, ...],
    *,
    in_process: bool = False,
    on_event: Callable[[dict], None] = lambda e: None,
) -> dict[str, Any]:
    started_wall = time.perf_counter()
    started = utc_now()
    git = git_state(ws.root)
    run_dir = new_run_dir(ws.runs_dir)
    with discarded_unless_recorded(run_dir):  # a Ctrl-C or a UserError before the record: no run folder left
        artifacts_dir = run_dir / "artifacts"
        target = shapes.Target(spec, params, variants, arch)
        result = compile_jobs.collect(
            ws, [target], on_event=on_event, use_cache=True, in_process=in_process,
            keep=tuple(k for k in keep if k in ("ptx", "cubin")) + ("cubin",), artifact_dir=artifacts_dir,
        )[0]
        if result.get("status") == "skipped":  # nothing to compile: a plain PyTorch stage (is_cute = False)
            shutil.rmtree(run_dir, ignore_errors=True)
            raise UserError(f"{result.get('note') or spec.id + ' was skipped'}: wb compile builds CuTe DSL stages")
        artifacts = {}
        per_suffix: dict[str, int] = {}
        for name, p in (result.get("artifacts") or {}).items():  # the DSL's names run to 200 characters
            path = Path(p)
            # a stage that compiles several kernels (moe D, fmha D's two tile heights): .2, .3 ...
            n = per_suffix[path.suffix] = per_suffix.get(path.suffix, 0) + 1
            short = path.with_name(f"{spec.kernel}-{spec.short}.{arch}{'' if n == 1 else f'.{n}'}{path.suffix}")
            if path.exists() and path != short:
                path.replace(short)
            artifacts[short.name] = str(short)
        sass: dict[str, Any] = {}
        cubins = [Path(p) for name, p in artifacts.items() if name.endswith(".cubin")]
        if cubins:
            # the instruction counts are the first kernel's (a stage's default build); --keep sass
            # writes every cubin's
            for i, cubin in enumerate(cubins if "sass" in keep else cubins[:1]):
                text, why = res.disassemble(cubin.read_bytes(), artifacts_dir)
                (artifacts_dir / "kernel.cubin").unlink(missing_ok=True)  # disassemble's scratch copy
                if i == 0:
                    sass = {"instructions": None, "note": why} if text is None else {
                        "instructions": res.sass_instructions(text), "tool": res.find_nvdisasm()}
                    if text is not None and len(cubins) > 1:
                        sass["note"] = f"the first of {len(cubins)} cubins ({cubin.name})"
                if text is not None and "sass" in keep:
                    path = cubin.with_suffix(".sass")
                    path.write_text(text)
                    artifacts[path.name] = str(path)
        else:
            sass = {"instructions": None, "note": "no cubin was produced"}
        if "cubin" not in keep:
            for path in cubins:
                path.unlink(missing_ok=True)
                artifacts.pop(path.name, None)
        if not any(artifacts_dir.iterdir() if artifacts_dir.is_dir() else []):
            shutil.rmtree(artifacts_dir, ignore_errors=True)
        checks = (result.get("resources") or {}).get("checks", [])
        if result.get("status") != "ok":
            verdict = "COMPILE_ERROR"
        elif any(c.get("level") == "error" for c in checks):
            verdict = "CHECK_FAILED"
        else:
            verdict = "COMPILED"
        record = new_record(
            "compile", spec, params, variants, verdict,
            arch=arch,
            error=result.get("error"),
            shapes=result.get("shapes", []),
            resources=result.get("resources"),
            sass=sass,
            artifacts={name: str(Path(p).relative_to(ws.root)) if Path(p).is_absolute() and ws.root in Path(p).parents else p for name, p in artifacts.items()},
            timing={"compile_s": result.get("seconds") or 0.0, "total_s": time.perf_counter() - started_wall},
            provenance=record_provenance(ws, spec, git, {}, arch),
            started=started,
            finished=utc_now(),
        )
        return commit(ws, run_dir, record, publish=None)
