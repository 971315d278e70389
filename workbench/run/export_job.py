"""`wb export` in a worker (the worker side: workbench.export.job), as `wb run` and `wb compile`
run a stage's code: a stage that calls os._exit(0), loops for ever or crashes the DSL ends
its worker, not wb. The export is then one line (exit 2; a Ctrl-C exits 130) and what it
had begun beside --out is removed.

    result = export_in_worker(ws, spec, given, variants, arch, out, timeout=600.0, on_event=print)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workbench.errors import UserError
from workbench.export.build import (
    ExportResult, check_out, check_tools, expand, missing_folders_above, remove_empty_folders,
)
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
    begun = _Begun(missing_folders_above(out))

    def event(message: dict) -> None:
        if message.get("phase") != "export":
            return
        if message["export"].get("event") == "staging":  # the worker's own folder beside --out
            begun.staging = Path(message["export"]["path"])
        else:
            emit(message["export"])

    outcome = run_job(ws, job, limit, event, warm=False)
    if outcome.status == "result" and "manifest" in (outcome.result or {}):
        r = outcome.result
        return ExportResult(out=given_out, manifest=r["manifest"], unverified=[{"key": k} for k in r["unverified"]])
    begun.remove(out)
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


@dataclass
class _Begun:
    """What a failed export's worker may leave: the folders above --out it makes (``missing``,
    deepest first, known before it starts) and the staging folder beside --out it reports."""

    missing: list[Path]
    staging: Path | None = None

    def remove(self, out: Path) -> None:
        """A worker killed mid-build cannot remove these itself: the supervisor does. Nothing
        else beside --out is touched (another export's staging folder, a name that looks like one)."""
        if self.staging is not None and self.staging.parent == out.parent and self.staging.name.startswith(f".{out.name}."):
            shutil.rmtree(self.staging, ignore_errors=True)
        remove_empty_folders(self.missing)
