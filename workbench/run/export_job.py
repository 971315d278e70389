"""`wb export` in a worker (the worker side: workbench.export.job), as `wb run` and `wb compile`
run a stage's code: a stage that calls os._exit(0), loops for ever or crashes the DSL ends
its worker, not wb. The export is then one line (exit 2; a Ctrl-C exits 130) and what it
had begun beside --out is removed.

    result = export_in_worker(ws, spec, given, variants, arch, out, timeout=600.0, on_event=print)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from workbench.errors import UserError
from workbench.export.build import ExportResult, check_out, check_tools, expand
from workbench.run.supervisor import run_job

#: a job's time limit per configuration when --timeout is not given (a stage D compile: 10-40 s)
SECONDS_PER_CONFIG = 600.0


def export_in_worker(
    ws,
    spec,
    given: dict[str, list[str]],
    variants: dict[str, str],
    arch: str,
    out: Path,
    *,
    allow_unverified: bool = False,
    force: bool = False,
    timeout: float | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> ExportResult:
    """build.export_stage in a fresh worker; ``timeout``: seconds for the whole export
    (default SECONDS_PER_CONFIG per configuration). A worker that dies, hangs past the limit
    or is interrupted leaves nothing beside --out; a Ctrl-C is re-raised after that."""
    emit = on_event or (lambda event: None)
    check_tools()
    given_out = Path(out)  # as the user wrote it, for what wb prints
    check_out(ws, given_out, force)  # here, before a worker starts: the same refusals, without the wait
    out = Path(os.path.abspath(out))
    configs = expand(given)
    spec.resolve_variants(variants)  # kernel.yaml's bounds and choices: a mistake needs no worker either
    for config in configs:
        spec.resolve_params(config)
    limit = timeout if timeout is not None else SECONDS_PER_CONFIG * len(configs)
    job = {
        "op": "run", "kind": "export", "workspace": str(ws.root), "kernel": spec.kernel, "letter": spec.letter,
        "given": given, "variants": variants, "arch": arch, "out": str(out), "cwd": os.getcwd(),
        "allow_unverified": allow_unverified, "force": force,
    }
    before = _beside(out)

    def event(message: dict) -> None:
        if message.get("phase") != "export":
            return
        if message["export"].get("event") == "staging":  # the worker's own folder beside --out
            before["staging_made"] = Path(message["export"]["path"])
        else:
            emit(message["export"])

    outcome = run_job(ws, job, limit, event, warm=False)
    if outcome.status == "result" and "manifest" in (outcome.result or {}):
        r = outcome.result
        return ExportResult(out=given_out, manifest=r["manifest"], unverified=[{"key": k} for k in r["unverified"]])
    _remove_new(out, before)
    if outcome.status == "user_error":
        raise UserError(outcome.message)
    if outcome.status == "INTERRUPTED":
        raise KeyboardInterrupt
    if outcome.status == "HANG":
        raise UserError(f"{spec.id}: the export ran past {limit:g} s, so its worker was killed; nothing was exported "
                        "(--timeout SECONDS gives it longer)")
    error = (outcome.result or {}).get("error") or {}
    why = error.get("message") or outcome.message or "no result"
    last = next((line.strip() for line in reversed(outcome.log_tail.splitlines()) if line.strip()), "")
    seen = f"; its last output: {last[:200]}" if last and outcome.status == "CRASH" and not outcome.result else ""
    raise UserError(f"{spec.id}: the export failed in its worker ({why}){seen}; nothing was exported")


def _beside(out: Path) -> dict[str, Any]:
    """The folders above --out that are not there before the export (deepest first: the
    worker makes them, and they are removed when it fails, if still empty)."""
    return {"missing": [p for p in out.parents if not p.exists()], "staging_made": None}


def _remove_new(out: Path, before: dict[str, Any]) -> None:
    """A worker killed mid-build cannot remove its staging folder (the path it reported) or
    the folders it made to hold --out: the supervisor does. Nothing else beside --out is
    touched (another export's staging folder, a folder whose name looks like one)."""
    staging = before.get("staging_made")
    if staging is not None and staging.parent == out.parent and staging.name.startswith(f".{out.name}."):
        shutil.rmtree(staging, ignore_errors=True)
    for folder in before["missing"]:  # deepest first; one another process filled stays
        with contextlib.suppress(OSError):
            folder.rmdir()
