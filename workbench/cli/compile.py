"""`wb compile`: compile one stage, keep its artifacts in runs/<id>/, print its resources."""

from __future__ import annotations

from typing import List, Optional

import typer

from workbench.cli import app, state

KEEPABLE = ("ptx", "sass", "cubin")


@app.command("compile")
def compile_cmd(
    stage: str = typer.Argument(..., help="Stage: stage-c, c, KERNEL/stage-c or its name."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Compile for this arch (default: kernel.yaml's)."),
    keep: Optional[str] = typer.Option(None, "--keep", help="Artifacts to keep in the run folder: ptx,sass,cubin (comma-separated)."),
    n: Optional[int] = typer.Option(None, "--n", help="The stage's size parameter (kernel.yaml `size:`, default n), shorthand for -p <size>=... (the stage's allowed values apply)."),
    d: Optional[int] = typer.Option(None, "--d", help="Parameter d, shorthand for -p d=...."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Other parameter, key=value (repeatable)."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", "-V", help="Compile-time variant key=value (repeatable)."),
    in_process: bool = typer.Option(False, "--in-process", help="Compile in this process instead of a worker (debugging)."),
    as_json: bool = typer.Option(False, "--json", help="Print the compile record as JSON."),
) -> None:
    """Compile STAGE for ARCH (no GPU needed), write its artifacts into runs/<id>/ and print
    registers, spills, shared memory against the arch's capacity, barriers and the tensor-core
    and TMA instructions in its SASS. Exit 1 when it does not compile or fails a check."""
    from workbench.cli.run import parse_pairs, stage_overrides
    from workbench.run.compile_record import compile_stage_record
    from workbench.errors import UserError
    from workbench.arches import check_arch
    from workbench.kernels.registry import load_kernels, resolve_stage

    if keep is not None and not all(k.strip() for k in keep.split(",")):  # '' or ptx,,sass: a slip, not "keep nothing"
        raise UserError(f"--keep {keep!r}: name what to keep, comma-separated: {', '.join(KEEPABLE)}")
    wanted = tuple(dict.fromkeys(k.strip() for k in keep.split(","))) if keep is not None else ()
    unknown = [k for k in wanted if k not in KEEPABLE]
    if unknown:
        raise UserError(f"--keep {unknown[0]!r}: choose from {', '.join(KEEPABLE)}")
    check_arch(arch)
    ws = state.workspace()
    spec = resolve_stage(ws, stage, load_kernels(ws))
    params = spec.resolve_params(stage_overrides(n, d, None, param, spec.size_param))
    variants = spec.resolve_variants(parse_pairs(variant, "--variant"))
    ws.ensure_state_dir()
    from workbench.cli.shapes import compile_progress

    with compile_progress(enabled=not as_json) as on_event:
        record = compile_stage_record(ws, spec, params, variants, arch or spec.arch, wanted, in_process=in_process, on_event=on_event)
    if as_json:
        from workbench.terminal import print_json

        print_json({k: v for k, v in record.items() if not k.startswith("_")})
    else:
        render_compile(ws, record)
    raise typer.Exit(0 if record["verdict"] == "COMPILED" else 1)


def render_compile(ws, record: dict) -> None:
    from workbench.terminal import console, escape, table

    res = record.get("resources") or {}
    console.print(
        f"[bold]{escape(record['stage'])}[/] {escape(record['arch'])}  {escape(' '.join(f'{k}={v}' for k, v in record['params'].items()))}"
        f"  [dim]{escape(' '.join(f'{k}={v}' for k, v in record['variants'].items()))}[/]"
    )
    style = {"COMPILED": "bold green", "CHECK_FAILED": "bold red", "COMPILE_ERROR": "bold magenta"}.get(record["verdict"], "bold")
    console.print(f"[{style}]{record['verdict']}[/]  [dim]run {record['id']} · compile {record['timing']['compile_s']:.2f} s[/]")
    if record.get("error"):
        console.print(f"[red]{escape(record['error'].get('message') or '')}[/]")
    capacity = res.get("smem_capacity_bytes")
    rows = []
    for k in res.get("kernels", []):
        smem = k.get("dynamic_smem_bytes") or 0
        rows.append(
            [
                escape(_short(k.get("name") or "")),
                str(k.get("registers") if k.get("registers") is not None else "-"),
                f"{k.get('spill_store_bytes', '-')} / {k.get('spill_load_bytes', '-')}",
                f"{smem} ({smem / 1024:.1f} KiB)" + (f" of {capacity / 1024:.0f} KiB = {100 * smem / capacity:.0f}%" if capacity else ""),
                str(k.get("static_smem_bytes", "-")),
                str(k.get("barriers") if k.get("barriers") is not None else "-"),
                str(k.get("stack_bytes") if k.get("stack_bytes") is not None else "-"),
            ]
        )
    if rows:
        console.print(
            table(None, ["kernel", "registers", "spill st/ld B", "dynamic smem B", "static smem B", "barriers", "stack B"], rows)
        )
    for c in res.get("checks", []):
        color = "red" if c["level"] == "error" else "yellow"
        console.print(f"[{color}]{c['level']}[/] {escape(c['message'])}")
    sass = record.get("sass") or {}
    if sass.get("instructions"):
        console.print("SASS: " + ", ".join(f"{escape(k)} ×{v}" for k, v in sass["instructions"].items()))
    elif sass.get("instructions") == {}:
        console.print("SASS: no tensor-core or TMA instructions")
    elif sass.get("note"):
        console.print(f"[dim]SASS: {escape(sass['note'])}[/]")
    for name, path in (record.get("artifacts") or {}).items():
        console.print(f"[dim]{escape(name)}: {escape(path)}[/]")


def _short(name: str) -> str:
    """A kernel's name without the DSL's generated tail (two builds of one stage, as stage D's
    long kernel, differ in the part a middle cut left out)."""
    from workbench.compile.resources import short_kernel_name

    return short_kernel_name(name) or name[:60]
