"""`wb export`: compile a stage's configurations ahead of time into a pip-installable torch op."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from workbench.cli import app, state


@app.command("export")
def export_cmd(
    stage: str = typer.Argument(..., help="Stage: stage-d, d, KERNEL/stage-d or its name."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the package into (pip install it)."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Compile-time parameter key=value or key=v1,v2 (repeatable; the configurations are the product of the lists)."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", "-V", help="Compile-time variant key=value (repeatable; one value each)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Compile for this arch (default: kernel.yaml's)."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="Export configurations with no passing GPU run on the current sources (the package warns at import)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier export in --out."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds the whole export may take before its worker is killed (default: 600 per configuration)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Compile STAGE's compile-time configurations (the product of the -p lists) for ARCH with
    no GPU and write a pip-installable package to --out: one shared object per configuration
    (cubin + TVM-FFI launcher), manifest.json (stage, commit, DSL version, arch, the runs that
    verified each configuration) and a module registering the stage's torch.library op with a
    fake implementation. Refuses configurations without a passing GPU run on the current
    sources unless --allow-unverified. The package needs torch, apache-tvm-ffi and
    libcute_dsl_runtime.so; neither wb nor cutlass (docs/export.md). The stage's code runs in
    a worker process: one that exits, hangs or crashes is one line and leaves nothing."""
    from workbench.arches import check_arch
    from workbench.export.build import parse_lists
    from workbench.run.export_job import export_in_worker
    from workbench.cli.run import check_timeout, parse_pairs
    from workbench.kernels.registry import load_kernels, resolve_stage
    from workbench.terminal import console, escape, warn

    check_arch(arch)
    check_timeout(timeout)
    ws = state.workspace()
    spec = resolve_stage(ws, stage, load_kernels(ws))
    given = parse_lists(param)
    variants = parse_pairs(variant, "--variant")

    def on_event(event: dict) -> None:
        if as_json:
            return
        key = " ".join(f"{k}={v}" for k, v in event["key"].items())
        if event["event"] == "compile":
            console.print(f"[dim]compiling {event['index'] + 1}/{event['total']}: {escape(key)}[/]")
        else:
            console.print(f"[dim]  done in {event['seconds']:.1f} s[/]")

    result = export_in_worker(
        ws, spec, given, variants, arch or spec.arch, out, allow_unverified=allow_unverified, force=force,
        timeout=timeout, on_event=on_event,
    )
    for cfg in result.unverified:
        warn(f"UNVERIFIED: {' '.join(f'{k}={v}' for k, v in cfg['key'].items())} has no passing GPU run on the current sources")
    if as_json:
        from workbench.terminal import print_json

        print_json(result.manifest)
        return
    m = result.manifest
    console.print(
        f"[bold green]EXPORTED[/] {escape(m['namespace'])}::{escape(m['op'])}  {len(m['configs'])} configuration(s) "
        f"for {escape(m['arch'])} -> {escape(str(result.out))}"
    )
    for cfg in m["configs"]:
        runs = ", ".join(cfg["verified_by"][:3]) + (" …" if len(cfg["verified_by"]) > 3 else "")
        console.print(f"  {escape(' '.join(f'{k}={v}' for k, v in cfg['key'].items()))}  [dim]{escape(runs or 'unverified')}[/]")
    console.print(f"[dim]pip install {escape(str(result.out))}   then: import {escape(m['package'])}[/]")
