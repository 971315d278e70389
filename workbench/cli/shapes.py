"""`wb shapes`: the real shapes and mode counts of a kernel's stages, compile-only."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, List, Optional

import typer

from workbench.cli import app, host_name, state


@contextlib.contextmanager
def compile_progress(enabled: bool) -> Iterator[Callable[[dict], None]]:
    """A spinner on a terminal, one line per stage otherwise (stderr, so --json stays clean)."""
    from workbench import terminal

    start = time.perf_counter()
    if not enabled:
        yield lambda e: None
        return

    def describe(e: dict) -> str | None:
        n = f"({e['index'] + 1}/{e['total']})" if "index" in e and "total" in e else ""
        if e.get("phase") == "compile":
            return f"compiling {e.get('stage')} {n}"
        if e.get("phase") == "compiled":
            how = "cached" if e.get("cache") in ("disk", "memory") else f"{e.get('seconds') or 0:.1f} s"
            return f"{e.get('stage')} {e.get('status')} ({how}) {n}"
        if e.get("phase") == "start":
            return "starting worker"
        return None

    if terminal.err_console.is_terminal:
        with terminal.err_console.status("wb shapes: starting", spinner="dots") as status:
            yield lambda e: (text := describe(e)) and status.update(
                f"wb shapes: {terminal.escape(text)}  [dim]{time.perf_counter() - start:.1f}s[/]"
            )
    else:
        def plain(e: dict) -> None:
            text = describe(e)
            if text and e.get("phase") != "start":
                terminal.err_console.print(f"[{time.perf_counter() - start:6.1f}s] {terminal.escape(text)}", highlight=False)

        yield plain


@app.command()
def shapes(
    kernel: Optional[str] = typer.Argument(None, help="Kernel (default: the workspace's default kernel)."),
    stage: Optional[str] = typer.Argument(None, help="One stage: a, stage-a or its name (default: all)."),
    n: Optional[int] = typer.Option(None, "--n", help="Each stage's size parameter (kernel.yaml `size:`, default n; stages that take it)."),
    d: Optional[int] = typer.Option(None, "--d", help="Parameter d (stages that take it)."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Other parameter, key=value (repeatable)."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", "-V", help="Compile-time variant key=value (repeatable)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Compile for this arch: sm_90a, sm_100a, ... (default: kernel.yaml's)."),
    all_ops: bool = typer.Option(False, "--all-ops", help="Also every TMA partition, tile, divide, slice and MMA partition, captured from the traced IR."),
    accept: bool = typer.Option(False, "--accept", help="Accept these shapes: write stages/KERNEL/shapes.lock.yaml and MEMORY.md's shapes block."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when a layout or mode count differs from the accepted snapshot (CI, pre-commit)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Compile even when the compile cache has the stage."),
    in_process: bool = typer.Option(False, "--in-process", help="Compile in this process instead of a worker (debugging)."),
    host: Optional[str] = typer.Option(None, "--host", callback=host_name, help="Run it on a configured remote host (output streamed; --accept writes the lock there)."),
    as_json: bool = typer.Option(False, "--json", help="Print the records and differences as JSON."),
) -> None:
    """Compile KERNEL's stages for ARCH with fake tensors (no GPU needed) and show each probe's
    location, layout, modes and dynamic extents; what changed since the accepted snapshot is marked."""
    from workbench.compile import shapes as lib
    from workbench.cli.run import parse_pairs, stage_overrides
    from workbench.run import compile_jobs
    from workbench.errors import UserError
    from workbench.arches import check_arch

    if accept and check:
        raise UserError("--accept and --check do not go together: check first, then accept")
    check_arch(arch)
    ws = state.workspace()
    if host:  # the same command on the host, output streamed back (workbench.remote.client.passthrough)
        from workbench.remote.client import passthrough

        raise typer.Exit(passthrough(ws, host, state.argv))
    overrides = stage_overrides(None, d, None, param)
    chosen = parse_pairs(variant, "--variant")
    spec_kernel, targets = lib.plan(ws, kernel, stage, overrides, chosen, arch, size=None if n is None else str(n))
    lock = lib.read_lock(ws, spec_kernel.name, accepting=accept)  # a broken lock stops us before compiling
    ws.ensure_state_dir()
    with compile_progress(enabled=True) as on_event:
        results = compile_jobs.collect(ws, targets, on_event=on_event, use_cache=not no_cache, in_process=in_process)
    diffs = lib.compare(results, lock, all_ops=all_ops)
    failed = [r for r in results if r.get("status") == "error"]
    if accept:
        path = lib.accept(ws, spec_kernel.name, results, all_ops=all_ops, defaults=not (overrides or chosen or n is not None))
    if as_json:
        from workbench.terminal import print_json

        print_json(
            {
                "kernel": spec_kernel.name,
                "stages": [
                    {**{k: v for k, v in r.items() if k != "shapes"}, "records": lib.with_keys(lib.select(r.get("shapes", []), all_ops)),
                     "diff": d}
                    for r, d in zip(results, diffs)
                ],
            }
        )
    else:
        for res, diff in zip(results, diffs):
            render_stage(ws, res, diff, all_ops, check)
        if accept:
            from workbench.terminal import console

            console.print(f"accepted {sum(r.get('status') == 'ok' for r in results)} stage(s) into {path.relative_to(ws.root)} and MEMORY.md")
    if failed:
        raise typer.Exit(1)
    if check:
        bad = [d for d in diffs if d["status"] not in ("same", "skipped")]
        if bad and not as_json:
            from workbench.terminal import console, escape

            for d in bad:
                if d["status"] == "unaccepted":
                    console.print(f"[red]✗ {escape(d['stage'])} ({escape(d['label'])}): no accepted snapshot (run wb shapes --accept)[/]")
                else:
                    console.print(f"[red]✗ {escape(d['stage'])} ({escape(d['label'])}): {len(d['changes'])} change(s) since the accepted snapshot[/]")
        raise typer.Exit(1 if bad else 0)


def _short_location(location: str | None) -> str:
    return (location or "-").rsplit("/", 1)[-1]


def _op_label(op: str | None) -> str:
    short = (op or "").rsplit(".", 1)[-1]
    if short.startswith("make_non_exec_tiled_tma_"):
        return "tma " + short.rsplit("_", 1)[-1] + " tensor"
    if op == "cute.tiled.mma.partition":
        return "mma partition"
    return short


def _dyn(record: dict) -> str:
    dyn = record.get("dynamic")
    if dyn is None:
        return ""
    return ", ".join(f"mode {p}" for p in dyn) if dyn else "-"


def _modes(record: dict) -> str:
    modes = record.get("modes")
    if not modes:
        return ""
    return f"{record.get('rank')}: " + " | ".join(modes)


def render_stage(ws, res: dict, diff: dict, all_ops: bool, check: bool) -> None:
    from workbench.compile import shapes as lib
    from workbench.terminal import console, escape

    head = f"[bold]{escape(res['stage'])}[/]  {escape(diff['label'])}"
    if res.get("status") == "ok":
        if res.get("cache") in ("disk", "memory"):
            timing = f"cached (cold compile {res.get('cold_seconds') or 0:.1f} s)"
        else:
            timing = f"compiled in {res.get('seconds') or 0:.1f} s"
        console.print(f"{head}  [dim]{timing}[/]")
    elif res.get("status") == "skipped":
        console.print(f"{head}  [dim]{escape(res.get('note') or 'skipped')}[/]")
        return
    else:
        console.print(f"{head}  [bold red]compile failed[/]")
    changes = {c["key"]: c for c in diff.get("changes", [])}
    all_ops = lib.lock_all_ops(res.get("shapes") or [], all_ops) if res.get("shapes") else all_ops
    records = lib.with_keys(lib.select(res.get("shapes") or [], all_ops))
    rows = []
    for r in records:
        change = changes.get(r["key"])
        mark = ""
        style = ""
        if change is not None:
            if change["change"] == "new":
                mark, style = "new", "yellow"
            else:
                mark = f"was {change.get('a')}" + (f" ({change.get('rank_a')} modes)" if change["change"] == "modes" else "")
                style = "bold red"
        name = escape(r["name"]) + ("" if r.get("kind", "probe") == "probe" else f" [dim]{escape(_op_label(r.get('op')))}[/]")
        if r.get("count", 1) > 1:
            name += f" [dim]×{r['count']}[/]"
        layout = escape(r.get("layout") or "")
        rows.append(
            [
                name,
                escape(_short_location(r.get("location"))),
                f"[{style}]{layout}[/]" if style else layout,
                escape(_modes(r)),
                escape(_dyn(r)),
                escape(" ".join(x for x in (r.get("memspace"), r.get("dtype")) if x)),
                f"[{style}]{escape(mark)}[/]" if mark else "",
            ]
        )
    if rows:
        from rich.table import Table

        t = Table(header_style="bold")
        t.add_column("probe" if not all_ops else "probe / op", overflow="fold")
        t.add_column("location", no_wrap=True)
        t.add_column("layout", overflow="fold", ratio=3)
        t.add_column("modes", overflow="fold", ratio=2)
        t.add_column("dynamic", overflow="fold")
        t.add_column("mem", no_wrap=True)
        t.add_column("Δ accepted", overflow="fold", ratio=1)
        for row in rows:
            t.add_row(*row)
        console.print(t)
    elif res.get("status") == "ok":
        ops = sum(1 for r in res.get("shapes") or [] if r.get("kind") == "op")
        console.print(f"  [dim]no probes in this stage; --all-ops shows the {ops} ops captured from the traced IR[/]")
    for change in diff.get("changes", []):
        if change["change"] == "removed":
            console.print(f"  [bold red]removed[/] {escape(change['key'])}: was {escape(change.get('a') or '')}")
    if diff.get("status") == "unaccepted" and check:
        console.print("  [yellow]no accepted snapshot for this stage and parameter set[/]")
    if res.get("status") == "error":
        err = res.get("error") or {}
        console.print(f"[red]{escape(err.get('message') or 'compile failed')}[/]")
        if err.get("log"):
            console.print(escape(err["log"][-1500:]), style="dim")
    render_resources(res.get("resources"), brief=True)
    if res.get("output"):
        console.print("[dim]printed while tracing:[/]")
        console.print(escape(res["output"][-2000:]), style="dim")


def render_resources(resources: dict | None, brief: bool) -> None:
    from workbench.compile.resources import short_kernel_name
    from workbench.terminal import console, escape

    if not resources:
        return
    capacity = resources.get("smem_capacity_bytes")
    for k in resources.get("kernels", []):
        smem = k.get("dynamic_smem_bytes") or 0
        parts = [
            f"{k.get('registers')} regs" if k.get("registers") is not None else None,
            f"spills {k.get('spill_store_bytes')}/{k.get('spill_load_bytes')} B" if k.get("spill_store_bytes") is not None else None,
            f"smem {smem / 1024:.1f} KiB" + (f" of {capacity / 1024:.0f} KiB" if capacity else ""),
            f"{k.get('barriers')} barriers" if k.get("barriers") is not None else None,
        ]
        name = short_kernel_name(k.get("name") or "")
        console.print(f"  [dim]kernel{' ' + escape(name) if name else ''}: " + escape(", ".join(p for p in parts if p)) + "[/]")
    for c in resources.get("checks", []):
        color = "red" if c["level"] == "error" else "yellow"
        console.print(f"  [{color}]{c['level']}[/] {escape(c['message'])}")
