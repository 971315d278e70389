"""`wb shapes` as a library: compile stages compile-only (no GPU needed), collect their
probe records, compare them with the accepted snapshot, accept a new one.

    targets = plan(ws, "fmha", None, {"n": "256"}, {}, None)
    results = collect(ws, targets, on_event=print)          # cache first, then a worker
    diffs   = compare(results, read_lock(ws, "fmha"))
    accept(ws, "fmha", results)                              # shapes.lock.yaml + MEMORY.md

Cached stages are answered from the disk cache (workbench.compile.cache) without starting
a worker or importing the DSL; the rest compile in a worker process (op "compile"), so a
DSL crash cannot take wb down. With no GPU and with one the records are identical: they
come from tracing, which never touches a device.

Accepted snapshots live in stages/<kernel>/shapes.lock.yaml, per stage and per
"arch | params | variants" label; a record is identified by `name@file` (plus `#k` for
the k-th repeat), never by line number, so moving code does not count as a change.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable

import yaml

from workbench.compile import cache as compile_cache
from workbench.compile.cache import _wb_code
from workbench.compile.job import CompileJob
from workbench.errors import UserError
from workbench.kernels.registry import KernelSpec, StageSpec, default_kernel, get_kernel, load_kernels, warn_broken
from workbench.records import memory
from workbench.records.provenance import git_state
from workbench.files import atomic_write_text
from workbench.run import supervisor
from workbench.run.supervisor import run_job
from workbench.schemas import SchemaError, load_yaml
from workbench.workspace import Workspace
from workbench.compile.probe import record_key, with_keys  # noqa: F401  (part of this module's API)

LOCK_NAME = "shapes.lock.yaml"


@dataclass
class Target:
    spec: StageSpec
    params: dict[str, Any]
    variants: dict[str, str]
    arch: str

    @property
    def label(self) -> str:
        return label_of(self.arch, self.params, self.variants)


def label_of(arch: str, params: dict, variants: dict) -> str:
    p = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))
    v = " ".join(f"{k}={x}" for k, x in sorted(variants.items()))
    return " · ".join(x for x in (arch, p, v) if x)


def superseded(label: str, arch: str, variants: dict, params: dict | None = None) -> bool:
    """A snapshot label of ``arch`` taken under another set of variant names, or of
    parameter names (``params``: the stage's now; a parameter added to a stage renames every
    label), than the stage has now: it can never be checked again (``accept`` drops it)."""
    parts = label.split(" · ")
    if parts[0] != arch:
        return False
    names = {kv.split("=", 1)[0] for kv in parts[2].split()} if len(parts) > 2 else set()
    if params is not None and len(parts) > 1 and {kv.split("=", 1)[0] for kv in parts[1].split()} != set(params):
        return True
    return names != set(variants)


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


# --------------------------------------------------------------------------------------
# What to compile
# --------------------------------------------------------------------------------------
def plan(
    ws: Workspace,
    kernel_name: str | None,
    stage: str | None,
    overrides: dict[str, str],
    variants: dict[str, str],
    arch: str | None,
    size: str | None = None,
) -> tuple[KernelSpec, list[Target]]:
    """The stages to compile with their resolved parameters. Overrides apply to the stages
    that declare them; one that no selected stage declares is an error. ``size`` (the CLI's
    --n) sets each stage's own size parameter (kernel.yaml `size:`)."""
    kernels = load_kernels(ws)
    if kernel_name is None:
        kernel = default_kernel(ws, kernels)
        if kernel is None:
            raise UserError("name the kernel: wb shapes KERNEL (kernels: " + (", ".join(kernels) or "none") + ")")
    else:
        kernel = get_kernel(ws, kernel_name, kernels)
    warn_broken(kernels)
    specs = kernel.stages
    if stage:
        wanted = stage.lower().removeprefix("stage-")
        specs = [s for s in kernel.stages if wanted in (s.letter, s.name.lower())]
        if not specs:
            listed = ", ".join(f"{s.short} ({s.name})" for s in kernel.stages)
            raise UserError(f"kernel {kernel.name} has no stage {stage!r}; its stages: {listed}")
    for name in overrides:
        if not any(name in s.params for s in specs):
            raise UserError(f"no selected stage of {kernel.name} has a parameter {name!r}")
    if size is not None and not any(s.size_param in s.params for s in specs):
        raise UserError(f"no selected stage of {kernel.name} has its size parameter (--n)")
    for name in variants:
        if not any(name in s.variants for s in specs):
            raise UserError(f"no selected stage of {kernel.name} has a variant {name!r}")
    targets = []
    for spec in specs:
        given = {k: v for k, v in overrides.items() if k in spec.params}
        if size is not None and spec.size_param in spec.params:
            given[spec.size_param] = size
        params = spec.resolve_params(given)
        chosen = spec.resolve_variants({k: v for k, v in variants.items() if k in spec.variants})
        targets.append(Target(spec, params, chosen, arch or spec.arch))
    return kernel, targets


# --------------------------------------------------------------------------------------
# Compiling (cache first, then a worker)
# --------------------------------------------------------------------------------------
def _cached(ws: Workspace, target: Target) -> dict[str, Any] | None:
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
        hit = _cached(ws, target) if use_cache and not fresh else None
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


def _run_in_workers(ws: Workspace, job: dict, timeout: float, on_event, parallel: int | None) -> list[dict]:
    """Run the compile job in worker processes: the warm one, plus fresh ones in parallel
    when there are several stages and cores to spare (compiling is single-threaded)."""
    items = job["stages"]
    if parallel is None:
        parallel = int(os.environ.get("WB_COMPILE_JOBS", "0")) or min(len(items), max(1, (os.cpu_count() or 1)))
    groups = _split(items, max(1, min(parallel, len(items))))
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


# --------------------------------------------------------------------------------------
# Records: identity, display, comparison
# --------------------------------------------------------------------------------------
def select(records: list[dict], all_ops: bool) -> list[dict]:
    """Probes; with --all-ops also the automatically captured ops."""
    if all_ops:
        return records
    return [r for r in records if r.get("kind", "probe") == "probe"]


def lock_all_ops(records: list[dict], all_ops: bool) -> bool:
    """Snapshots hold the ops too with --all-ops, or when the stage has no probe at all
    (a kernel written without probes is still checked, on its captured ops)."""
    return all_ops or not any(r.get("kind", "probe") == "probe" for r in records)


def relative(ws: Workspace, location: str | None) -> str:
    if not location:
        return "-"
    path, _, line = location.rpartition(":")
    try:
        rel = Path(path).resolve().relative_to(ws.root.resolve())
        return f"{rel}:{line}"
    except ValueError:
        return location


def _lock_path(ws: Workspace, kernel: str) -> Path:
    return ws.stages_dir / kernel / LOCK_NAME


def read_lock(ws: Workspace, kernel: str, accepting: bool = False) -> dict[str, Any]:
    """The accepted snapshot of `kernel` ({} when there is none), checked against
    workbench.schemas.shapes_lock; `accepting` says so in the message of a broken one."""
    from workbench.schemas.shapes_lock import MAX_BYTES, ShapesLock  # lazy: pydantic loads when a file is read, not at start-up

    path = _lock_path(ws, kernel)
    if not (path.exists() or path.is_symlink()):
        return {}
    try:
        try:
            _, lock = load_yaml(path, ShapesLock, MAX_BYTES)
        except FileNotFoundError:
            raise SchemaError(str(path), "does not exist (a dangling link?)") from None
        if lock.kernel not in (None, kernel):
            raise SchemaError(str(path), f"kernel: expected {kernel!r} (the lock of stages/{kernel}/), got {lock.kernel!r}")
    except SchemaError as exc:
        if accepting:
            raise SchemaError(exc.source, f"{exc.problem}; not accepting over it: fix or remove it, then accept again") from None
        raise
    return lock.model_dump()


def _lock_records(records: list[dict]) -> dict[str, dict]:
    out = {}
    for r in with_keys(records):
        line = (r.get("location") or "").rpartition(":")[2]
        out[r["key"]] = {
            "layout": r.get("layout"),
            "rank": r.get("rank"),
            "kind": r.get("kind", "probe"),
            "line": int(line) if line.isdigit() else None,
        }
    return out


def compare(results: list[dict], lock: dict[str, Any], all_ops: bool = False) -> list[dict]:
    """Per result: {stage, label, status: same|changed|unaccepted|error, changes: [...]}."""
    out = []
    stages = lock.get("stages", {}) or {}
    for res in results:
        label = label_of(res["arch"], res["params"], res["variants"])
        entry = {"stage": res["stage"], "label": label, "changes": []}
        if res.get("status") != "ok":
            entry["status"] = "error"
            out.append(entry)
            continue
        accepted = (stages.get(res["letter"]) or {}).get(label)
        if accepted is None:
            entry["status"] = "unaccepted"
            out.append(entry)
            continue
        want_ops = all_ops or bool(accepted.get("all_ops"))
        current = _lock_records(select(res["shapes"], want_ops))
        before = {k: v for k, v in (accepted.get("records") or {}).items() if want_ops or v.get("kind", "probe") == "probe"}
        for key in dict.fromkeys([*before, *current]):
            a, b = before.get(key), current.get(key)
            if a is None:
                entry["changes"].append({"key": key, "change": "new", "b": b["layout"], "rank_b": b["rank"]})
            elif b is None:
                entry["changes"].append({"key": key, "change": "removed", "a": a["layout"], "rank_a": a["rank"]})
            elif a.get("rank") != b.get("rank"):
                entry["changes"].append({"key": key, "change": "modes", "a": a["layout"], "b": b["layout"], "rank_a": a["rank"], "rank_b": b["rank"]})
            elif a.get("layout") != b.get("layout"):
                entry["changes"].append({"key": key, "change": "layout", "a": a["layout"], "b": b["layout"], "rank_a": a["rank"], "rank_b": b["rank"]})
        entry["status"] = "changed" if entry["changes"] else "same"
        out.append(entry)
    return out


# --------------------------------------------------------------------------------------
# Accepting
# --------------------------------------------------------------------------------------
def accept(ws: Workspace, kernel: str, results: list[dict], all_ops: bool = False) -> Path:
    """Write the results into shapes.lock.yaml and MEMORY.md's `shapes` block."""
    bad = [r["stage"] for r in results if r.get("status") != "ok"]
    if bad:
        raise UserError(f"not accepting: {', '.join(bad)} did not compile (fix it first, or accept the other stages alone)")
    git = git_state(ws.root)
    commit = (git.get("commit") or "")[:10] + ("+dirty" if git.get("dirty") else "")
    today = date.today().isoformat()
    lock = read_lock(ws, kernel, accepting=True)
    from workbench.schemas.shapes_lock import VERSION  # lazy: pydantic loads when a file is read, not at start-up

    lock = {"version": VERSION, "kernel": kernel, "stages": dict(lock.get("stages") or {})}
    for res in results:
        label = label_of(res["arch"], res["params"], res["variants"])
        per_stage = {
            k: v for k, v in (lock["stages"].get(res["letter"]) or {}).items() if not superseded(k, res["arch"], res["variants"], res["params"])
        }
        with_ops = lock_all_ops(res["shapes"], all_ops)
        per_stage[label] = {
            "stage": res["stage"],
            "commit": commit or None,
            "date": today,
            "all_ops": with_ops,
            "records": _lock_records(select(res["shapes"], with_ops)),
        }
        lock["stages"][res["letter"]] = per_stage
    path = _lock_path(ws, kernel)
    header = (
        "# Accepted shapes of this kernel's stages, per arch | parameters | variants.\n"
        "# Written by `wb shapes --accept`; `wb shapes --check` fails when a layout or mode count changes.\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(lock, sort_keys=True, width=200))

    def merge(old: Any) -> Any:
        data = old if isinstance(old, dict) else {}
        for res in results:
            label = label_of(res["arch"], res["params"], res["variants"])
            kept = {k: v for k, v in (data.get(res["stage"]) or {}).items() if not superseded(k, res["arch"], res["variants"], res["params"])}
            data[res["stage"]] = kept
            kept[label] = {
                "commit": commit or None,
                "date": today,
                "probes": [[r["name"], r.get("layout"), r.get("rank")] for r in select(res["shapes"], False)],
                "ops": sum(1 for r in res["shapes"] if r.get("kind") == "op"),
            }
        return data

    memory.update_data_block(ws, "shapes", merge)  # MEMORY.json; rendered by memory.render_shapes
    return path
