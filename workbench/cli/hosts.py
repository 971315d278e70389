"""`wb hosts` (remote GPU hosts), `wb ps` and `wb kill` (wb's own worker processes)."""

from __future__ import annotations

from typing import List, Optional

import typer

from workbench.cli import app, host_name, state
from workbench.errors import UserError


@app.command()
def hosts(
    check: bool = typer.Option(True, "--check/--no-check", help="Reach each host and check wb, torch and its GPUs."),
    name: Optional[List[str]] = typer.Argument(None, help="Only these hosts."),
    as_json: bool = typer.Option(False, "--json", help="Print hosts and checks as JSON."),
) -> None:
    """List the remote hosts of wb.yaml (`hosts:`) and check each: reachable, wb importable, GPUs seen.

    A host entry: name, ssh (user@host), path (remote workspace), and optionally port,
    identity, ssh_options, python (default python3), setup (a shell line), env, gpus.
    Exits 1 when a host fails its check."""
    from concurrent.futures import ThreadPoolExecutor

    from workbench.remote.check import check_host
    from workbench.remote.hosts import config_file, get_host, load_hosts
    from workbench.terminal import console, escape, print_json

    ws = state.workspace()
    configured = load_hosts(ws)
    chosen = [get_host(ws, n) for n in name] if name else list(configured.values())
    if not chosen:
        if as_json:
            print_json([])
            return
        console.print(f"no hosts configured: add a `hosts:` list to {escape(str(config_file(ws)))}, e.g.\n"
                      "  hosts:\n    - {name: h200, ssh: me@gpu-box, path: work/wb, python: ~/venv/bin/python}")
        return
    if not check:
        if as_json:
            print_json([h.as_dict() for h in chosen])
            return
        for h in chosen:
            console.print(f"{escape(h.name)}  {escape(h.describe())}  python {escape(h.python)}" + (f"  setup: {escape(h.setup)}" if h.setup else ""))
        return
    with ThreadPoolExecutor(max_workers=min(8, len(chosen))) as pool:
        results = list(pool.map(lambda h: check_host(ws, h), chosen))
    if as_json:
        print_json([r.as_dict() for r in results])
    else:
        for r in results:
            h = r.host
            if r.ok:
                gpus = r.info.get("gpus") or []
                names = sorted(set(gpus))
                gpu_text = f"{len(gpus)} × {', '.join(names)}" if gpus else "no GPU"
                console.print(
                    f"[green]✓[/] {escape(h.name)}  {escape(h.describe())}  wb {escape(r.info.get('wb'))} · "
                    f"torch {escape(r.info.get('torch'))} · {escape(gpu_text)}"
                )
            else:
                seen = ", ".join(f"{k} {r.info[k]}" for k in ("python", "wb", "torch") if r.info.get(k))
                for problem in r.problems:
                    console.print(
                        f"[red]✗[/] {escape(h.name)} ({escape(h.describe())}): {escape(problem)}"
                        + (f" [dim](reachable; {escape(seen)})[/]" if r.reachable and seen else "")
                    )
            if r.info.get("wb_mismatch"):
                console.print(f"[yellow]![/] {escape(h.name)}: {escape(r.info['wb_mismatch'])}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _list_of_rows(host: str, command: str, data) -> list[dict]:
    """A remote `wb ps` / `wb kill` answer: a list of objects, else a one-line error (a remote
    wb of another version, or something that is not wb answering)."""
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(
            f"host {host}: `wb {command} --json` answered {type(data).__name__}, not a list of objects "
            "(another wb version there? `wb hosts` compares them)"
        )
    return data


PS_ROWS = 200  # rows of `wb ps` drawn as a table; the rest are counted by state
_NOT_RUNNING = ("gone", "foreign", "reused")


def _render_procs(rows: list[dict], title: str | None = None) -> None:
    from workbench import terminal
    from workbench.terminal import console, escape, fmt

    if not rows:
        console.print("no wb worker processes" + (f" on {title}" if title else ""))
        return
    style = {"orphan": "bold red", "busy": "yellow", "idle": "green", "running": "yellow"}
    # a table of thousands of pid files takes rich seconds per thousand rows and helps no one:
    # the processes that run come first, the rest is counted
    rows = sorted(rows, key=lambda r: r.get("state") in _NOT_RUNNING)
    hidden = rows[PS_ROWS:]
    rows = rows[:PS_ROWS]

    def text(value, missing: str = "-") -> str:  # (a remote host's rows come from another wb)
        return escape(str(value)) if value not in (None, "") else missing

    table_rows = []
    for r in rows:
        state_text = text(r.get("state"), "?")
        age = r.get("age_s")
        age = age if isinstance(age, (int, float)) and not isinstance(age, bool) and age == age else None
        table_rows.append([
            text(r.get("pid"), "?"), text(r.get("kind")), f"[{style.get(state_text, 'dim')}]{state_text}[/]",
            fmt(round(age) if age is not None else None) + ("s" if age is not None else ""),
            text(r.get("cuda_visible_devices")), text(fmt(r.get("gpu_mib"))), text(r.get("run")), text(r.get("note"), ""),
        ])
    console.print(terminal.table(title, ["pid", "kind", "state", "age", "GPUs", "GPU MiB", "run", "note"], table_rows))
    if hidden:
        from collections import Counter

        counts = Counter(str(r.get("state")) for r in hidden)
        shown = ", ".join(f"{escape(k)} {n}" for k, n in counts.most_common())
        console.print(f"[dim]{len(hidden)} more not shown ({shown}): `wb ps --all --json` lists every one[/]")
    if any(r.get("state") == "orphan" for r in rows):
        console.print("[dim]orphans: `wb kill` ends them (only processes whose pid file matches)[/]")


@app.command()
def ps(
    host: Optional[str] = typer.Option(None, "--host", callback=host_name, help="List them on a configured remote host."),
    all_files: bool = typer.Option(False, "--all", help="Also show pid files of processes that are gone."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List wb's worker processes of this workspace: idle, busy, or orphaned (still running, of no use)."""
    from workbench.terminal import print_json

    ws = state.workspace()
    if host:
        from workbench.remote.client import run_wb_json

        rows = _list_of_rows(host, "ps", run_wb_json(ws, host, ["ps"] + (["--all"] if all_files else []), sync=False, show=not as_json))
    else:
        from workbench.run import procs

        rows = [p.as_dict() for p in procs.scan(ws, gpu=True) if all_files or p.alive]
    if as_json:
        print_json(rows)
        return
    _render_procs(rows, title=f"host {host}" if host else None)


@app.command()
def kill(
    pids: Optional[List[int]] = typer.Argument(None, help="Pids to end (from `wb ps`). Default: every orphan."),
    everything: bool = typer.Option(False, "--all", help="End every wb worker of this workspace, idle ones too."),
    host: Optional[str] = typer.Option(None, "--host", callback=host_name, help="On a configured remote host."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """End wb's own stale processes by pid: orphans by default. Never anything wb did not start:
    each pid must match a pid file in .wb/pids whose recorded start time equals the live process's.
    Exits 1 when a pid given was not ended (not wb's, or it would not stop)."""
    from workbench.terminal import console, escape, print_json

    ws = state.workspace()
    for pid in pids or []:  # kill(2) reads 0 and -N as process groups: a slip, not a pid
        if pid < 1:
            raise UserError(f"pid {pid}: a process id is a whole number from 1 up (`wb ps` lists wb's)")
    if host:
        from workbench.remote.client import run_wb_json

        argv = ["kill", *map(str, pids or [])] + (["--all"] if everything else [])
        results = _list_of_rows(host, "kill", run_wb_json(ws, host, argv, sync=False, show=not as_json))
    else:
        from workbench.run import procs

        results = [vars(r) for r in procs.kill(ws, list(pids or []), everything)]
    if as_json:
        print_json(results)
    else:
        if not results:
            what = "no wb processes" if everything else "no orphaned wb processes"
            console.print(f"nothing to kill: {what}" + (f" on {host}" if host else "") + (" (`wb kill --all` ends idle workers too)" if not everything else ""))
        for r in results:
            console.print(("[green]✓[/] " if r.get("killed") is True else "[red]✗[/] ") + escape(str(r.get("message", ""))))
    if pids and not all(r.get("killed") is True for r in results):
        raise typer.Exit(1)
