"""Looking back: `wb runs`, `wb diff-run`, `wb report`, `wb explain`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from workbench.cli import app, state
from workbench.errors import UserError


def _stage_id_of(ws):
    from workbench.kernels.registry import load_kernels, resolve_stage

    kernels = load_kernels(ws)
    return lambda text: resolve_stage(ws, text, kernels).id


def select_run(ws, selector: str) -> dict:
    from workbench.records.store import select

    return select(ws.runs_dir, selector, _stage_id_of(ws))


@app.command()
def runs(
    stage: Optional[str] = typer.Argument(None, help="Only runs of this stage (c, stage-c, KERNEL/stage-c)."),
    limit: int = typer.Option(20, "-n", "--limit", help="How many runs to list, newest first."),
    full: bool = typer.Option(False, "--full", help="Every parameter and variant, not only those away from their defaults."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs as JSON."),
) -> None:
    """List recent runs, newest first: each with its parameters and variants away from their
    defaults (parameters: kernel.yaml's today; variants: as the run recorded them)."""
    from workbench.records.store import list_records

    if limit < 1:
        raise UserError(f"-n {limit}: give how many runs to list, 1 or more")
    ws = state.workspace()
    where = None
    if stage is not None:  # (an empty name is refused as `wb run` refuses it, not read as "every stage")
        stage_id = _stage_id_of(ws)(stage)
        where = lambda r: r.get("stage") == stage_id  # noqa: E731
    records = list_records(ws.runs_dir, where, limit=limit)
    if as_json:
        from workbench.terminal import print_json

        print_json([{k: v for k, v in r.items() if k in ("id", "stage", "verdict", "params", "variants", "started", "provenance", "timing", "kind", "host_name", "remote")} for r in records])
        return
    from workbench.records.store import unfinished_runs
    from workbench.terminal import console, escape

    if not records:
        console.print("no runs recorded yet" + (f" for {stage}" if stage else "") + ": `wb run STAGE` makes one")
    else:
        from workbench.cli.render import render_runs
        from workbench.records.report import stage_defaults

        render_runs(records, None if full else stage_defaults(ws))
    for line in unfinished_runs(ws.runs_dir, limit):  # a run whose wb was killed (kill -9) has no record to list
        console.print(f"[yellow]{escape(line)}[/]")


@app.command("diff-run")
def diff_run(
    a: Optional[str] = typer.Argument(None, help="Older run (id, prefix, last~1, stage-c@last~1). Default: see below."),
    b: Optional[str] = typer.Argument(None, help="Newer run. Default: the last run of A's stage, or the last two runs of the latest stage."),
    as_json: bool = typer.Option(False, "--json", help="Print the difference as JSON."),
) -> None:
    """Compare two runs: verdict flips, metric deltas, params, provenance, shapes, timing. Exit 1 when B regresses."""
    from workbench.records.diff import default_pair, diff_runs

    ws = state.workspace()
    if a is None:
        try:
            ra, rb = default_pair(ws.runs_dir)
        except LookupError as exc:
            raise UserError(str(exc)) from None
    else:
        ra = select_run(ws, a)
        if b is None:
            from workbench.records.store import list_records

            newer = list_records(ws.runs_dir, lambda r: r.get("stage") == ra["stage"], limit=1)
            if not newer or newer[0]["id"] == ra["id"]:
                raise UserError(f"give run B too: {ra['id']} is the latest run of {ra['stage']}")
            rb = newer[0]
        else:
            rb = select_run(ws, b)
    d = diff_runs(ra, rb)
    if as_json:
        from workbench.terminal import print_json

        print_json(d)
    else:
        from workbench.cli.render import render_diff

        render_diff(d)
    raise typer.Exit(1 if d["regressed"] else 0)


RENDER_MAX_CHARS = 500_000  # wb report renders a report up to this size; past it, prints its source


@app.command()
def report(
    target: str = typer.Argument("last", help="A run (id, prefix, last, stage-c@last) or a stage (stage-c, c, KERNEL/stage-c)."),
    raw: bool = typer.Option(False, "--raw", help="Print the Markdown source instead of rendering it."),
) -> None:
    """Show a run's report, or a stage's report (its history)."""

    from workbench.records import report as reports
    from workbench.records.store import select
    from workbench.kernels.registry import load_kernels, resolve_stage
    from workbench.schemas import short

    ws = state.workspace()
    kernels = load_kernels(ws)
    try:
        record = select(ws.runs_dir, target, _stage_id_of(ws))
        text = reports.run_report_text(record)
    except UserError as run_error:
        try:
            spec = resolve_stage(ws, target, kernels)
        except UserError as stage_error:  # what was meant decides which error says why
            name = target.strip()
            if not name or name[:1].isdigit() or "last" in name:  # meant as a run
                raise run_error from None
            raise UserError(f"{stage_error}; nor is {short(name)} a run (`wb runs` lists them)") from None
        text = reports.stage_report(ws, spec.id)
    from workbench.terminal import console, printable, warn

    if raw or len(text) > RENDER_MAX_CHARS:
        if not raw:  # rich's Markdown took a minute for 13 MB of fixture tables (the record limit is 64 MB)
            warn(f"the report is {len(text) / 1e6:.1f} MB: shown as its Markdown source (--raw), not rendered")
        print(printable(text))
        return
    from rich.markdown import Markdown

    console.print(Markdown(printable(text)))


@app.command()
def explain(
    run_id: str = typer.Argument("last", help="The run to explain (id, prefix, last, stage-c@last)."),
    as_json: bool = typer.Option(False, "--json", help="Print the diagnoses as JSON."),
) -> None:
    """Print a run's diagnosis: for each failing fixture, which known bug its output matches (and,
    for a run under --sanitize, the tool's findings)."""
    from workbench.cli.render import render_diagnosis, render_sanitizer
    from workbench.records.report import case_name
    from workbench.terminal import console, escape, verdict

    ws = state.workspace()
    record = select_run(ws, run_id)
    failed = [c for c in record.get("results", []) if c.get("verdict") == "FAIL"]
    if as_json:
        from workbench.terminal import print_json

        print_json({"id": record["id"], "verdict": record["verdict"], "error": record.get("error"), "sanitizer": record.get("sanitizer"),
                    "fixtures": [{"fixture": c.get("label"), "diagnosis": c.get("diagnosis")} for c in failed]})
        return
    console.print(f"{verdict(record['verdict'])} {escape(record['stage'])} run {record['id']}")
    if record.get("error"):
        err = record["error"]
        console.print(escape(str(err.get("message") or "")[:2000]) + (f"\n  at {escape(str(err['location']))}" if err.get("location") else ""))
    render_sanitizer(record.get("sanitizer"), record["id"], limit=20)
    if not failed:
        if record["verdict"] == "PASS":
            console.print("every fixture passed: nothing to explain")
        elif not record.get("error") and not record.get("sanitizer"):
            seen = sorted({str(c.get("verdict")) for c in record.get("results", [])})
            console.print("no fixture FAILed, so none has a diagnosis" + (f" (the fixtures' verdicts: {escape(', '.join(seen))})" if seen else " (no fixture results)"))
        return
    for case in failed:
        console.print(f"\n[bold]{escape(case_name(case))}[/]")
        for name, m in case.get("outputs", {}).items():
            if m.get("reasons"):
                console.print(f"  {name}: " + escape("; ".join(m["reasons"])))
        render_diagnosis(case.get("diagnosis"), full=True)


@app.command("import")
def import_(
    source: str = typer.Argument(..., help="A runs/ folder, a folder holding runs/, or a .tgz of one (e.g. fetched from a GPU box)."),
    as_json: bool = typer.Option(False, "--json", help="Print what was imported as JSON: each run's id, stage, kind and verdict, and the folders left out."),
) -> None:
    """Bring run records made elsewhere into this workspace: runs/, MEMORY.md, stage reports."""

    from workbench.records.importer import import_runs
    from workbench.terminal import console, escape, print_json

    ws = state.workspace()
    done = import_runs(ws, Path(source))
    if as_json:
        print_json({
            "runs_dir": str(ws.runs_dir),
            "imported": [{k: r.get(k) for k in ("id", "stage", "kind", "verdict", "bench_sweep")} for r in done.records],
            "without_record": done.without_record,
            "not_runs": done.not_runs,
            "already_here": done.already_here,
            "taken": done.taken,
            "ahead": done.ahead,
        })
        return
    by_verdict: dict[str, int] = {}
    for r in done.records:
        by_verdict[r["verdict"]] = by_verdict.get(r["verdict"], 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(by_verdict.items())) or "nothing new"
    already = f" ({len(done.already_here)} already here)" if done.already_here else ""
    console.print(f"imported {len(done.records)} run(s) into {escape(str(ws.runs_dir))}: {summary}{already}")
    if done.taken:
        console.print(f"[yellow]not imported: {len(done.taken)} run(s) whose ids runs/ holds for other runs[/] "
                      "(rename the folder in the source to a free id to bring one in): "
                      + ", ".join(done.taken[:5]) + (" ..." if len(done.taken) > 5 else ""))
    if done.ahead:
        console.print(f"[yellow]{len(done.ahead)} imported run(s) are dated ahead of this machine's clock "
                      "(the machine that made them has its clock or time zone ahead): until then `last` names them, "
                      "not the runs made here; give run ids instead: " + ", ".join(done.ahead[:5])
                      + (" ..." if len(done.ahead) > 5 else "") + "[/]")
    for r in done.records:
        if r.get("kind") == "bench" and r.get("bench_sweep") is True:
            console.print(f"run {escape(str(r.get('id')))} is a `wb bench --sweep` of {escape(str(r.get('stage')))}: "
                          f"`wb bench {escape(str(r.get('kernel') or str(r.get('stage')).split('/')[0]))} --sweep --from {escape(str(r.get('id')))}` writes its perf doc here")
    if done.without_record:
        console.print(f"skipped {len(done.without_record)} run folder(s) without a run.json (unfinished where they were made): "
                      + ", ".join(done.without_record[:5]) + (" ..." if len(done.without_record) > 5 else ""))
    if done.not_runs:
        console.print(f"left out {len(done.not_runs)} folder(s) of runs/ whose names are no run ids: "
                      + escape(", ".join(done.not_runs[:5])) + (" ..." if len(done.not_runs) > 5 else ""))
