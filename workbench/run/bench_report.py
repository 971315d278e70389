"""What a `wb bench` record says, read on the host: wb's ratio to each peer, the clock notes
(kernels timed at clocks apart or under a limit), MEMORY.md's speed block and the speed chart
beside the record, and the kernel's perf doc (`wb bench --sweep`, or `--from` a recorded sweep).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workbench.errors import UserError
from workbench.kernels.registry import at_default, load_kernel
from workbench.records import memory
from workbench.records.speed import measured, speed_edit
from workbench.records.store import select


def peer_ratios(case: dict[str, Any]) -> dict[str, float]:
    """wb's TFLOP/s over each timed peer's (above 1: wb is faster)."""
    out = {}
    for name, peer in (case.get("peers") or {}).items():
        if peer.get("tflops") and case.get("tflops"):
            out[name] = case["tflops"] / peer["tflops"]
    return out


CLOCK_APART = 0.01  # a peer timed at an SM clock this far (relative) from wb's is named


def timed_clock(entry: Any) -> tuple[float, list[str]] | None:
    """(median MHz, limits) of a timing's ``clock``; None where it has none (or a record from
    elsewhere holds something else there)."""
    clock = entry.get("clock") if isinstance(entry, dict) else None
    mhz = clock.get("sm_mhz_median") if isinstance(clock, dict) else None
    if not isinstance(mhz, (int, float)) or isinstance(mhz, bool) or not mhz > 0:
        return None
    limits = clock.get("limits")
    return float(mhz), [str(x) for x in limits] if isinstance(limits, list) else []


def _case_clocks(record: dict[str, Any]):
    """(case name, wb's (MHz, limits), the peers' {name: (MHz, limits)}, peers 1 % apart, limits)
    of each case that has wb's clock."""
    for case in record.get("bench") or []:
        ours = timed_clock(case)
        if ours is None:
            continue
        peers = case.get("peers") if isinstance(case.get("peers"), dict) else {}
        theirs = {str(n): c for n, c in ((n, timed_clock(p)) for n, p in peers.items()) if c is not None}
        apart = [n for n, c in theirs.items() if abs(c[0] - ours[0]) >= CLOCK_APART * ours[0]]
        limits = sorted({*ours[1], *(x for c in theirs.values() for x in c[1])})
        yield str(case.get("case")), ours, theirs, apart, limits


def _each_clock(name: str, ours: tuple[float, list[str]], theirs: dict[str, tuple[float, list[str]]]) -> str:
    each = ", ".join([f"wb {ours[0]:.0f}"] + [f"{n} {c[0]:.0f}" for n, c in theirs.items()])
    return f"{name}: SM clock {each} MHz (median while timed)"


def clock_notes(record: dict[str, Any]) -> list[str]:
    """One line per case whose kernels were timed at different SM clocks (1 % or more apart)
    or under a clock limit (the power cap ...): a ratio between them is partly the card's."""
    lines = []
    for name, ours, theirs, apart, limits in _case_clocks(record):
        limited = f"; limited by {', '.join(limits)}" if limits else ""
        if apart:
            lines.append(f"{_each_clock(name, ours, theirs)}{limited}")
        elif limits:
            lines.append(f"{name}: SM clock {ours[0]:.0f} MHz for {'each kernel' if theirs else 'wb'} (median while timed){limited}")
    return lines


def clock_summary(record: dict[str, Any]) -> list[str]:
    """The perf doc's clock notes: each case whose kernels ran at clocks apart, then one line
    for the cases timed under a limit."""
    cases = list(_case_clocks(record))
    lines = [_each_clock(name, ours, theirs) for name, ours, theirs, apart, _ in cases if apart]
    limited = [(ours[0], limits) for _, ours, _, _, limits in cases if limits]
    if limited:
        names = sorted({x for _, limits in limited for x in limits})
        low, high = min(m for m, _ in limited), max(m for m, _ in limited)
        lines.append(f"The card's {', '.join(names)} held its SM clock down while {len(limited)} of {len(cases)} cases were timed "
                     f"(their medians {low:.0f}-{high:.0f} MHz; each case's clock is in its record)")
    return lines


def record_speed(ws, record: dict[str, Any]) -> None:
    """Fold a bench record into MEMORY.md's `speed` block (latest per case and card); the
    record is already in runs/, so a MEMORY.md wb cannot update is a warning. With
    matplotlib, the speed chart goes beside the record (runs/<id>/speed.png)."""
    if not measured(record):
        return
    memory.update_blocks_or_warn(ws, {"speed": speed_edit([record], ws)})
    if record.get("_dir"):
        from workbench.records.charts import draw_speed_chart

        try:
            chart = draw_speed_chart(Path(record["_dir"]) / "speed.png", record, _yardsticks(ws, record))
        except Exception as exc:  # a picture must never lose a measurement
            record.setdefault("notes", []).append(f"speed chart failed: {type(exc).__name__}: {exc}")
            chart = None
        if chart is not None:
            record["_chart"] = str(chart)


def _yardsticks(ws, record: dict[str, Any]) -> tuple[str, ...]:
    """The record's kernel's bench.yardsticks (left out of "the best peer", as in the perf
    doc); none when its kernel.yaml cannot be read (a record imported from elsewhere)."""
    try:
        return tuple(load_kernel(ws.stages_dir / str(record.get("kernel")) / "kernel.yaml").bench.yardsticks)
    except (OSError, UserError, ValueError):
        return ()


def perf_doc_path(kernel, spec) -> str:
    """Where `wb bench --sweep` writes: the kernel's perf doc (bench.perf_doc) for its bench
    stage; for another stage the same name with -stage-<letter> (docs/perf-x.md ->
    docs/perf-x-stage-c.md), so timing a sub-stage never overwrites the kernel's table."""
    doc = kernel.bench.perf_doc
    if spec.letter == kernel.bench.stage:
        return doc
    stem, dot, ext = doc.rpartition(".")
    return f"{stem}-stage-{spec.letter}.{ext}" if dot else f"{doc}-stage-{spec.letter}"


def _covers_the_sweep(record: dict[str, Any], kernel) -> bool:
    """Whether every row of the kernel's bench.sweep is among the record's cases."""
    cases = [c.get("params") or {} for c in record.get("bench") or [] if isinstance(c, dict)]

    def same(a, b) -> bool:
        return str(a).lower() == str(b).lower()

    return bool(kernel.bench.sweep) and all(
        any(all(k in p and same(p[k], v) for k, v in row.items()) for p in cases) for row in kernel.bench.sweep
    )


def recorded_sweep(ws, spec, selector: str, kernel) -> dict[str, Any]:
    """The record of a `wb bench --sweep` of ``spec`` (a run selector, e.g. a run imported from
    a GPU machine), to write the kernel's perf doc from; UserError (one line) when the run is
    not one: another kind or stage, bench cases that are not the sweep, nothing timed. A
    stage in the selector (``d@last``) is one of ``kernel``'s unless it names another."""
    from workbench.kernels.registry import resolve_stage

    def stage_of(text: str) -> str:
        return resolve_stage(ws, text if "/" in text else f"{kernel.name}/{text}").id

    record = select(ws.runs_dir, selector, stage_of)
    run = f"run {record.get('id')}"
    if record.get("kind") != "bench":
        raise UserError(f"{run} is a `wb {record.get('kind')}` record, not a `wb bench --sweep` one")
    if record.get("stage") != spec.id:
        raise UserError(f"{run} timed {record.get('stage')}, not {spec.id} (the kernel's bench stage)")
    # a record of a wb before the bench_sweep field is the sweep when its cases hold every row of it
    if record.get("bench_sweep") is False or (record.get("bench_sweep") is None and not _covers_the_sweep(record, kernel)):
        raise UserError(f"{run} timed bench cases, not the kernel's sweep (`wb bench --sweep`): its perf doc would be partial")
    from workbench.records.charts import speed  # NaN, inf, -5, 1e308: read by the schema, no speed

    if record.get("verdict") not in ("PASS", "FAIL") or not any(speed(c.get("tflops")) for c in record.get("bench") or []):
        raise UserError(f"{run} ({record.get('verdict')}) timed no case: no perf doc to write from it")
    return record


def write_perf_doc(ws, kernel, spec, record: dict[str, Any]):
    """Write the kernel's perf doc (bench.perf_doc) and its speed chart beside it from a bench
    record; the doc's path."""
    from workbench.files import atomic_write_text, blocked_folder
    from workbench.records.charts import draw_speed_chart

    perf = ws.root / perf_doc_path(kernel, spec)
    perf_markdown(record, kernel)  # what the record lacks fails here, before the chart is replaced
    for path in (perf, perf.with_suffix(".png")):  # checked before either is replaced
        _refuse_wb_owned(ws, path)
        if os.path.exists(path) and not os.path.isfile(path):
            raise UserError(f"cannot write {path.relative_to(ws.root)}: it is a folder or no plain file; move it away")
    blocked = blocked_folder(perf)
    if blocked:  # (docs a file: the chart's mkdir was a FileExistsError traceback)
        raise UserError(f"cannot write {perf.relative_to(ws.root)}: {blocked}")
    chart = draw_speed_chart(perf.with_suffix(".png"), record, tuple(kernel.bench.yardsticks))
    atomic_write_text(perf, perf_markdown(record, kernel, chart.name if chart else None), follow_link=True)
    return perf


def _refuse_wb_owned(ws, path: Path) -> None:
    """kernel.yaml's bench.perf_doc may name any .md of the workspace: MEMORY.md, a run's
    report.md or a stage module's folder would be overwritten by the table (MEMORY.md's
    lessons were lost so, exit 0). The path and, through a link, its target are checked."""
    owned_files = {os.path.realpath(p) for p in (ws.memory_path, memory.data_path(ws.memory_path))}
    owned_dirs = [os.path.realpath(d) for d in (ws.runs_dir, ws.state_dir, ws.stages_dir)]
    for where in {os.path.abspath(path), os.path.realpath(path)}:
        if where in owned_files or any(where == d or where.startswith(d + os.sep) for d in owned_dirs):
            raise UserError(
                f"kernel.yaml bench.perf_doc: {path.relative_to(ws.root)} is wb's own (MEMORY.md, MEMORY.json,"
                " runs/, .wb/, stages/): name a file of its own, e.g. docs/perf.md"
            )


def perf_markdown(record: dict[str, Any], kernel, chart: str | None = None) -> str:
    """The kernel's perf doc (kernel.yaml `bench.perf_doc`): a table with a column per
    `bench.columns` parameter, per peer, and wb's stage, generated by wb; ``chart``: the
    speed chart's file name beside it (workbench.records.charts), embedded under the table."""
    from workbench.records.charts import best_peer, speed

    prov = record.get("provenance") or {}
    cases = record.get("bench", [])
    peers = sorted({p for c in cases for p in (c.get("peers") or {})})
    columns = kernel.bench.columns or list(dict.fromkeys(k for c in kernel.bench.sweep for k in c))
    columns = columns or list(dict.fromkeys(k for c in cases for k in c.get("params", {})))
    title = kernel.bench.title or f"{kernel.title} speed"
    spec = kernel.stage(record.get("letter") or kernel.bench.stage)

    cell = memory.cell  # every value a record brings is one safe table cell or line

    def other(p: dict) -> str:  # the bench.quiet parameters a case sets away from their default
        return " ".join(f"{k}={cell(p[k])}" for k in kernel.bench.quiet if spec is not None and k in p and not at_default(spec.defaults, p, k))

    extra = ["other"] if any(other(c.get("params", {})) for c in cases) else []
    out = [
        f"# {title} (generated by `wb bench --sweep`)",
        "",
        f"Card: {cell(prov.get('gpu') or 'unknown (the record names none)')} · measured {cell(str(record.get('started'))[:10])} · run `{cell(record.get('id'))}` · commit `{cell((prov.get('commit') or '')[:10])}`"
        + (" (dirty)" if prov.get("dirty") else ""),
        f"Versions: wb {cell(prov.get('wb'))}, CuTe DSL {cell(prov.get('dsl'))}, torch {cell(prov.get('torch'))}, driver {cell(prov.get('driver'))}",
        f"Card's dense bf16 matmul: {speed((record.get('peak') or {}).get('tflops')) or 0:.0f} TFLOP/s (measured by wb, cached per card).",
        "",
        (kernel.bench.note + " " if kernel.bench.note else "")
        + "Median of CUDA-event timings, "
        + ("wb and its peers timed repeat by repeat in turn (one power and clock state for all), " if any(c.get("interleaved") for c in cases) else "")
        + "L2 flushed before each repeat; every kernel checked against the stage's reference on the same inputs before timing.",
        "",
        # (one list of cells: a sweep without parameter columns gave a header one cell wider than its rule)
        "| " + " | ".join([*columns, *extra, *map(cell, peers), f"wb {cell(record['stage'])}", "wb / best peer"]) + " |",
        "|" + "---|" * (len(columns) + len(extra) + len(peers) + 2),
    ]
    for c in cases:
        p = c.get("params", {})
        cells = []
        for name in peers:
            t = speed(((c.get("peers") or {}).get(name) or {}).get("tflops"))
            cells.append(f"{t:.0f}" if t else "skipped")
        best = best_peer(c, tuple(kernel.bench.yardsticks))
        mine = speed(c.get("tflops"))
        wb = f"{mine:.0f}" if mine else cell(c.get("verdict", "-"))
        ratio = "-" if not (mine and best) else f"×{mine / best:.2f}" if mine / best < 1000 else f"×{mine / best:.3g}"  # (a peer at 1e-300: 300 digits)
        given = [("yes" if p[k] else "no") if isinstance(p.get(k), bool) else cell(p.get(k, "-")) for k in columns]
        given += [other(p) or "-"] if extra else []
        out.append("| " + " | ".join([*given, *cells, wb, ratio]) + " |")
    if chart:
        out += ["", f"![TFLOP/s per case beside the peers, and the card's dense matmul peak]({chart})"]
    notes = record.get("notes") or []
    skipped = sorted({f"{name}: {peer['skipped']}" for c in cases for name, peer in (c.get("peers") or {}).items() if peer.get("skipped")})
    clocks = clock_summary(record)
    if notes or skipped or clocks:
        out += ["", "Notes:", ""] + [f"- {cell(n, 2000)}" for n in [*notes, *skipped, *clocks]]
    out.append("")
    return "\n".join(out)
