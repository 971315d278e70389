"""`wb run` as a library call: one stage, isolated in a worker, recorded in runs/<id>/."""

from __future__ import annotations

import shutil
import time
from typing import Any, Callable

from workbench.errors import NoGpuError, UserError
from workbench.kernels.stage_source import needs_gpu
from workbench.records.provenance import git_state, record_provenance
from workbench.interrupts import held_signals
from workbench.records.publish import commit, publish
from workbench.records.report import write_run_report
from workbench.records.store import new_record, new_run_dir, utc_now
from workbench.kernels.registry import StageSpec
from workbench.run.instrument import Instrument
from workbench.run.supervisor import Outcome, WorkerStartError, run_job
from workbench.workspace import Workspace


def run_stage(
    ws: Workspace,
    spec: StageSpec,
    params: dict[str, Any],
    variants: dict[str, str],
    fixtures: list[str] | None = None,
    seed: int = 0,
    seeds: int | None = None,
    timeout: float | None = None,
    warm: bool = True,
    arch: str | None = None,
    on_event: Callable[[dict], None] = lambda e: None,
    env: dict[str, str] | None = None,
    exported: dict[str, str] | None = None,
    instrument: Instrument | None = None,
    trace: bool = False,
    profile_peer: str | None = None,
) -> dict[str, Any]:
    """Run a stage and return its record (already written, with report and MEMORY.md).
    ``exported``: {"dir", "package"} of a `wb export` (the fixtures also run through its op).
    ``instrument``: a tool the worker runs under (workbench.run.sanitize, workbench.run.profile)."""
    if instrument is not None:
        env = {**(env or {}), **instrument.environment}
    if needs_gpu(spec.module_path) is False:  # a plain PyTorch stage: a new worker skips the DSL's import
        env = {"WB_WORKER_PRELOAD": "torch", **(env or {})}
    timeout = timeout or spec.timeout * (instrument.timeout_factor if instrument else 1)
    started_wall = time.perf_counter()
    started = utc_now()
    git = git_state(ws.root)
    run_dir = new_run_dir(ws.runs_dir)
    on_event({"type": "progress", "phase": "start", "run_id": run_dir.name})  # wb run --host learns the remote id
    job = {
        "workspace": str(ws.root),
        "kernel": spec.kernel,
        "letter": spec.letter,
        "params": params,
        "variants": variants,
        "fixtures": fixtures or [],
        "seed": seed,
        "seeds": seeds,
        "arch": arch,
        "run_dir": str(run_dir),
    }
    if exported:
        job["exported"] = exported
    if trace:
        job["trace"] = True
    if profile_peer:  # the worker launches this peer of the stage, not the stage (wb profile --peers)
        job["profile_peer"] = profile_peer
    wrap = None
    if instrument is not None:
        wrap = instrument.command(run_dir / instrument.log_name)
        on_event({"type": "progress", "phase": "instrument", "tool": instrument.label})
    try:
        outcome = run_job(ws, job, timeout, on_event, warm=warm, env=env, wrap=wrap)
    except WorkerStartError as exc:  # e.g. a wrapping tool that refused its options: recorded, with the tool's log
        outcome = Outcome(status="CRASH", message=str(exc))
    except UserError:  # nothing ran (wb's socket folder unusable): no run folder left behind
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    # from here the record is made and written whatever comes: a second Ctrl-C or a SIGTERM
    # waits until it is on disk (interrupts.held_signals), then stops wb
    with held_signals():
        if outcome.status == "HANG" and instrument is not None and instrument.timeout_factor > 1:
            outcome.message += (
                f" (under {instrument.label} kernels run 10-100x slower: a smaller problem, e.g. -p with fewer"
                " tokens, or a longer --timeout tells a slow run from a hung kernel)"
            )
        result = worker_result(outcome, run_dir)

        verdict = result.get("verdict") if outcome.status == "result" else outcome.status
        instrumented = {}
        if instrument is not None:
            try:
                verdict, found = instrument.summarize(run_dir / instrument.log_name, verdict, result)
            except Exception as exc:  # the tool's log beat the parser: the run is still recorded, its verdict its own
                found = {"tool": instrument.tool, "verdict": verdict,
                         "notes": [f"wb could not read {instrument.log_name}: {type(exc).__name__}: {exc}"[:500]]}
            instrumented[instrument.record_field] = found
        error = result.get("error")
        if outcome.status != "result":
            error = {"message": outcome.message, "log": outcome.log_tail}
        elif verdict == "CRASH" and outcome.log_tail:
            error = {**(error or {}), "log": outcome.log_tail}
        compiles = result.get("compiles", [])
        env = result.get("env") or next((e["env"] for e in reversed(outcome.events) if e.get("phase") == "env"), {})
        record = new_record(
            "profile_peer" if profile_peer else "run", spec, params, variants, verdict,
            fixtures_requested=fixtures or spec.fixtures,
            seed=seed,
            error=error,
            crashed_on=result.get("crashed_on"),
            results=result.get("fixtures", []),
            shapes=result.get("shapes", []),
            about=result.get("about"),
            fixture_notes=result.get("fixture_notes", {}),
            exported=result.get("exported"),
            trace=result.get("trace"),
            **instrumented,
            timing={
                "compile_s": sum(c["seconds"] for c in compiles),
                "compile_cached": bool(compiles) and all(c["cached"] for c in compiles),
                "compiles": compiles,
                "run_s": sum(f.get("launch_s", 0.0) for f in result.get("fixtures", [])),
                "total_s": time.perf_counter() - started_wall,
                "timeout_s": timeout,
                "worker_reused": outcome.worker_reused,
                "worker_pid": outcome.worker_pid,
            },
            provenance=record_provenance(ws, spec, git, env, compiles[0]["arch"] if compiles else arch or spec.arch),
            started=started,
            finished=utc_now(),
        )
        # a peer's profile is not a run of the stage: its report, but no MEMORY.md status line
        return commit(ws, run_dir, record, publish=write_run_report if profile_peer else publish)


def worker_result(outcome: Outcome, run_dir) -> dict[str, Any]:
    """The worker's result; a job it refused (a user mistake, no GPU) leaves no run folder."""
    if outcome.status == "user_error":
        shutil.rmtree(run_dir, ignore_errors=True)
        raise UserError(outcome.message)
    result = outcome.result or {}
    if result.get("verdict") == "NO_GPU":
        shutil.rmtree(run_dir, ignore_errors=True)
        raise NoGpuError(result["error"]["message"])
    return result
