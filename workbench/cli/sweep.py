"""`wb sweep`: a stage over the cartesian product of parameter values, as independent runs."""

from __future__ import annotations

from typing import List, Optional

import typer

from workbench.cli import a_name, app, state
from workbench.kernels.fixtures import MAX_SEED, MAX_SEEDS
from workbench.errors import UserError


@app.command()
def sweep(
    stage: str = typer.Argument(..., help="Stage: stage-c, c, KERNEL/stage-c or its name."),
    n: Optional[str] = typer.Option(None, "--n", help="Values of the stage's size parameter (kernel.yaml `size:`, default n), comma-separated: 128,256,512."),
    d: Optional[str] = typer.Option(None, "--d", help="Values of parameter d, comma-separated: 64,128 (shorthand for -p d=...)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Element types, comma-separated: bf16,fp16."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Other parameter, key=v1,v2 (repeatable)."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", "-V", help="Compile-time variant, key=v1,v2 (repeatable; swept too)."),
    fixture: Optional[List[str]] = typer.Option(None, "--fixture", "-f", help="Fixture to run in every case (repeatable; default: the stage's list)."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Base seed of the fixtures."),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, max=MAX_SEEDS, help="Seeds per fixture."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds per case before it is killed as HANG (default: the stage's)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Compile for this arch."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="all (default: every visible GPU, one worker each), none, or a list: 0,1."),
    host: Optional[List[str]] = typer.Option(None, "--host", callback=a_name("--host", "names of configured hosts (`wb hosts` lists them)", comma_list=True), help="Run on configured remote host(s): --host a --host b, or a,b."),
    slurm: Optional[str] = typer.Option(None, "--slurm", callback=a_name("--slurm", "a Slurm partition name (or @local)"), help="Submit to this Slurm partition through submitit (@local: submitit's LocalExecutor)."),
    slurm_jobs: Optional[int] = typer.Option(None, "--slurm-jobs", help="How many Slurm jobs share the cases (default: up to 4)."),
    slurm_opt: Optional[List[str]] = typer.Option(None, "--slurm-opt", help="submitit parameter key=value, e.g. slurm_account=abc (repeatable)."),
    fresh: bool = typer.Option(False, "--fresh", help="A new worker per case (slow: for debugging worker reuse)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run STAGE for every combination of the given values; summarize verdicts per fixture.

    Each case is a normal run record. Cases spread one warm worker per GPU (locally, or per GPU
    of each --host), or go to Slurm; a hung or crashed case does not stop the sweep. The summary
    table is printed and written into the stage report (runs/reports/<kernel>-stage-<x>.sweep.md)."""
    from workbench.remote import sweep as sweeps
    from workbench.cli.run import check_timeout, parse_pairs
    from workbench.remote.hosts import get_host
    from workbench.schemas.hosts import parse_gpus
    from workbench.arches import check_arch
    from workbench.kernels.registry import load_kernels, resolve_stage

    check_arch(arch)
    ws = state.workspace()
    spec = resolve_stage(ws, stage, load_kernels(ws))
    axes: dict[str, list[str]] = {}
    flags: dict[str, str] = {}
    for key, flag, raw in ((spec.size_param, "n", n), ("d", "d", d), ("dtype", "dtype", dtype)):
        values = sweeps.split_values(raw, f"--{flag}")
        if values:
            axes[key], flags[key] = values, flag
    for key, values in sweeps.parse_axes(param, "--param").items():
        if key in axes:
            raise UserError(f"parameter {key} is given twice (--{flags[key]} and -p {key}=...)")
        axes[key] = values
    cases = sweeps.plan(spec, axes, sweeps.parse_axes(variant, "--variant"))
    check_timeout(timeout)
    if host and slurm:
        raise UserError("--host and --slurm do not mix: pick one")
    gpu_list = parse_gpus(gpus, lambda why: UserError(
        f"--gpus {gpus!r}: {why}; expected all, none, or distinct GPU indices or UUIDs like 0,1 or GPU-8f3c...")) if gpus is not None else None
    hosts = [get_host(ws, h.strip()) for item in host or [] for h in item.split(",") if h.strip()]
    if slurm_jobs is not None and slurm_jobs < 1:
        raise UserError("--slurm-jobs must be at least 1")
    if slurm_opt and not slurm:
        raise UserError("--slurm-opt goes with --slurm PARTITION")
    slurm_opts = sweeps.slurm_options(slurm, parse_pairs(slurm_opt, "--slurm-opt")) if slurm else {}
    from workbench.cli.run import check_fixture_names

    # a misspelt name was an ERROR in every case and overwrote the stage's sweep report; so was a
    # fixture module that fails to import, or a name in kernel.yaml's list that no module has
    # (a host runs its own workspace's fixtures: only -f is checked for it)
    check_fixture_names(ws, fixture or ([] if hosts else spec.fixtures))
    opts = sweeps.RunOptions(list(fixture or []), seed, seeds, timeout, arch, warm=not fresh)
    local = not hosts and not slurm
    if local:
        from workbench.cli.run import require_gpu_here

        if not spec.module_path.is_file():  # (as `wb run` says it), not an ERROR row per case and a report of them
            raise UserError(f"{spec.id}: module {spec.module_path} does not exist")
        require_gpu_here(spec)  # one line here, not a first case that fails and then the same line
    ws.ensure_state_dir()
    if local:
        from workbench.run.procs import orphan_warning

        if (orphan := orphan_warning(ws)) is not None:
            from workbench import terminal

            terminal.warn(orphan)
    from workbench.cli.render import SweepDisplay, render_sweep  # rich.progress and the records: not at `wb --help`

    display = SweepDisplay(f"sweep {spec.id}", len(cases), enabled=not as_json)
    try:
        summary = sweeps.sweep(
            ws, spec, cases, opts, gpus=gpu_list, hosts=hosts or None, slurm=slurm, slurm_jobs=slurm_jobs,
            slurm_opts=slurm_opts or None, on_event=display,
        )
    finally:
        display.close()
    if as_json:
        from workbench.terminal import print_json

        print_json(summary)
    else:
        from workbench.terminal import console, escape

        render_sweep(summary)
        if summary["sweep_report"]:
            console.print(f"[dim]summary: {escape(str(summary['sweep_report']))} (part of the stage report {escape(str(summary['report']))})[/]")
    if summary.get("interrupted"):
        from workbench import terminal

        terminal.error("interrupted: the sweep stopped early (its summary above; the running cases' records say INTERRUPTED)")
        raise typer.Exit(130)
    raise typer.Exit(0 if all(r["verdict"] == "PASS" for r in summary["rows"]) else 1)
