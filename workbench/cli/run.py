"""`wb run`: compile a stage, run its fixtures in an isolated worker, record the run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from workbench.cli import app, host_name, state
from workbench.errors import UserError
from workbench.kernels.fixtures import MAX_SEED, MAX_SEEDS

EXIT = {"PASS": 0, "FAIL": 1, "COMPILE_ERROR": 1, "CRASH": 1, "HANG": 1, "LOST": 1, "INTERRUPTED": 130}  # others (RACE, MEMCHECK, ...): 1


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"{what} {item!r} must look like key=value")
        if key.strip() in out:  # the last one silently winning would run what was not meant
            raise UserError(f"{what} {key.strip()} is given twice ({out[key.strip()]} and {value.strip()}): give it once")
        out[key.strip()] = value.strip()
    return out


def stage_overrides(n, d, dtype, params: list[str] | None, size: str = "n") -> dict[str, str]:
    """-p pairs plus the shorthands; --n sets the stage's size parameter (kernel.yaml `size:`)."""
    overrides = parse_pairs(params, "--param")
    for key, flag, value in ((size, "n", n), ("d", "d", d), ("dtype", "dtype", dtype)):
        if value is not None:
            if key in overrides:  # as `wb sweep`: which one was meant is the user's to say
                raise UserError(f"parameter {key} is given twice (--{flag} and -p {key}=...)")
            overrides[key] = str(value)
    return overrides


def resolve_request(ws, stage, n, d, dtype, param, variant, timeout, kernels=None):
    """STAGE and its parameters and variants as the user gave them, checked (exit 2 on a
    mistake): (spec, params, variants)."""
    from workbench.kernels.registry import load_kernels, resolve_stage

    spec = resolve_stage(ws, stage, kernels if kernels is not None else load_kernels(ws))
    params = spec.resolve_params(stage_overrides(n, d, dtype, param, spec.size_param))
    variants = spec.resolve_variants(parse_pairs(variant, "--variant"))
    check_timeout(timeout)
    return spec, params, variants


def check_timeout(timeout: float | None) -> None:
    """--timeout: a positive, finite number of seconds (nan and inf refused), or not given."""
    if timeout is not None and not 0 < timeout < float("inf"):
        raise UserError("--timeout must be a positive, finite number of seconds")


def check_fixture_names(ws, names) -> None:
    """Each -f name is a fixture of the workspace (a misspelt one is one line here, before a
    GPU check or a worker, not an ERROR in every case), given once (twice ran it twice, as
    two rows of one name, where a repeated -p or -V is refused)."""
    repeated = sorted({n for n in names or [] if list(names).count(n) > 1})
    if repeated:
        raise UserError(f"--fixture {repeated[0]} is given twice: list each fixture once")
    if names:
        from workbench.kernels.fixtures import load_fixtures

        registry = load_fixtures(ws.fixtures_dir)
        for name in names:
            registry.variants(name)


def require_gpu_here(spec, command: str | None = None) -> None:
    """No GPU driver here and the stage needs one: one line (exit 2) before any worker starts.
    ``command`` (e.g. "wb bench") needs one whatever the stage, and is named in the line."""
    from workbench import gpu
    from workbench.errors import NoGpuError
    from workbench.kernels import stage_source

    if not gpu.reachable() and (command is not None or stage_source.needs_gpu(spec.module_path)):
        raise NoGpuError(f"{command or spec.id} needs a CUDA GPU and this machine has none (no NVIDIA device, or CUDA_VISIBLE_DEVICES hides them)")


def show_record(record: dict, as_json: bool) -> None:
    """The record as JSON, or rendered; then the exit status of its verdict."""
    if as_json:
        from workbench import terminal

        terminal.print_json({k: v for k, v in record.items() if not k.startswith("_")})
    else:
        from workbench.cli.render import render_run

        render_run(record)
    raise typer.Exit(EXIT.get(record["verdict"], 1))


@app.command()
def run(
    stage: str = typer.Argument(..., help="Stage: stage-c, c, KERNEL/stage-c or its name."),
    n: Optional[int] = typer.Option(None, "--n", help="The stage's size parameter (kernel.yaml `size:`, default n), shorthand for -p <size>=... (the stage's allowed values apply)."),
    d: Optional[int] = typer.Option(None, "--d", help="Parameter d, shorthand for -p d=...."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Element type: bf16 or fp16."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Other parameter, key=value (repeatable)."),
    fixture: Optional[List[str]] = typer.Option(None, "--fixture", "-f", help="Fixture to run (repeatable; default: the stage's list)."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", "-V", help="Compile-time variant key=value (repeatable)."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Base seed of the fixtures."),
    seeds: Optional[int] = typer.Option(None, "--seeds", min=1, max=MAX_SEEDS, help="Seeds per fixture (default: each fixture's own)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds before the run is killed as HANG (default: the stage's)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Compile for this arch (default: kernel.yaml's)."),
    fresh: bool = typer.Option(False, "--fresh", help="Use a new worker process instead of the warm one."),
    host: Optional[str] = typer.Option(None, "--host", callback=host_name, help="Run on a configured remote host (see `wb hosts`)."),
    exported: Optional[Path] = typer.Option(
        None, "--exported", help="Also run the fixtures through the op of this `wb export` folder: its outputs are judged and must equal the in-tree kernel's bit for bit (a new worker).",
    ),
    sanitize: Optional[str] = typer.Option(
        None, "--sanitize", metavar="TOOL",
        help="Run under NVIDIA compute-sanitizer: memcheck, racecheck, synccheck or initcheck (a new worker, line info on, "
        "the stage's timeout x10); findings in the stage's kernels become the verdict (MEMCHECK, RACE, SYNCCHECK, INITCHECK).",
    ),
    trace: bool = typer.Option(
        False, "--trace",
        help="Also launch the stage's traced build once (its trace hook: clock stamps per CTA, warpgroup and tile): "
        "runs/<id>/trace.json opens in ui.perfetto.dev; CTA skew, wave tail and phase medians in the report.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
) -> None:
    """Compile STAGE, run its fixtures against the reference, record and explain the run."""
    from workbench.arches import check_arch

    ws = state.workspace()
    check_arch(arch)
    spec, params, variants = resolve_request(ws, stage, n, d, dtype, param, variant, timeout)
    if not host:  # (a host checks its own workspace's fixtures, and names itself)
        check_fixture_names(ws, fixture)
    instrument = None
    if trace and host:
        raise UserError("--trace runs on this machine only (run wb on the host itself)")
    if sanitize is not None:
        from workbench.run import sanitize as sanitizer

        sanitizer.check_tool(sanitize)
        if host:
            raise UserError("--sanitize runs on this machine only (run wb on the host itself)")
        instrument = sanitizer.instrument(sanitize)
    export_job = None
    if exported is not None:
        from workbench.export.exported import read_manifest

        if host:
            raise UserError("--exported runs on this machine only (copy the export to the host and run wb there)")
        export_job = {"dir": str(exported.resolve()), "package": read_manifest(exported, spec)["package"]}
        fresh = True
    if host:
        from workbench.remote.client import run_remote

        from workbench.cli.render import progress

        with progress(f"{spec.id} on {host}", enabled=not as_json) as on_event:
            record = run_remote(ws, host, spec, params, variants, fixture, seed, seeds, timeout, arch, show=not as_json, on_event=on_event)
    else:
        from workbench.run.procs import orphan_warning

        require_gpu_here(spec)
        ws.ensure_state_dir()

        if (orphan := orphan_warning(ws)) is not None:
            from workbench import terminal

            terminal.warn(orphan)
        warm = not fresh and os.environ.get("WB_WORKER", "warm") != "fresh"
        record = _run_local(
            ws, spec, params, variants, fixture, seed, seeds, timeout, arch, warm, show=not as_json, exported=export_job, instrument=instrument, trace=trace,
        )
    show_record(record, as_json)


def _run_local(ws, spec, params, variants, fixtures, seed, seeds, timeout, arch, warm, show, exported=None, instrument=None, trace=False,
               profile_peer=None):
    from workbench.cli.render import progress
    from workbench.run.execute import run_stage

    with progress(spec.id, enabled=show) as on_event:
        return run_stage(
            ws, spec, params, variants, fixtures=list(fixtures or []), seed=seed, seeds=seeds,
            timeout=timeout, warm=warm, arch=arch, on_event=on_event, exported=exported, instrument=instrument, trace=trace, profile_peer=profile_peer,
        )


@app.command()
def profile(
    stage: str = typer.Argument(..., help="Stage: stage-d, d, KERNEL/stage-d or its name."),
    n: Optional[int] = typer.Option(None, "--n", help="The stage's size parameter, shorthand for -p <size>=...."),
    d: Optional[int] = typer.Option(None, "--d", help="Parameter d, shorthand for -p d=...."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Element type: bf16 or fp16."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Other parameter, key=value (repeatable)."),
    fixture: Optional[str] = typer.Option(None, "--fixture", "-f", help="The fixture whose launch is profiled (default: the stage's first)."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", "-V", help="Compile-time variant key=value (repeatable)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds before the run is killed as HANG (default: the stage's x10)."),
    peers: Optional[str] = typer.Option(
        None, "--peers", help="Also profile these peers (comma-separated, the kernel's peers.py) on the same inputs, each in a run "
        "of its own before the stage's; they stand beside the stage on its roofline.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
) -> None:
    """Run STAGE's first launch under Nsight Compute (ncu, the card's own clocks): throughput,
    occupancy, tensor-pipe use, bank conflicts, registers, top stall reasons, in the run record."""
    from workbench.arches import check_arch
    from workbench.kernels.registry import load_kernels
    from workbench.run import profile as profiler
    from workbench.run.bench import check_peers

    ws = state.workspace()
    check_arch(None)
    kernels = load_kernels(ws)
    spec, params, variants = resolve_request(ws, stage, n, d, dtype, param, variant, timeout, kernels)
    check_fixture_names(ws, [fixture] if fixture is not None else [])
    peer_list = list(dict.fromkeys(p.strip() for p in (peers or "").split(",") if p.strip()))  # (fa4,fa4: once)
    check_peers(kernels[spec.kernel], peer_list)
    require_gpu_here(spec)
    profiler.executable()  # refused in one line before any run
    ws.ensure_state_dir()
    fixtures = [fixture] if fixture else spec.fixtures[:1]
    points = []
    for peer in peer_list:
        instrument = profiler.instrument(profiler.peer_kernel_filter(spec.module_path.parent, peer), peer=peer)
        done = _run_local(ws, spec, params, variants, fixtures, 0, 1, timeout, None, False, show=not as_json, instrument=instrument, profile_peer=peer)
        points.append(profiler.peer_point(done))
    record = _run_local(
        ws, spec, params, variants, fixtures, 0, 1, timeout, None, False, show=not as_json,
        instrument=profiler.instrument(peer_points=points),
    )
    found = record.get("profile") or {}
    if record["verdict"] not in ("CRASH", "HANG", "INTERRUPTED") and not found.get("counters"):
        # ncu ran but measured nothing: no permission to read the counters, a device it does
        # not support, or no stage kernel was launched; the run is recorded, the answer is no
        notes = found.get("notes") or []
        why = (next((n for n in notes if "ERROR" in n), None)  # ncu's own error line
               or next((n for n in notes if not n.startswith("==")), None)  # wb's: a log it could not read
               or "no stage kernel (kernel_cutlass_*) was launched")
        import re

        why = re.sub(r"^==[A-Z]+==\s*", "", why)
        raise UserError(f"wb profile: ncu measured nothing ({why}); run {record['id']} has its log")
    show_record(record, as_json)
