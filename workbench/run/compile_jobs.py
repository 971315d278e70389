"""Compiling stages for `wb shapes` and `wb compile`: each target from the disk cache
(workbench.compile.cache: no worker, no DSL import), the rest in worker processes (the run
job's compile-only kind), so a DSL crash cannot take wb down; several fresh workers compile
in parallel when there are stages and cores to spare (one compile is single-threaded).

    results = collect(ws, targets, on_event=print)   # targets: workbench.compile.shapes.plan
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from workbench.compile import cache as compile_cache
from workbench.compile.cache import _wb_code
from workbench.compile.job import CompileJob
from workbench.compile.shapes import Target
from workbench import settings
from workbench.errors import UserError
from workbench.run import supervisor
from workbench.run.supervisor import run_job
from workbench.workspace import Workspace


def cached_result(ws: Workspace, target: Target) -> dict[str, Any] | None:
    """The target's shapes and resources from the disk cache, as a worker would answer; None on a miss."""
    key = compile_cache.make_key(target.spec, target.params, target.variants, target.arch)
    entry = compile_cache.lookup(ws, target.spec, key, need_kernel=False)
    if entry is None:  # a stage that names its compile_params is keyed on those: follow the link
        entry = compile_cache.lookup_alias(ws, target.spec, key, need_kernel=False)
    if entry is None:
        return None
    return {
        "stage": target.spec.id,
        "kernel": target.spec.kernel,
        "letter": target.spec.letter,
        "title": target.spec.title,
        "params": target.params,
        "variants": target.variants,
        "arch": target.arch,
        "status": "ok",
        "shapes": entry.shapes,
        "resources": entry.resources,
        "seconds": 0.0,
        "cached": True,
        "cache": "disk",
        "cold_seconds": entry.seconds,
        "cache_note": entry.meta.get("kernel_note"),
        "output": "",
        "key": entry.meta.get("key"),
    }


def collect(
    ws: Workspace,
    targets: list[Target],
    *,
    on_event: Callable[[dict], None] = lambda e: None,
    use_cache: bool = True,
    in_process: bool = False,
    keep: tuple[str, ...] = (),
    artifact_dir: Path | None = None,
    timeout: float | None = None,
    parallel: int | None = None,
) -> list[dict[str, Any]]:
    """One result per target, in order (see workbench.compile.job.compile_one)."""
    results: dict[int, dict] = {}
    todo = []
    fresh = bool(keep or artifact_dir)
    for i, target in enumerate(targets):
        hit = cached_result(ws, target) if use_cache and not fresh else None
        if hit is not None:
            results[i] = hit
            on_event({"type": "progress", "phase": "compiled", "stage": target.spec.id, "status": "ok", "seconds": 0.0, "cache": "disk", "index": i, "total": len(targets)})
        else:
            todo.append(i)
    if todo:
        items = [
            {"kernel": targets[i].spec.kernel, "letter": targets[i].spec.letter, "params": targets[i].params,
             "variants": targets[i].variants, "arch": targets[i].arch}
            for i in todo
        ]

        job = {
            "op": "run",  # a compile-only kind of the run job (works with any worker)
            "kind": "compile",
            "wb_code": _wb_code(),
            "workspace": str(ws.root),
            "stages": items,
            "need_kernel": False,
            "use_cache": use_cache,
            "keep": list(keep),
            "artifact_dir": str(artifact_dir) if artifact_dir else None,
        }
        budget = timeout or sum(targets[i].spec.timeout for i in todo)
        if in_process:
            outs = _run_in_process(job, on_event)
        else:
            outs = _run_in_workers(ws, job, budget, on_event, parallel)
        for i, out in zip(todo, outs):
            results[i] = out
    return [results[i] for i in range(len(targets))]


def _run_in_process(job: dict, on_event) -> list[dict]:
    return CompileJob(job, on_event).execute()["stages"]


def _split(items: list, parts: int) -> list[list[int]]:
    """Indices of `items` dealt round-robin into `parts` groups."""
    groups = [[] for _ in range(parts)]
    for i in range(len(items)):
        groups[i % parts].append(i)
    return [g for g in groups if g]


def workers_for(n_items: int) -> int:
    """How many workers compile ``n_items`` stages: WB_COMPILE_JOBS, else one per core, and
    never more than the stages (compiling is single-threaded)."""
    return max(1, min(n_items, settings.compile_jobs() or (os.cpu_count() or 1)))


def _run_in_workers(ws: Workspace, job: dict, timeout: float, on_event, parallel: int | None) -> list[dict]:
    """Run the compile job in worker processes: the warm one, plus fresh ones in parallel
    when there are several stages and cores to spare."""
    items = job["stages"]
    groups = _split(items, max(1, min(parallel or workers_for(len(items)), len(items))))
    os.environ.setdefault("WB_WORKER_PRELOAD", "dsl")  # workers started for this need no torch
    outs: dict[int, dict] = {}
    lock = threading.Lock()

    def run(group: list[int], warm: bool) -> None:
        sub = {**job, "stages": [items[i] for i in group]}

        def event(e: dict) -> None:
            if "index" in e:
                e = {**e, "index": group[e["index"]], "total": len(items)}
            with lock:
                on_event(e)

        outcome = run_job(ws, sub, timeout, event, warm=warm)
        if outcome.status == "INTERRUPTED":  # Ctrl-C (here, or in another group: STOPPING)
            raise KeyboardInterrupt
        if outcome.status == "CRASH" and "could not reach the worker" in (outcome.message or ""):
            # a worker seen between its bind() and listen(): ask again, once
            outcome = run_job(ws, sub, timeout, event, warm=warm)
        if outcome.status == "result" and (outcome.result or {}).get("stale_worker"):
            outcome = run_job(ws, sub, timeout, event, warm=False)  # it runs older wb code: use a fresh one
        if outcome.status == "user_error":
            raise UserError(outcome.message)
        if outcome.status == "result" and outcome.result and "stages" in outcome.result:
            for i, out in zip(group, outcome.result["stages"]):
                outs[i] = out
            return
        why = outcome.message or (outcome.result or {}).get("error", {}).get("message") or outcome.status
        for i in group:
            if i in outs:
                continue
            item = items[i]
            outs[i] = {
                "stage": f"{item['kernel']}/stage-{item['letter']}",
                "kernel": item["kernel"],
                "letter": item["letter"],
                "params": item["params"],
                "variants": item["variants"],
                "arch": item["arch"],
                "status": "error",
                "shapes": [],
                "resources": None,
                "error": {"message": f"the compile worker failed ({outcome.status}): {why}", "log": outcome.log_tail},
            }

    errors: list[BaseException] = []
    done = [threading.Event() for _ in groups[1:]]

    def guarded(group, warm, finished: threading.Event | None = None):
        try:
            run(group, warm)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
            if isinstance(exc, KeyboardInterrupt):
                supervisor.STOPPING.set()  # the other groups end their workers within a second
        finally:
            if finished is not None:
                finished.set()

    def wait_groups(seconds: float) -> None:
        # Events, not Thread.join: a Ctrl-C landing in join() on Python 3.11 marks the
        # thread stopped and join() returns while it still runs (see remote/sweep.py)
        deadline = time.monotonic() + seconds
        for finished in done:
            while not finished.wait(0.2) and time.monotonic() < deadline:
                pass

    threads = [threading.Thread(target=guarded, args=(g, False, d), daemon=True) for g, d in zip(groups[1:], done)]
    for t in threads:
        t.start()
    try:
        try:
            guarded(groups[0], True)
            wait_groups(float("inf"))
        except KeyboardInterrupt:  # while waiting for the other groups
            errors.insert(0, KeyboardInterrupt())
            supervisor.STOPPING.set()
        if supervisor.STOPPING.is_set():
            wait_groups(30.0)  # each ends its worker (a second Ctrl-C leaves at once)
    finally:
        interrupted = next((e for e in errors if isinstance(e, KeyboardInterrupt)), None)
        if interrupted is not None:
            supervisor.STOPPING.clear()
    if errors:
        raise interrupted or errors[0]
    return [outs[i] for i in range(len(items))]
