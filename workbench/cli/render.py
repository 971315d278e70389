"""Terminal rendering of wb's data (run records, diffs, histories). No logic lives here."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from workbench import terminal
from workbench.records.provenance import card_label
from workbench.records.report import case_name, changed_params_text, fixture_rows, params_text, sanitizer_place, stamped_note, variants_text
from workbench.remote.sweep import CaseResult, SweepEvent
from workbench.terminal import console, escape, fmt, verdict
from workbench.text import first_line, signed


@contextlib.contextmanager
def progress(title: str, enabled: bool = True) -> Iterator[Callable[[dict], None]]:
    """Live progress of a run: a spinner on a terminal, plain lines otherwise."""
    start = time.perf_counter()
    if os.environ.get("WB_EVENTS") == "stderr":  # under `wb ... --host`: events for the local wb
        def emit(event: dict) -> None:
            sys.stderr.write("wb-event " + json.dumps(event, default=str) + "\n")
            sys.stderr.flush()

        yield emit
        return
    if not enabled:
        yield lambda event: None
        return

    def describe(event: dict) -> str:
        if event.get("phase") == "start":
            return "starting worker"
        if event.get("phase") == "compile":
            v = event.get("variants") or {}
            return "compiling" + (f" ({variants_text(v)})" if v else "")
        if event.get("phase") == "fixture":
            return f"fixture {event.get('fixture')}"
        if event.get("phase") == "env":
            return f"on {(event.get('env') or {}).get('gpu') or 'the CPU'}"
        if event.get("phase") == "peer":
            return f"launching peer {event.get('peer')} ({event.get('fixture')})"
        if event.get("phase") == "trace":
            return f"traced launch ({event.get('fixture')})"
        if event.get("phase") == "process":
            return f"worker process {event.get('process')} of {event.get('of')} (a new one each)"
        if event.get("phase") == "instrument":
            return f"starting worker under {event.get('tool')} (slower than a plain run)"
        if event.get("phase") == "compile ahead":
            return str(event.get("text") or "compiling ahead")
        return str(event.get("phase", ""))

    if terminal.interactive():
        with console.status(f"{title}: starting worker", spinner="dots") as status:
            yield lambda e: status.update(f"{title}: {escape(describe(e))}  [dim]{time.perf_counter() - start:.1f}s[/]")
    else:
        # (an event's text may come from a remote host: control characters shown, not acted on)
        yield lambda e: print(f"[{time.perf_counter() - start:6.1f}s] {title}: {terminal.printable(describe(e))}", flush=True)


def render_run(record: dict[str, Any]) -> None:
    timing = record.get("timing", {})
    prov = record.get("provenance", {})
    # (any JSON under the schema: a remote host's record comes from another wb)
    compiles = [c for c in timing.get("compiles") or [] if isinstance(c, dict)]
    if timing.get("compile_cached"):
        where = "/".join(sorted({str(c.get("cache") or "cache") for c in compiles})) or "cache"
        cold = sum(s for c in compiles if isinstance(s := c.get("cold_seconds"), (int, float)) and not isinstance(s, bool))
        compile_text = f"compile {fmt(timing.get('compile_s'), '.2f')} s ({where} hit; cold {cold:.2f} s)"
    else:
        compile_text = f"compile {fmt(timing.get('compile_s'), '.2f')} s (cold)"
    console.print(
        f"{verdict(record['verdict'])} {escape(record['stage'])}  {escape(params_text(record))}"
        f"  [dim]{escape(variants_text(record.get('variants', {})))}[/]"
    )
    console.print(
        f"[dim]run {record['id']} · {compile_text} · kernels {fmt(timing.get('run_s'), '.3f')} s · total "
        f"{fmt(timing.get('total_s'), '.2f')} s · {escape(card_label(prov))} · {'warm' if timing.get('worker_reused') else 'new'} worker[/]"
    )
    rows = fixture_rows(record)
    if rows:
        console.print(
            terminal.table(
                None,
                ["fixture", "out", "verdict", "cos", "rel L2", "max err", "tol", "NaN", "unwritten"],
                [
                    [
                        escape(r["fixture"]), r["output"], verdict(r["verdict"]), fmt(r["cos"], ".6f"), fmt(r["rel_l2"], ".2e"),
                        fmt(r["max_abs_err"], ".2e"), fmt(r["tolerance"], ".2e"), r["nan"], r["unwritten"],
                    ]
                    for r in rows
                ],
            )
        )
    exported = record.get("exported")
    if exported:
        cases = [c for c in record.get("results", []) if "exported_bit_differences" in c]
        same = sum(1 for c in cases if not any(c["exported_bit_differences"].values()))
        console.print(
            f"exported op {escape(str(exported.get('qualname')))} from {escape(str(exported.get('path')))} "
            f"(config {escape(str(exported.get('config')))}, commit {escape(str(exported.get('commit') or '?')[:10])}): "
            f"{'[green]' if cases and same == len(cases) else '[red]'}bits equal to the in-tree kernel in {same}/{len(cases)} fixtures[/]"
        )
        if exported.get("skipped_fixtures"):
            console.print(f"[dim]not run through the export (they need another variant): {escape(', '.join(exported['skipped_fixtures']))}[/]")
    render_sanitizer(record.get("sanitizer"), record.get("id"))
    render_profile(record.get("profile"), record.get("id"))
    render_trace(record.get("trace"), record.get("id"))
    for case in record.get("results", []):
        if case.get("verdict") != "FAIL":
            continue
        reasons = "; ".join(r for m in case.get("outputs", {}).values() for r in m.get("reasons", []))
        console.print(f"[red]✗ {escape(case_name(case))}[/]: {escape(reasons)}")
        render_diagnosis(case.get("diagnosis"), full=False)
    error = record.get("error")
    if error:
        where = f" at {error['location']}" if error.get("location") else ""
        console.print(f"[red]{record['verdict']}{escape(where)}:[/] {escape((error.get('message') or '').strip()[:2000])}")
        if error.get("log") and record["verdict"] in ("CRASH", "HANG"):
            console.print("[dim]worker output (tail):[/]")
            console.print(escape(error["log"][-1500:]), style="dim")
    console.print(f"[dim]report: {escape(str(record.get('_dir', '')))}/report.md[/]")


def render_diagnosis(diagnosis: Any, full: bool) -> None:
    if not diagnosis:
        return
    if isinstance(diagnosis, dict) and set(diagnosis) == {"error"}:
        console.print(f"  [dim]{escape(diagnosis['error'])}[/]")
        return
    try:
        from workbench.diagnose import render_diagnosis as render
    except ImportError:
        return
    try:
        renderable = render(diagnosis, full=full)
    except Exception as exc:  # a diagnosis from another wb or a hand-edited record: show the verdict anyway
        console.print(f"  [dim]diagnosis not shown: it is not one this wb can read ({escape(type(exc).__name__)})[/]")
        return
    if renderable is not None:
        console.print(renderable)


def render_runs(records: list[dict[str, Any]], defaults: dict[str, dict] | None = None) -> None:
    """``defaults``: each stage id's parameter defaults; given, only the parameters away from
    them and the variants the run changed are shown (None: every one)."""
    rows = []
    for r in records:
        prov = r.get("provenance", {})
        if defaults is None:
            params, variants = params_text(r), variants_text(r.get("variants", {}))
        else:
            params, variants = changed_params_text(r, defaults.get(r["stage"])), variants_text(r.get("variants_changed", {}))
        if r.get("kind") == "bench":  # its parameters are per case
            cases = len(r.get("bench") or [])
            params = f"bench: {cases} case{'s' if cases != 1 else ''}" + (" (the sweep)" if r.get("bench_sweep") else "")
        rows.append(
            [
                r["id"], escape(r["stage"]), verdict(r["verdict"]), escape(params),
                escape(variants),
                (prov.get("commit") or "-")[:8] + ("+" if prov.get("dirty") else ""),
                escape(card_label(prov)), escape(r.get("host_name") or prov.get("host") or ""),
            ]
        )
    console.print(terminal.table(None, ["run", "stage", "verdict", "params", "variants", "commit", "card", "host"], rows))


def render_diff(d: dict[str, Any]) -> None:
    a, b = d["a"], d["b"]
    console.print(f"A {a['id']} {escape(a['stage'])} {verdict(a['verdict'])}  →  B {b['id']} {escape(b['stage'])} {verdict(b['verdict'])}")
    if a["stage"] != b["stage"]:
        console.print(f"[yellow]A and B are runs of different stages ({escape(a['stage'])}, {escape(b['stage'])}): their fixtures and metrics need not compare[/]")
    if d["verdict_flip"]:
        console.print(f"[bold]verdict flipped: {verdict(a['verdict'])} → {verdict(b['verdict'])}[/]")
    flips = [f for f in d["fixtures"] if f["a"] != f["b"]]
    for f in flips:
        mark = "[red]regressed[/]" if f["regressed"] else ("[green]fixed[/]" if f["fixed"] else "changed")
        console.print(f"  {escape(f['fixture'])}: {verdict(f['a'])} → {verdict(f['b'])}  {mark}")
    metric_rows = []
    for f in d["fixtures"]:
        for m in f["metrics"]:
            style = "green" if m["better"] else "red"
            metric_rows.append(
                [escape(f["fixture"]), m["output"], m["metric"], fmt(m["a"], ".4g"), fmt(m["b"], ".4g"), f"[{style}]{signed(m['delta'])}[/]"]
            )
    if metric_rows:
        console.print(terminal.table("metrics", ["fixture", "out", "metric", "A", "B", "Δ"], metric_rows))
    for title, key in (("parameters", "params"), ("variants", "variants"), ("provenance", "provenance")):
        if d[key]:
            console.print(f"[bold]{title}:[/] " + ", ".join(f"{c['key']}: {escape(c['a'])} → {escape(c['b'])}" for c in d[key]))
    if d["sources_changed"]:
        console.print("[bold]stage sources changed:[/] " + ", ".join(escape(s) for s in d["sources_changed"]))
    if d["shapes"]:
        rows = [[escape(s["probe"]), s["change"], escape(s.get("a") or "-"), escape(s.get("b") or "-")] for s in d["shapes"]]
        console.print(terminal.table("shape changes", ["probe", "change", "A", "B"], rows))
    if d["timing"]:
        console.print("[bold]timing:[/] " + ", ".join(f"{t['key']} {fmt(t['a'], '.2f')} → {fmt(t['b'], '.2f')} s ({signed(t['delta'], '.2f')})" for t in d["timing"]))
    for s in d.get("speed", []):
        style = "green" if s["ratio"] >= 1 else "red"
        console.print(f"[bold]speed[/] {escape(s['case'])}: {s['a']:.1f} → {s['b']:.1f} TFLOP/s [{style}]×{s['ratio']:.3f}[/]")
    if d.get("sanitizer"):
        z = d["sanitizer"]
        console.print(
            f"[bold]compute-sanitizer:[/] {escape(str(z['tool'][0] or '-'))} {escape(str(z['verdict'][0] or '-'))} "
            f"({z['findings_in_stage'][0] if z['findings_in_stage'][0] is not None else '-'} in the stage's kernels) → "
            f"{escape(str(z['tool'][1] or '-'))} {escape(str(z['verdict'][1] or '-'))} "
            f"({z['findings_in_stage'][1] if z['findings_in_stage'][1] is not None else '-'})"
        )
        for line in z["new"]:
            console.print(f"  [red]+ {escape(line)}[/]")
        for line in z["gone"]:
            console.print(f"  [green]- {escape(line)}[/]")
    if d.get("counters"):
        rows = [
            [escape(c["counter"]), fmt(c["a"], ".4g"), fmt(c["b"], ".4g"), signed(c["delta"], ".4g"), fmt(c["ratio"], ".3f") if c["ratio"] is not None else "-"]
            for c in d["counters"]
        ]
        console.print(terminal.table("ncu counters (wb profile)", ["counter", "A", "B", "Δ", "B/A"], rows))
    if not (d["verdict_flip"] or flips or metric_rows or d["params"] or d["variants"] or d["provenance"] or d["shapes"]
            or d["sources_changed"] or d.get("sanitizer") or d.get("counters")):
        console.print("[dim]no differences in verdicts, metrics, parameters, provenance or shapes[/]")
    if d["regressed"]:
        where = "on at least one fixture" if any(f["regressed"] for f in d["fixtures"]) else f"(its verdict is {escape(b['verdict'])})"
        console.print(f"[bold red]B regresses {where}[/]")


# ----------------------------------------------------------------------------- wb sweep


class SweepDisplay:
    """Draws a sweep's events (workbench.remote.sweep.SweepEvent): a rich progress bar on a
    terminal (one line per lane), plain lines otherwise. Lanes call it from their threads."""

    def __init__(self, title: str, total: int, enabled: bool = True):
        self.enabled = enabled
        self.total = total
        self.done = 0
        self.lock = threading.Lock()
        self.progress = None
        self.lane_tasks: dict[str, Any] = {}
        if enabled and terminal.interactive():
            self.progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=console, transient=False,
            )
            self.progress.start()
            self.main = self.progress.add_task(title, total=total)

    def __call__(self, event: SweepEvent) -> None:
        if event.kind == "note":
            self._print(f"[dim]{escape(event.text)}[/]")
        elif event.kind == "start":
            self._lane(event, "")
        elif event.kind == "progress":
            phase = (event.progress or {}).get("phase")
            what = {"start": "starting", "compile": "compiling"}.get(phase, f"{(event.progress or {}).get('fixture') or phase}")
            self._lane(event, f" · {escape(what)}")
        elif event.kind == "finish":
            self._finish(event.result)

    def _print(self, text: str) -> None:
        if not self.enabled:
            return
        (self.progress.console if self.progress is not None else console).print(text)

    def _lane(self, event: SweepEvent, suffix: str) -> None:
        if self.progress is None:
            return
        with self.lock:
            if event.kind == "start" and event.lane not in self.lane_tasks:
                self.lane_tasks[event.lane] = self.progress.add_task("", total=None)
            if event.lane in self.lane_tasks:
                self.progress.update(self.lane_tasks[event.lane], description=f"  {escape(event.lane)}: {escape(event.case.text())}{suffix}")

    def _finish(self, result: CaseResult) -> None:
        with self.lock:
            self.done += 1
            done = self.done
        if self.progress is not None:
            self.progress.advance(self.main)
        rec = result.record or {}
        detail = f"run {rec.get('id')}" if rec else escape(result.error or "")
        width = len(str(self.total))
        self._print(
            f"[{done:>{width}}/{self.total}] {verdict(result.verdict)} {escape(result.case.text())}  "
            f"[dim]{escape(result.lane)} · {result.seconds:.1f} s · {detail}[/]"
        )

    def close(self) -> None:
        if self.progress is not None:
            for task in self.lane_tasks.values():
                self.progress.update(task, visible=False)
            self.progress.stop()


def render_sweep(summary: dict[str, Any]) -> None:
    """The sweep's summary table: one row per case, a cell per fixture (verdict, min cos)."""
    axes = summary["axes"]
    rows = []
    for row in summary["rows"]:
        cells = []
        for f in summary["fixtures"]:
            cell = row["cells"].get(f)
            cells.append("-" if not cell else verdict(cell["verdict"]) + (f" {cell['min_cos']:.6f}" if cell.get("min_cos") is not None else ""))
        run_cell = verdict(row["verdict"]) + (f" [dim]{escape(first_line(row['error'], 50))}[/]" if row.get("error") else "")
        rows.append([*(escape(row["label"].get(a, "")) for a in axes), run_cell, *cells, row["run"] or "-", escape(row["lane"])])
    title = f"sweep {summary['id']} · {summary['stage']} · cells: fixture verdict, min cos"
    console.print(terminal.table(title, [*axes, "run", *summary["fixtures"], "run id", "where"], rows))


def render_sanitizer(found: dict | None, run_id: str | None, limit: int = 5) -> None:
    """wb run --sanitize: the tool's verdict and its first findings, stage kernels first."""
    if not found:
        return
    clean = found.get("verdict") == "CLEAN"
    errors = found.get("errors")
    console.print(
        f"{'[green]' if clean else '[red]'}compute-sanitizer {escape(str(found.get('tool')))}: "
        f"{'clean' if clean else escape(str(found.get('verdict')))}[/] · {found.get('findings_in_stage', 0)} finding(s) in the stage's kernels, "
        f"{found.get('findings_total', 0) - found.get('findings_in_stage', 0)} elsewhere · tool summary: "
        f"{'no summary (the worker did not exit cleanly)' if errors is None else f'{errors} error(s)'}"
        f" · run verdict without it: {escape(str(found.get('run_verdict')))}"
    )
    for finding in (found.get("findings") or [])[:limit]:
        where = sanitizer_place(finding)
        tag = "" if finding.get("stage_kernel") else " [dim](not the stage's kernel)[/]"
        times = f" [dim](×{finding.get('count')})[/]" if (finding.get("count") or 1) > 1 else ""
        console.print(f"  [red]✗[/] {escape(where)}  {escape(str(finding.get('message')))}{times}{tag}")
        if finding.get("kernel"):
            console.print(f"    [dim]{escape(str(finding['kernel'])[:120])}[/]")
        for detail in (finding.get("details") or [])[:3]:
            console.print(f"    [dim]{escape(detail[:200])}[/]")
    for note in (found.get("notes") or [])[:3]:
        console.print(f"[yellow]{escape(str(note))}[/]")
    if found.get("log"):
        console.print(f"[dim]the tool's whole log: runs/{escape(str(run_id))}/{escape(str(found['log']))}[/]")


PROFILE_ROWS = (
    ("duration_us", "kernel time (µs, the card's own clocks)", ".1f"),
    ("tensor_pipe_pct", "tensor pipe (HGMMA) active, % of peak", ".1f"),
    ("sm_throughput_pct", "SM throughput, % of peak", ".1f"),
    ("memory_throughput_pct", "memory throughput, % of peak", ".1f"),
    ("l2_throughput_pct", "L2 throughput, % of peak", ".1f"),
    ("dram_throughput_pct", "DRAM throughput, % of peak", ".1f"),
    ("achieved_occupancy_pct", "achieved occupancy, % of peak warps", ".1f"),
    ("registers_per_thread", "registers per thread", ".0f"),
    ("shared_mem_per_block", "shared memory per block (bytes)", ".0f"),
    ("smem_bank_conflicts", "shared-memory bank conflicts (LSU)", ".0f"),
)


def render_profile(found: dict | None, run_id: str | None) -> None:
    """wb profile: the headline counters of the profiled kernel and its top stall reasons."""
    if not found:
        return
    counters = found.get("counters")
    if not counters:
        console.print(f"[red]ncu profiled no stage kernel[/] (kernels in its report: {found.get('kernels', 0)})")
        for note in found.get("notes") or []:
            console.print(f"  [dim]{escape(note)}[/]")
        return
    rows = [[label, fmt(counters.get(key), spec)] for key, label, spec in PROFILE_ROWS]
    for stall in counters.get("stalls_top5") or []:
        rows.append([f"stall: {escape(str(stall.get('reason') or '?'))}", fmt(stall.get("value"), ".2f")])
    console.print(terminal.table(f"ncu: {escape(str(found.get('kernel'))[:70])} · grid {escape(str(found.get('grid')))} · block {escape(str(found.get('block')))}", ["counter", "value"], rows))
    for other in (found.get("each") or [])[1:]:
        c = other.get("counters") or {}
        console.print(
            f"  and {escape(str(other.get('kernel'))[:60])} · grid {escape(str(other.get('grid')))}: {fmt(c.get('duration_us'), '.1f')} µs, "
            f"tensor pipe {fmt(c.get('tensor_pipe_pct'), '.1f')}%, DRAM {fmt(c.get('dram_throughput_pct'), '.1f')}%"
        )
    peer_rows = [
        [escape(str(p.get("peer"))), escape(str(p.get("verdict"))), fmt(p.get("duration_us"), ".1f"), fmt(p.get("tensor_pipe_pct"), ".1f"),
         fmt(p.get("tflops"), ".0f"), fmt(p.get("intensity"), ".0f"), escape(str(p.get("run")))]
        for p in found.get("peers") or []
    ]
    if peer_rows:
        mine = found.get("roofline") or {}
        peer_rows.insert(0, ["this stage", "", fmt(counters.get("duration_us"), ".1f"), fmt(counters.get("tensor_pipe_pct"), ".1f"),
                             fmt(mine.get("tflops"), ".0f"), fmt(mine.get("intensity"), ".0f"), escape(str(run_id))])
        console.print(terminal.table("beside its peers (same inputs, one ncu run each)",
                                     ["kernel", "run verdict", "µs", "tensor pipe %", "TFLOP/s", "FLOP/byte", "run"], peer_rows))
    roof = found.get("roofline") or {}
    if roof.get("tflops"):
        where = f"{roof['intensity']:.0f} FLOP per DRAM byte" if roof.get("intensity") else "no DRAM byte count"
        console.print(f"roofline: {roof['tflops']:.0f} TFLOP/s at {where} (the stage's FLOPs over ncu's kernel time)"
                      + (f" · picture: runs/{escape(str(run_id))}/{escape(found['picture'])}" if found.get("picture") else ""))
    console.print(f"[dim]{found.get('metrics_count')} raw metrics in runs/{escape(str(run_id))}/{escape(str(found.get('log')))}[/]")


def render_trace(found: dict | None, run_id: str | None) -> None:
    """wb run --trace: the timeline's file and its summary in one or two lines."""
    if not found:
        return
    if found.get("error"):
        console.print(f"[red]trace failed:[/] {escape(found['error'][:500])}")
        return
    us = lambda ns: fmt(ns / 1e3 if isinstance(ns, (int, float)) else None, ".1f")  # noqa: E731
    differing = {k: v for k, v in (found.get("bits_differing_from_untraced") or {}).items() if v}
    if differing:
        console.print(f"[red]the traced build's outputs differ from the untraced build's: {escape(str(differing))} elements[/]")
    tiles = found.get("tiles_per_cta") or ["?", "?"]
    console.print(
        f"trace: runs/{escape(str(run_id))}/{escape(str(found.get('file')))} ({found.get('events')} events; open in ui.perfetto.dev) · "
        f"{found.get('ctas')} CTAs, start skew {us(found.get('cta_start_skew_ns'))} µs, ends {us(found.get('cta_end_first_ns'))} / "
        f"{us(found.get('cta_end_median_ns'))} / {us(found.get('cta_end_last_ns'))} µs (first / median / last), tiles per CTA "
        f"{tiles[0]}–{tiles[1]}{stamped_note(found)}"
    )
    phases = found.get("phase_median_ns") or {}
    if phases:
        top = sorted(phases.items(), key=lambda kv: -kv[1])[:6]
        console.print("[dim]phase medians: " + ", ".join(f"{escape(k)} {v / 1e3:.3f} µs" for k, v in top) + "[/]")
