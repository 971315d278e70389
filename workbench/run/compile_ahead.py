"""A local sweep's (or bench's) configurations compiled on every core before its cases run.

A lane's warm worker compiles its cases one after another; on a 16-core GPU machine cold
compiles were 640 s of 984 s of four stage-D sweeps (docs/perf-notes.md, round 12). Compiled
here first by parallel workers (workbench.run.compile_jobs) into the disk cache, each case's
worker loads its configuration instead. Only what changes the code counts: a stage's
``compile_params`` (read from its source: workbench.kernels.stage_source) and the variants,
with those the stage's fixtures compile with (an identity-softmax fixture's softmax=identity).
Nothing here decides a verdict: a configuration that does not compile here is compiled, and
reported, by its case as before.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from workbench.compile.shapes import Target
from workbench.kernels.stage_source import UNKNOWN, class_literal, needs_gpu
from workbench.text import first_line
from workbench.workspace import Workspace


def fixture_variants(ws: Workspace, spec, fixtures: list[str]) -> list[dict[str, str]]:
    """The variant overlays the cases' fixtures compile with: {} (the case's own variants) and
    each fixture's variants the stage declares (``fixtures``: the sweep's -f, else kernel.yaml's)."""
    from workbench.errors import UserError
    from workbench.kernels.fixtures import load_fixtures

    overlays: list[dict[str, str]] = [{}]
    try:
        registry = load_fixtures(ws.fixtures_dir)
    except (UserError, OSError):  # the cases' workers say what is wrong with fixtures/
        return overlays
    for name in fixtures or spec.fixtures:
        try:
            found = registry.variants(name)
        except UserError:
            continue
        for fixture in found:
            extra = dict(fixture.variants)
            if extra and extra not in overlays and all(v in spec.variants.get(k, ()) for k, v in extra.items()):
                overlays.append(extra)
    return overlays


def targets(ws: Workspace, spec, cases: list, fixtures: list[str] | None, arch: str | None) -> list[Target]:
    """One target per distinct (compile parameters, variants) of the cases (``cases``: objects
    with ``params`` and ``variants``), in the cases' order; ``fixtures`` None: the cases run no
    fixture with variants of its own (wb bench times the stage's build on random inputs)."""
    names = class_literal(spec.module_path, "compile_params")
    keep = None if names is UNKNOWN or names is None else set(names)
    overlays = [{}] if fixtures is None else fixture_variants(ws, spec, fixtures)
    seen: set[str] = set()
    out: list[Target] = []
    for case in cases:
        code_params = {k: v for k, v in case.params.items() if keep is None or k in keep}
        for extra in overlays:
            variants = {**case.variants, **extra}
            key = json.dumps([code_params, variants], sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                out.append(Target(spec, dict(case.params), variants, arch or spec.arch))
    return out


def worthwhile(spec) -> bool:
    """Compile ahead only a CuTe stage that runs on a GPU (a CPU stage has no compile to share)."""
    if class_literal(spec.module_path, "is_cute", True) is False:
        return False
    return needs_gpu(spec.module_path) is not False


def compile_ahead(
    ws: Workspace, spec, cases: list, fixtures: list[str] | None, arch: str | None,
    on_note: Callable[[str], None] = lambda text: None,
) -> dict[str, Any] | None:
    """Compile the cases' configurations into the disk cache in parallel; None when not
    worthwhile (a CPU stage, one configuration, one core), else {"configurations", "compiled",
    "cached", "failed", "seconds"}. Never raises for its callers' sake: a failure is a note and
    {"skipped": why}, and each case compiles and reports for itself as before (a Ctrl-C is no
    Exception: it goes on up)."""
    try:
        return _compile_ahead(ws, spec, cases, fixtures, arch, on_note)
    except Exception as exc:
        why = first_line(str(exc)) or type(exc).__name__
        on_note(f"compile ahead skipped: {why}")
        return {"skipped": why}


def _compile_ahead(ws: Workspace, spec, cases: list, fixtures: list[str] | None, arch: str | None, on_note) -> dict[str, Any] | None:
    from workbench.run import compile_jobs

    if len(cases) < 2 or not worthwhile(spec):
        return None
    todo = targets(ws, spec, cases, fixtures, arch)
    workers = compile_jobs.workers_for(len(todo))
    if workers < 2:  # one configuration (its first case compiles it as fast), or one core
        return None
    on_note(f"compiling {len(todo)} configuration(s) ahead on {workers} core(s)")
    start = time.perf_counter()
    preload = os.environ.get("WB_WORKER_PRELOAD")
    try:
        results = compile_jobs.collect(ws, todo, parallel=workers)
    finally:  # collect sets it for its compile-only workers; the lanes' workers preload torch too
        if preload is None:
            os.environ.pop("WB_WORKER_PRELOAD", None)
        else:
            os.environ["WB_WORKER_PRELOAD"] = preload
    done = {
        "configurations": len(todo),
        "cached": sum(1 for r in results if r.get("cached")),
        "failed": sum(1 for r in results if r.get("status") not in ("ok", None)),
        "seconds": round(time.perf_counter() - start, 1),
    }
    done["compiled"] = done["configurations"] - done["cached"] - done["failed"]
    on_note(f"compiled ahead in {done['seconds']} s: {done['compiled']} compiled, {done['cached']} from the cache"
            + (f", {done['failed']} failed (their cases compile and report them)" if done["failed"] else ""))
    return done
