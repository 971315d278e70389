"""What the workspace holds: `wb list`, `wb fixtures`, `wb new kernel`."""

from __future__ import annotations

import typer

from workbench.cli import app, state

new_app = typer.Typer(help="Create things: `wb new kernel NAME`.", no_args_is_help=True)
app.add_typer(new_app, name="new")


@app.command("list")
def list_kernels(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Kernels and their stages in order, with each stage's last verdict (from runs/, else the
    one MEMORY.md remembers, marked so; a run of an injected bug is not the stage's verdict)."""
    from workbench.errors import UserError
    from workbench.files import folder_problem
    from workbench.records.memory import last_runs
    from workbench.kernels.registry import load_kernels, refuse_broken
    from workbench.terminal import console, escape, table, verdict

    ws = state.workspace()
    problem = folder_problem(ws.stages_dir)
    if problem:  # listing "no kernels yet" with exit 0 hid it
        raise UserError(f"{problem}: the kernels live in its subfolders; move it away")
    kernels = load_kernels(ws)
    last = last_runs(ws, {s.id: s.injections for k in kernels.values() for s in k.stages})
    data = [
        {
            "kernel": k.name,
            "title": k.title,
            "arch": k.arch,
            "stages": [
                {
                    "stage": s.id,
                    "letter": s.letter,
                    "name": s.name,
                    "title": s.title,
                    "last_verdict": last.get(s.id, {}).get("verdict"),
                    "last_run": last.get(s.id, {}).get("id"),
                    "last_from": last.get(s.id, {}).get("from"),  # runs, MEMORY.json (none here yet)
                }
                for s in k.stages
            ],
        }
        for k in kernels.values()
    ]
    if as_json:
        from workbench.terminal import print_json

        print_json(data)
    elif not data and not kernels.broken:
        console.print("no kernels in stages/ yet: `wb new kernel NAME` makes one")
    else:
        for k in data:
            rows = [
                [f"stage-{s['letter']}", escape(s["name"]), escape(s["title"]), verdict(s["last_verdict"]), _last_run_cell(s)]
                for s in k["stages"]
            ]
            console.print(table(escape(f"{k['kernel']} — {k['title']} ({k['arch']})"), ["stage", "name", "title", "last verdict", "last run"], rows))
    refuse_broken(kernels)  # the good kernels are listed; the broken one is the command's error


def _last_run_cell(stage: dict) -> str:
    from workbench.terminal import escape

    if not stage["last_run"]:
        return "-"
    return escape(stage["last_run"]) + (" (MEMORY.md)" if stage["last_from"] == "MEMORY.json" else "")


@app.command()
def fixtures(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The diagnostic fixtures: what each isolates, what it can hide, which inputs it needs."""
    from workbench.kernels.fixtures import load_fixtures
    from workbench.terminal import console, escape, table

    ws = state.workspace()
    registry = load_fixtures(ws.fixtures_dir)
    data = [
        {
            "name": f.name,
            "isolates": f.isolates,
            "hides": f.hides,
            "needs": list(f.needs),
            "variants": dict(f.variants),
            "seeds": f.seeds,
            "module": f.module,
            "file": f.where,
        }
        for f in registry
    ]
    if as_json:
        from workbench.terminal import print_json

        print_json(data)
        return
    shared = {name for name in registry.names() if len(registry.variants(name)) > 1}
    rows = [
        [
            escape(f["name"]) + (f"\n({escape(f['file'].rsplit('/', 1)[-1])})" if f["name"] in shared else ""),
            escape(f["isolates"]),
            escape(f["hides"]),
            escape(", ".join(f["needs"]) or "-") + (f"\nvariant {escape(' '.join(f'{k}={v}' for k, v in f['variants'].items()))}" if f["variants"] else ""),
        ]
        for f in data
    ]
    console.print(table(None, ["fixture", "isolates", "can hide", "needs"], rows, show_lines=True))


@new_app.command("kernel")
def new_kernel(name: str = typer.Argument(..., help="Kernel name: a lowercase Python identifier.")) -> None:
    """Scaffold stages/NAME/ (kernel.yaml, a TMA + WGMMA tile GEMM stage for sm_90a, its reference) and fixtures/NAME.py."""
    from workbench.kernels.scaffold import new_kernel as scaffold
    from workbench.terminal import console

    ws = state.workspace()
    for path in scaffold(ws, name):
        console.print(f"created {path.relative_to(ws.root)}")
    console.print(f"next: `wb shapes {name}` (compile-only, no GPU needed), then `wb run {name}/a` on a GPU")
