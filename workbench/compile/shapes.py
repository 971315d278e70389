"""`wb shapes` as a library: compile stages compile-only (no GPU needed), collect their
probe records, compare them with the accepted snapshot, accept a new one.

    targets = plan(ws, "fmha", None, {"n": "256"}, {}, None)
    results = compile_jobs.collect(ws, targets, on_event=print)   # workbench.run.compile_jobs
    diffs   = compare(results, read_lock(ws, "fmha"))
    accept(ws, "fmha", results)                                    # shapes.lock.yaml + MEMORY.md

The compiling itself (disk cache first, then worker processes) is workbench.run.compile_jobs.
With no GPU and with one the records are identical: they come from tracing, which never
touches a device.

Accepted snapshots live in stages/<kernel>/shapes.lock.yaml, per stage and per
"arch | params | variants" label; a record is identified by `name@file` (plus `#k` for
the k-th repeat), never by line number, so moving code does not count as a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from workbench.errors import UserError
from workbench.kernels.registry import KernelSpec, StageSpec, default_kernel, get_kernel, load_kernels, warn_broken
from workbench.records import memory
from workbench.records.provenance import git_state
from workbench.files import atomic_write_text
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


def _still_wanted(label: str, snapshot: Any, res: dict, defaults: bool) -> bool:
    """Whether ``accept`` keeps an earlier snapshot beside ``res``'s: not one of a superseded
    variant or parameter set and, when the defaults are accepted, not the earlier default of
    the same arch (a snapshot marked ``defaults``)."""
    if superseded(label, res["arch"], res["variants"], res["params"]):
        return False
    old_default = isinstance(snapshot, dict) and snapshot.get("defaults") is True and label.split(" · ")[0] == res["arch"]
    return not (defaults and old_default)


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
    if stage is not None:  # (as `wb run` reads a stage: spaces around it dropped, an empty one refused)
        wanted = stage.strip().lower().removeprefix("stage-")
        specs = [s for s in kernel.stages if wanted and wanted in (s.letter, s.name.lower())]
        if not specs:
            import difflib

            listed = ", ".join(f"{s.short} ({s.name})" for s in kernel.stages)
            close = difflib.get_close_matches(wanted, [s.name.lower() for s in kernel.stages] + [s.short for s in kernel.stages], n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"kernel {kernel.name} has no stage {stage!r}{hint}; its stages: {listed}")
    for name in overrides:
        if not any(name in s.params for s in specs):
            raise UserError(f"no selected stage of {kernel.name} has a parameter {name!r}")
    if size is not None and not any(s.size_param in s.params for s in specs):
        raise UserError(f"no selected stage of {kernel.name} has its size parameter (--n)")
    if size is not None:  # --n would replace the -p value without a word
        twice = sorted({s.size_param for s in specs if s.size_param in s.params and s.size_param in overrides})
        if twice:
            raise UserError(f"parameter {twice[0]} is given twice (--n and -p {twice[0]}=...)")
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
            "line": int(line) if line.isdecimal() else None,
        }
    return out


def compare(results: list[dict], lock: dict[str, Any], all_ops: bool = False) -> list[dict]:
    """Per result: {stage, label, status: same|changed|unaccepted|error, changes: [...]}."""
    out = []
    stages = lock.get("stages", {}) or {}
    for res in results:
        label = label_of(res["arch"], res["params"], res["variants"])
        entry = {"stage": res["stage"], "label": label, "changes": []}
        if res.get("status") == "skipped":  # a plain PyTorch stage (is_cute = False): no shapes to hold to a snapshot
            entry["status"] = "skipped"
            out.append(entry)
            continue
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
def accept(ws: Workspace, kernel: str, results: list[dict], all_ops: bool = False, defaults: bool = False) -> Path:
    """Write the results into shapes.lock.yaml and MEMORY.md's `shapes` block. ``defaults``:
    the results are the stages' default configurations (no -p, -V or --n): each is marked so,
    and replaces the snapshot marked so before it (a default that changed, e.g. a variant's
    `auto`, would otherwise leave the old default's snapshot for ever beside the new one)."""
    bad = [r["stage"] for r in results if r.get("status") not in ("ok", "skipped")]
    if bad:
        raise UserError(f"not accepting: {', '.join(bad)} did not compile (fix it first, or accept the other stages alone)")
    skipped = [r["stage"] for r in results if r.get("status") == "skipped"]
    results = [r for r in results if r.get("status") == "ok"]  # a plain PyTorch stage has no shapes to accept
    if not results:
        raise UserError(f"nothing to accept: {', '.join(skipped)} {'is no CuTe DSL stage' if len(skipped) == 1 else 'are no CuTe DSL stages'} (is_cute = False)")
    git = git_state(ws.root)
    commit = (git.get("commit") or "")[:10] + ("+dirty" if git.get("dirty") else "")
    today = date.today().isoformat()
    lock = read_lock(ws, kernel, accepting=True)
    from workbench.schemas.shapes_lock import VERSION  # lazy: pydantic loads when a file is read, not at start-up

    kept = {k: v for k, v in lock.items() if k not in ("version", "kernel", "stages")}  # keys of a newer wb or a person: kept
    lock = {**kept, "version": VERSION, "kernel": kernel, "stages": dict(lock.get("stages") or {})}
    for res in results:
        label = label_of(res["arch"], res["params"], res["variants"])
        per_stage = {k: v for k, v in (lock["stages"].get(res["letter"]) or {}).items() if _still_wanted(k, v, res, defaults)}
        with_ops = lock_all_ops(res["shapes"], all_ops)
        per_stage[label] = {
            "stage": res["stage"],
            "commit": commit or None,
            "date": today,
            "all_ops": with_ops,
            "records": _lock_records(select(res["shapes"], with_ops)),
            **({"defaults": True} if defaults else {}),
        }
        lock["stages"][res["letter"]] = per_stage
    path = _lock_path(ws, kernel)
    header = (
        "# Accepted shapes of this kernel's stages, per arch | parameters | variants.\n"
        "# Written by `wb shapes --accept`; `wb shapes --check` fails when a layout or mode count changes.\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(lock, sort_keys=True, width=200), follow_link=True)

    def merge(old: Any) -> Any:
        data = old if isinstance(old, dict) else {}
        for res in results:
            label = label_of(res["arch"], res["params"], res["variants"])
            kept = {k: v for k, v in (data.get(res["stage"]) or {}).items() if _still_wanted(k, v, res, defaults)}
            data[res["stage"]] = kept
            kept[label] = {
                "commit": commit or None,
                "date": today,
                "probes": [[r["name"], r.get("layout"), r.get("rank")] for r in select(res["shapes"], False)],
                "ops": sum(1 for r in res["shapes"] if r.get("kind") == "op"),
                **({"defaults": True} if defaults else {}),
            }
        return data

    memory.update_data_block(ws, "shapes", merge)  # MEMORY.json; rendered by memory.render_shapes
    return path
