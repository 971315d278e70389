"""`wb bench`: a stage's speed beside its peers, measured on one card in one process."""

from __future__ import annotations

from typing import List, Optional

import typer

from workbench.cli import app, host_name, state
from workbench.errors import UserError

#: --reps: more than this many timed repeats per kernel is a typo, not a measurement
MAX_REPS = 10000


def bench_target(ws, text: str | None):
    """(stage, kernel) of `wb bench [STAGE]`: nothing -> the default kernel's bench stage; a
    kernel's name -> its bench stage (kernel.yaml `bench.stage`); else a stage as `wb run` takes it."""
    from workbench.kernels.registry import default_kernel, load_kernels, resolve_stage

    kernels = load_kernels(ws)
    if text is None or text.strip() in kernels:
        kernel = kernels[text.strip()] if text is not None else default_kernel(ws, kernels)
        if kernel is None:
            raise UserError(f"several kernels ({', '.join(kernels) or 'none'}): write `wb bench KERNEL` or `wb bench KERNEL/STAGE`")
        if kernel.bench.stage is None:
            raise UserError(f"kernel {kernel.name} names no bench.stage in its kernel.yaml: write `wb bench {kernel.name}/STAGE`")
        return kernel.stage(kernel.bench.stage), kernel
    spec = resolve_stage(ws, text, kernels)
    return spec, kernels[spec.kernel]


@app.command()
def bench(
    stage: Optional[str] = typer.Argument(None, help="Stage, or a kernel (its kernel.yaml bench.stage; default: the default kernel's)."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Parameter, key=v1,v2 (repeatable; as `wb sweep`): crossed with the kernel's bench cases."),
    peers: Optional[str] = typer.Option(None, "--peers", help="Peers timed on the same inputs, comma-separated ('' for none; default: kernel.yaml bench.peers);"
                                        " stages/<kernel>/peers.py lists them (PEERS), and an unknown name prints them."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", "-V", help="Compile-time variant key=value."),
    reps: int = typer.Option(30, "--reps", help="Timed repeats per kernel (3 to 10000)."),
    graph: str = typer.Option("auto", "--graph", help="CUDA-graph replay: auto (short kernels), on, off."),
    processes: int = typer.Option(
        1, "--processes", help="Time in N new worker processes, one after another, and take the median of their medians "
        "(for a case whose speed moves with where a process's tensors land, e.g. a mixed varlen batch; 1 to 50).",
    ),
    interleave: bool = typer.Option(
        True, "--interleave/--no-interleave", help="Time wb and its peers repeat by repeat in turn (A B A B ...), or one "
        "after the other: timed after wb, a peer met the card at the power cap wb's repeats had reached (the MHz column "
        "shows each timing's clock).",
    ),
    sweep: bool = typer.Option(False, "--sweep", help="Time the kernel's bench.sweep cases and write its perf doc (bench.perf_doc)."),
    from_run: Optional[str] = typer.Option(
        None, "--from", help="With --sweep: write the perf doc from this recorded sweep (a run id or selector, e.g. one "
        "`wb import` brought from a GPU machine) instead of timing.",
    ),
    timeout: float = typer.Option(900.0, "--timeout", help="Seconds before the bench is killed as HANG."),
    host: Optional[str] = typer.Option(None, "--host", callback=host_name, help="Run on a configured remote host (see `wb hosts`); the record comes back here."),
    as_json: bool = typer.Option(False, "--json", help="Print the bench record as JSON."),
) -> None:
    """Time STAGE with CUDA events (L2 flushed, median and spread) after checking it on the same inputs,
    beside the kernel's peers; record it, update MEMORY.md's speed block."""
    from workbench.run import bench as lib, bench_report as report
    from workbench.cli.run import check_timeout, parse_pairs, require_gpu_here
    from workbench.remote.sweep import parse_axes

    ws = state.workspace()
    spec, kernel = bench_target(ws, stage)
    if from_run is not None:
        _perf_doc_from(ws, kernel, spec, from_run, sweep, as_json, timing_options={
            "-p": param, "-V": variant, "--peers": peers is not None, "--reps": reps != 30, "--graph": graph != "auto",
            "--processes": processes != 1, "--host": host, "--timeout": timeout != 900.0, "--no-interleave": not interleave,
        })
        return
    variants = spec.resolve_variants(parse_pairs(variant, "--variant"))
    if graph not in ("auto", "on", "off"):
        raise UserError("--graph must be auto, on or off")
    if not 3 <= reps <= MAX_REPS:
        raise UserError(f"--reps must be between 3 and {MAX_REPS}")
    if not 1 <= processes <= 50:
        raise UserError("--processes must be between 1 and 50")
    check_timeout(timeout)
    cases = lib.plan_cases(spec, kernel, parse_axes(param, "--param"), sweep)
    peer_list = list(kernel.bench.peers) if peers is None else list(dict.fromkeys(p.strip() for p in peers.split(",") if p.strip()))
    lib.check_peers(kernel, peer_list)
    lib.resolve_cases(spec, kernel, cases)  # every case checked here, before a worker starts
    from workbench.cli.render import progress

    ws.ensure_state_dir()
    if not host:
        from workbench.records.store import ensure_runs_dir

        ensure_runs_dir(ws.runs_dir)  # what is in the way of the record, said even where no GPU is
        require_gpu_here(spec, "wb bench")  # (the worker checks again: this sees only whether a driver is present)
    if host:  # the same command there; its record comes back into runs/ (workbench.remote.client)
        from workbench.remote.client import run_and_import

        record = run_and_import(ws, host, state.argv, spec=spec, publish=report.record_speed, show=not as_json, deadline_s=timeout * processes + 300)
    else:
        with progress(f"bench {spec.id}", enabled=not as_json) as on_event:
            record = lib.run_bench(ws, spec, kernel, cases, variants, peer_list, reps=reps, graph=graph, timeout=timeout,
                                   on_event=on_event, processes=processes, sweep=sweep, interleave=interleave)
    if sweep and record["verdict"] in ("PASS", "FAIL") and record.get("bench"):
        record["perf_md"] = str(report.write_perf_doc(ws, kernel, spec, record))
    if as_json:
        from workbench.terminal import print_json

        print_json({k: v for k, v in record.items() if not k.startswith("_")})
    else:
        render_bench(record)
    raise typer.Exit({"PASS": 0, "INTERRUPTED": 130}.get(record["verdict"], 1))


def _perf_doc_from(ws, kernel, spec, selector: str, sweep: bool, as_json: bool, timing_options: dict) -> None:
    """`wb bench --sweep --from RUN`: the perf doc written from a recorded sweep, nothing timed."""
    from workbench.run import bench_report as report
    from workbench.terminal import console, escape, print_json

    if not sweep:
        raise UserError("--from writes the perf doc of a recorded `wb bench --sweep` run: give --sweep too")
    given = [name for name, value in timing_options.items() if value]
    if given:
        raise UserError(f"--from times nothing, so {', '.join(given)} do not apply: leave them out")
    record = report.recorded_sweep(ws, spec, selector, kernel)
    perf = report.write_perf_doc(ws, kernel, spec, record)
    if as_json:
        print_json({"run": record.get("id"), "perf_md": str(perf)})
    else:
        console.print(f"wrote {escape(str(perf.relative_to(ws.root)))} from run {escape(str(record.get('id')))}"
                      f" ({len(record.get('bench') or [])} cases, {escape(str((record.get('provenance') or {}).get('gpu')))})")


def render_bench(record: dict) -> None:
    from workbench.records.provenance import card_label
    from workbench.run import bench_report as report
    from workbench.terminal import console, escape, fmt, table, verdict

    peak = record.get("peak") or {}
    console.print(
        f"{verdict(record['verdict'])} bench {escape(record['stage'])} on {escape(card_label(record['provenance']))}"
        f" · card peak {fmt(peak.get('tflops'), '.0f')} TFLOP/s (bf16 matmul{', cached' if peak.get('cached') else ''}) · run {record['id']}"
    )
    peers = sorted({p for c in record.get("bench", []) for p in (c.get("peers") or {})})
    clocked = any(report.timed_clock(c) for c in record.get("bench", []))
    rows = []
    for c in record.get("bench", []):
        ratios = report.peer_ratios(c)
        cells = []
        for p in peers:
            peer = (c.get("peers") or {}).get(p, {})
            cells.append(f"{peer['tflops']:.0f} (×{ratios[p]:.2f})" if p in ratios else escape(peer.get("skipped", "-"))[:30])
        timing = f"{c['median_ms']:.3f} ({c['p10_ms']:.3f}–{c['p90_ms']:.3f})" if c.get("median_ms") else "-"
        mhz = [fmt((report.timed_clock(c) or (None,))[0], ".0f")] if clocked else []
        rows.append(
            [escape(c["case"]), verdict(c.get("verdict")), fmt(c.get("tflops"), ".0f"), timing,
             fmt(100 * c["fraction_of_peak"], ".0f") + "%" if c.get("fraction_of_peak") else "-", *mhz, *cells]
        )
    console.print(table(None, ["case", "check", "TFLOP/s", "ms median (p10–p90)", "of peak", *(["MHz"] if clocked else []), *peers], rows))
    for line in report.clock_notes(record):
        console.print(f"[dim]clock: {escape(line)}[/]")
    for note in record.get("notes", []):
        console.print(f"[dim]note: {escape(note)}[/]")
    if record.get("error"):
        console.print(f"[red]{escape(str(record['error'].get('message') or ''))}[/]")
    if record.get("_chart"):
        console.print(f"[dim]chart: {escape(record['_chart'])}[/]")
    if record.get("perf_md"):
        console.print(f"wrote {record['perf_md']}")
