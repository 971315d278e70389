"""`wb bench`: a stage's speed beside its peers, measured on one card in one process."""

from __future__ import annotations

from typing import List, Optional

import typer

from workbench.cli import app, state
from workbench.errors import UserError


def _ints(text: str | None, what: str) -> list[int]:
    if not text:
        return []
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{what} takes comma-separated positive integers, got {text!r}")
    return values


def _at_least_one(value: int | None, what: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{what} must be at least 1, got {value}")


@app.command()
def bench(
    stage: str = typer.Argument("d", help="Stage to time (default: stage-d)."),
    s: Optional[str] = typer.Option(None, "--s", help="Sequence lengths, e.g. 1024,4096 (default 4096)."),
    d: Optional[str] = typer.Option(None, "--d", help="Head dims, e.g. 64,128 (default 128)."),
    causal: bool = typer.Option(False, "--causal", help="Causal masking."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 or fp16 (comma-separated for both)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Batch (default 16384/s)."),
    heads: Optional[int] = typer.Option(None, "--heads", help="Heads (default 2048/d)."),
    peers: str = typer.Option("sdpa-flash,sdpa-cudnn,fa4", "--peers", help="Peers on the same inputs: sdpa-flash, sdpa-cudnn, sdpa-efficient, sdpa-math, fa4, cutlass-example"
                             " (CUTLASS's CuTe DSL Hopper FMHA example; set WB_CUTLASS_EXAMPLES to a checkout's"
                             " examples/python/CuTeDSL) ('' for none)."),
    variant: Optional[List[str]] = typer.Option(None, "--variant", "-V", help="Compile-time variant key=value."),
    reps: int = typer.Option(30, "--reps", help="Timed repeats per kernel."),
    graph: str = typer.Option("auto", "--graph", help="CUDA-graph replay: auto (short kernels), on, off."),
    sweep: bool = typer.Option(False, "--sweep", help="Time DESIGN.md's table of shapes (both masks) and write docs/perf.md."),
    timeout: float = typer.Option(900.0, "--timeout", help="Seconds before the bench is killed as HANG."),
    host: Optional[str] = typer.Option(None, "--host", help="Run on a configured remote host (see `wb hosts`); the record comes back here."),
    as_json: bool = typer.Option(False, "--json", help="Print the bench record as JSON."),
) -> None:
    """Time STAGE with CUDA events (L2 flushed, median and spread) after checking it on the same inputs,
    beside torch SDPA and FlashAttention-4; record it, update MEMORY.md's speed block."""
    from workbench.run import bench as lib
    from workbench.cli.run import parse_pairs
    from workbench.kernels.registry import load_kernels, resolve_stage

    ws = state.workspace()
    spec = resolve_stage(ws, stage, load_kernels(ws))
    variants = spec.resolve_variants(parse_pairs(variant, "--variant"))
    if graph not in ("auto", "on", "off"):
        raise UserError("--graph must be auto, on or off")
    if reps < 3:
        raise UserError("--reps must be at least 3")
    _at_least_one(batch, "--batch")
    _at_least_one(heads, "--heads")
    if not 0 < timeout < float("inf"):
        raise UserError("--timeout must be a positive number of seconds")
    dtypes = [x.strip() for x in dtype.split(",") if x.strip()]
    if not dtypes:
        raise UserError(f"--dtype names no element type, got {dtype!r}: write bf16, fp16 or bf16,fp16")
    if sweep:
        cases = [c for dt in dtypes for c in lib.sweep_cases(dt)]
    else:
        cases = [
            lib.bench_params(si, di, causal, dt, batch, heads)
            for dt in dtypes
            for di in (_ints(d, "--d") or [128])
            for si in (_ints(s, "--s") or [4096])
        ]
    cases = [{k: v for k, v in c.items() if k in spec.params} for c in cases]
    peer_list = [p.strip() for p in peers.split(",") if p.strip()]
    known = ("sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math", "fa4", "cutlass-example")
    unknown = [p for p in peer_list if p not in known]
    if unknown:
        raise UserError(f"unknown peer {unknown[0]!r}: choose from {', '.join(known)}")
    from workbench.cli.render import progress

    ws.ensure_state_dir()
    if host:  # the same command there; its record comes back into runs/ (workbench.remote.client)
        from workbench.remote.client import run_and_import

        record = run_and_import(ws, host, state.argv, spec=spec, publish=lib.record_speed, show=not as_json, deadline_s=timeout + 300)
    else:
        with progress(f"bench {spec.id}", enabled=not as_json) as on_event:
            record = lib.run_bench(ws, spec, cases, variants, peer_list, reps=reps, graph=graph, timeout=timeout, on_event=on_event)
    if sweep and record["verdict"] in ("PASS", "FAIL") and record.get("bench"):
        from workbench.records.store import atomic_write_text

        perf = ws.root / "docs" / "perf.md"
        atomic_write_text(perf, lib.perf_markdown(record))
        record["perf_md"] = str(perf)
    if as_json:
        from workbench.terminal import print_json

        print_json({k: v for k, v in record.items() if not k.startswith("_")})
    else:
        render_bench(record)
    raise typer.Exit(0 if record["verdict"] == "PASS" else 1)


def render_bench(record: dict) -> None:
    from workbench.run import bench as lib
    from workbench.terminal import console, escape, fmt, table, verdict

    peak = record.get("peak") or {}
    console.print(
        f"{verdict(record['verdict'])} bench {escape(record['stage'])} on {escape(record['provenance'].get('gpu') or '?')}"
        f" · card peak {fmt(peak.get('tflops'), '.0f')} TFLOP/s (bf16 matmul{', cached' if peak.get('cached') else ''}) · run {record['id']}"
    )
    peers = sorted({p for c in record.get("bench", []) for p in (c.get("peers") or {})})
    rows = []
    for c in record.get("bench", []):
        ratios = lib.peer_ratios(c)
        cells = []
        for p in peers:
            peer = (c.get("peers") or {}).get(p, {})
            cells.append(f"{peer['tflops']:.0f} (×{ratios[p]:.2f})" if p in ratios else escape(peer.get("skipped", "-"))[:30])
        timing = f"{c['median_ms']:.3f} ({c['p10_ms']:.3f}–{c['p90_ms']:.3f})" if c.get("median_ms") else "-"
        rows.append(
            [escape(c["case"]), verdict(c.get("verdict")), fmt(c.get("tflops"), ".0f"), timing,
             fmt(100 * c["fraction_of_peak"], ".0f") + "%" if c.get("fraction_of_peak") else "-", *cells]
        )
    console.print(table(None, ["case", "check", "TFLOP/s", "ms median (p10–p90)", "of peak", *peers], rows))
    for note in record.get("notes", []):
        console.print(f"[dim]note: {escape(note)}[/]")
    if record.get("error"):
        console.print(f"[red]{escape(record['error'].get('message', ''))}[/]")
    if record.get("perf_md"):
        console.print(f"wrote {record['perf_md']}")
