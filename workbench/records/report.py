"""Reports as Markdown: one per run (runs/<id>/report.md) and one per stage (its history).

Both are plain data in, text out; `wb report` renders them in the terminal with rich.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from workbench.diagnose import diagnosis_markdown as render
from workbench.errors import UserError
from workbench.files import atomic_write_text
from workbench.records.store import RECORD, list_records
from workbench.text import fmt
from workbench.workspace import Workspace


def case_name(case: dict) -> str:
    """What a fixture case is called in reports: its label (fixture and seed), else the fixture."""
    return str(case.get("label") or case.get("fixture"))


def params_text(record: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in record.get("params", {}).items())


def changed_params_text(record: dict[str, Any], defaults: dict[str, Any] | None) -> str:
    """The record's parameters that are not at their kernel.yaml default (``defaults``:
    StageSpec.defaults of the stage today; None, a stage no longer defined: every parameter),
    or "defaults"."""
    from workbench.kernels.registry import at_default

    params = record.get("params", {})
    if defaults is None:
        return params_text(record)
    return " ".join(f"{k}={v}" for k, v in params.items() if not at_default(defaults, params, k)) or "defaults"


def variants_text(variants: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in variants.items()) or "defaults"


def fixture_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (fixture case, output): the numbers every view of a run shows."""
    rows = []
    for case in record.get("results", []):
        for name, m in case.get("outputs", {}).items():
            rows.append(
                {
                    "fixture": case_name(case),
                    "output": name,
                    "verdict": m["verdict"],
                    "cos": m.get("cos"),
                    "rel_l2": m.get("rel_l2"),
                    "max_abs_err": m.get("max_abs_err"),
                    "max_err_at": m.get("max_err_at"),
                    "tolerance": m.get("tolerance"),
                    "nan": m.get("nan"),
                    "inf": m.get("inf"),
                    "unwritten": m.get("unwritten"),
                    "reasons": m.get("reasons", []),
                }
            )
    return rows


def run_markdown(record: dict[str, Any]) -> str:
    prov = record.get("provenance", {})
    timing = record.get("timing", {})
    card = prov.get("gpu") or "no GPU"
    commit = (prov.get("commit") or "no git")[:10] + (" (dirty, diff " + str(prov.get("diff_hash")) + ")" if prov.get("dirty") else "")
    params = params_text(record)
    out = [
        f"# {record['stage']} — {record['verdict']}",
        "",
        f"Run `{record['id']}` · {record.get('started', '')} · {card} · arch {prov.get('arch')} · commit {commit} · host {prov.get('host')}",
        "",
        f"**{record.get('stage_title', '')}**",
        "",
        f"- parameters: `{params}`" if params else "- parameters: none recorded",
        f"- variants: `{variants_text(record.get('variants', {}))}`",
        f"- compile: {fmt(timing.get('compile_s'), '.2f')} s" + (" (cached)" if timing.get("compile_cached") else "")
        + f" · kernel runs: {fmt(timing.get('run_s'), '.3f')} s · total: {fmt(timing.get('total_s'), '.2f')} s",
        "",
    ]
    about = record.get("about") or {}
    if about.get("proves") or about.get("cannot_see"):
        out += ["## What this stage proves", "", about.get("proves") or "-", "", "## What it cannot see", "", about.get("cannot_see") or "-", ""]
    error = record.get("error")
    if error:
        out += ["## Error", ""]
        if error.get("location"):
            out += [f"at `{error['location']}`", ""]
        out += ["```", (error.get("message") or "").strip()[:4000], "```", ""]
        if error.get("log"):
            out += ["Worker output:", "", "```", error["log"][-3000:], "```", ""]
    out += sanitizer_markdown(record.get("sanitizer"))
    out += profile_markdown(record.get("profile"))
    out += trace_markdown(record.get("trace"))
    rows = fixture_rows(record)
    if rows:
        out += [
            "## Fixtures",
            "",
            "| fixture | output | verdict | cos | rel L2 | max err | at | tolerance | NaN | unwritten |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            out.append(
                f"| {r['fixture']} | {r['output']} | {r['verdict']} | {fmt(r['cos'], '.6f')} | {fmt(r['rel_l2'], '.3g')} | "
                f"{fmt(r['max_abs_err'], '.3g')} | {r['max_err_at']} | {fmt(r['tolerance'], '.3g')} | {r['nan']} | {r['unwritten']} |"
            )
        peaks = [c["reference_peak_bytes"] for c in record.get("results", []) if c.get("reference_peak_bytes") is not None]
        if peaks:
            out += [f"PyTorch reference: at most {max(peaks) / 2**30:.2f} GiB of device memory beyond the inputs and outputs.", ""]
        out.append("")
    notes = record.get("fixture_notes") or {}
    if notes:
        out += ["### What each fixture isolates and hides", ""]
        for name, note in notes.items():
            out.append(f"- **{name}** isolates: {note.get('isolates') or '-'} Hides: {note.get('hides') or '-'}")
        out.append("")
    failed = [c for c in record.get("results", []) if c.get("verdict") == "FAIL"]
    if failed:
        out += ["## Failures explained", ""]
        for case in failed:
            out += [f"### {case_name(case)}", ""]
            for name, m in case.get("outputs", {}).items():
                if m.get("reasons"):
                    out.append(f"- `{name}`: " + "; ".join(m["reasons"]))
            out.append("")
            out += [diagnosis_markdown(case.get("diagnosis")), ""]
    shapes = record.get("shapes") or []
    # probes when the stage has any; otherwise the ops captured from the traced IR
    shapes = [s for s in shapes if s.get("kind", "probe") == "probe"] or shapes
    if shapes:
        out += ["## Shapes (from the trace)", "", "| probe | location | layout | modes |", "|---|---|---|---|"]
        for s in shapes:
            out.append(f"| {s.get('name')} | {_short_location(s.get('location'))} | `{s.get('layout')}` | {s.get('rank', '-')} |")
        out.append("")
    out += [
        "## Provenance",
        "",
        f"- wb {prov.get('wb')}, CuTe DSL {prov.get('dsl')}, torch {prov.get('torch')}, Python {prov.get('python')}",
        f"- GPU {card} (cc {prov.get('compute_capability')}), driver {prov.get('driver')}, runtime CUDA {prov.get('cuda_runtime')}",
        "- stage sources: " + ", ".join(f"`{k}` {v}" for k, v in (prov.get("sources") or {}).items()),
        "",
    ]
    return "\n".join(out)


def sanitizer_place(finding: dict) -> str:
    """file:line of a compute-sanitizer finding, as far as it says (both are optional)."""
    if not finding.get("file"):
        return "no line info"
    line = finding.get("line")
    return f"{Path(str(finding['file'])).name}" + (f":{line}" if line is not None else "")


def sanitizer_markdown(found: dict[str, Any] | None) -> list[str]:
    """wb run --sanitize: the tool's verdict and findings (stage kernels first)."""
    if not found:
        return []
    out = [
        f"## compute-sanitizer {found.get('tool')}: {found.get('verdict')}",
        "",
        f"{found.get('findings_in_stage', 0)} finding(s) in the stage's kernels, "
        f"{(found.get('findings_total') or 0) - (found.get('findings_in_stage') or 0)} in other kernels; the tool's summary: "
        + ("none (the worker did not exit cleanly)" if found.get("errors") is None else f"{found['errors']} error(s)")
        + f"; the run's verdict without the tool: {found.get('run_verdict')}. Whole log: `{found.get('log')}` beside this report.",
        "",
    ]
    findings = found.get("findings") or []
    if findings:
        out += ["| where | finding | times | kernel | first details |", "|---|---|---|---|---|"]
        for f in findings:
            where = sanitizer_place(f)
            details = "; ".join(f.get("details") or [])[:300].replace("|", "\\|")
            kernel = str(f.get("kernel") or "?")[:80] + ("" if f.get("stage_kernel") else " (not the stage's)")
            out.append(f"| `{where}` | {str(f.get('message')).replace('|', '/')} | {f.get('count', 1)} | `{kernel}` | {details} |")
        out.append("")
    return out


def trace_markdown(found: dict[str, Any] | None) -> list[str]:
    """wb run --trace: the timeline file and its summary."""
    if not found:
        return []
    if found.get("error"):
        return ["## Tile timeline", "", f"The traced launch failed: {found['error']}", ""]
    us = lambda ns: fmt(ns / 1e3 if isinstance(ns, (int, float)) else None, ".1f")  # noqa: E731
    tiles = found.get("tiles_per_cta") or ["?", "?"]
    out = [
        "## Tile timeline",
        "",
        f"[`{found.get('file')}`]({found.get('file')}) ({found.get('events')} events; open it in ui.perfetto.dev or chrome://tracing), "
        f"fixture {found.get('fixture')}: {found.get('ctas')} CTAs, start skew {us(found.get('cta_start_skew_ns'))} µs, "
        f"CTA ends {us(found.get('cta_end_first_ns'))} / {us(found.get('cta_end_median_ns'))} / {us(found.get('cta_end_last_ns'))} µs "
        f"(first / median / last; the tail past the median is {us(found.get('tail_ns'))} µs), tiles per CTA "
        f"{tiles[0]}–{tiles[1]}{stamped_note(found)}. Output elements whose bits differ from the untraced "
        f"build's on the same inputs: {found.get('bits_differing_from_untraced')}.",
        "",
    ]
    phases = found.get("phase_median_ns") or {}
    if phases:
        out += ["| phase (median over lanes and tiles) | µs |", "|---|---|"]
        out += [f"| {name} | {value / 1e3:.3f} |" for name, value in phases.items()]
        out.append("")
    return out


def profile_markdown(found: dict[str, Any] | None) -> list[str]:
    """wb profile: ncu's headline counters of the profiled kernel."""
    if not found:
        return []
    counters = found.get("counters")
    if not counters:
        return ["## Nsight Compute", "", f"ncu profiled no stage kernel ({found.get('kernels', 0)} kernels in its report).", ""]
    out = [
        "## Nsight Compute (ncu, the card's own clocks)",
        "",
        f"`{str(found.get('kernel'))[:120]}` · grid {found.get('grid')} · block {found.get('block')} · "
        f"{found.get('metrics_count')} raw metrics in `{found.get('log')}`",
        "",
        "| counter | value |",
        "|---|---|",
    ]
    out += [f"| {key} | {fmt(value, '.4g')} |" for key, value in counters.items() if key != "stalls_top5"]
    out += [f"| stall: {s.get('reason') or '?'} | {fmt(s.get('value'), '.3g')} |" for s in counters.get("stalls_top5") or []]
    each = found.get("each") or []
    if len(each) > 1:
        out += ["", f"The launch ran {len(each)} stage kernels:", "", "| kernel | grid | µs | tensor pipe % | DRAM % |", "|---|---|---|---|---|"]
        out += [
            f"| `{str(e.get('kernel'))[:80]}` | {e.get('grid')} | {fmt((e.get('counters') or {}).get('duration_us'), '.1f')} | "
            f"{fmt((e.get('counters') or {}).get('tensor_pipe_pct'), '.1f')} | {fmt((e.get('counters') or {}).get('dram_throughput_pct'), '.1f')} |"
            for e in each
        ]
    if found.get("peers"):
        out += ["", "Beside its peers (same inputs, one ncu run each):", "", "| peer | run | verdict | µs | tensor pipe % | TFLOP/s | FLOP/byte |",
                "|---|---|---|---|---|---|---|"]
        out += [
            f"| {p.get('peer')} | `{p.get('run')}` | {p.get('verdict')} | {fmt(p.get('duration_us'), '.1f')} | "
            f"{fmt(p.get('tensor_pipe_pct'), '.1f')} | {fmt(p.get('tflops'), '.0f')} | {fmt(p.get('intensity'), '.0f')} |"
            for p in found["peers"]
        ]
    if found.get("peer"):
        out += ["", f"This run measured the peer **{found['peer']}** (not the stage's kernel) on the stage's inputs."]
    roof = found.get("roofline") or {}
    if roof.get("tflops"):
        out += ["", f"Roofline: {roof['tflops']:.0f} TFLOP/s at "
                + (f"{roof['intensity']:.0f} FLOP per DRAM byte" if roof.get("intensity") else "an unknown DRAM byte count")
                + " (the stage's FLOP count over ncu's kernel time)."]
    if found.get("picture"):
        out += ["", f"![the kernel on the card's roofline]({found['picture']})"]
    return out + [""]


def diagnosis_markdown(diagnosis: Any) -> str:
    if not diagnosis:
        return "_No diagnosis available._"
    if isinstance(diagnosis, dict) and "error" in diagnosis and len(diagnosis) == 1:
        return f"_{diagnosis['error']}_"
    try:
        return render(diagnosis)
    except Exception:  # the diagnostics package renders its own data; fall back to raw
        import json

        return "```json\n" + json.dumps(diagnosis, indent=2, default=str)[:4000] + "\n```"


def _short_location(location: str | None) -> str:
    if not location:
        return "-"
    path, _, line = location.rpartition(":")
    return f"{Path(path).name}:{line}"


def write_run_report(ws: Workspace, record: dict[str, Any]) -> Path:
    path = Path(record["_dir"]) / "report.md"
    atomic_write_text(path, run_markdown(record))
    write_stage_report(ws, record["stage"])
    return path


# ---------------------------------------------------------------------------- stage history


def stage_defaults(ws: Workspace) -> dict[str, dict[str, Any]]:
    """Each stage id's parameter defaults in its kernel.yaml today (StageSpec.defaults); none
    while a kernel.yaml is broken (the runs are still shown, every parameter with them)."""
    from workbench.kernels.registry import load_kernels

    try:
        kernels = load_kernels(ws)
    except UserError:
        return {}
    return {spec.id: spec.defaults for kernel in kernels.values() for spec in kernel.stages}


def stage_history(ws: Workspace, stage_id: str, limit: int = 200) -> dict[str, Any]:
    """Data for a stage's report: verdict per parameter set, first/last passing commit, trend.
    Parameter sets are told apart by every parameter and variant, and shown by those away
    from their defaults (``changed_params_text``; the variants the run changed)."""
    records = list_records(ws.runs_dir, lambda r: r.get("stage") == stage_id and r.get("kind", "run") == "run", limit)
    defaults = stage_defaults(ws).get(stage_id)
    latest: dict[str, dict] = {}
    for r in records:  # newest first: the first seen per parameter set is the latest
        latest.setdefault(params_text(r) + " | " + variants_text(r.get("variants", {})), r)
    passing = [r for r in records if r["verdict"] == "PASS"]
    trend = []
    for r in records[:30]:
        rows = fixture_rows(r)
        trend.append(
            {
                "id": r["id"],
                "verdict": r["verdict"],
                "params": changed_params_text(r, defaults),
                "min_cos": min((x["cos"] for x in rows if x["cos"] is not None), default=None),
                "max_err": max((x["max_abs_err"] for x in rows if x["max_abs_err"] is not None), default=None),
                "compile_s": r.get("timing", {}).get("compile_s"),
                "commit": (r.get("provenance", {}).get("commit") or "")[:8],
                "gpu": r.get("provenance", {}).get("gpu"),
            }
        )
    return {
        "stage": stage_id,
        "runs": len(records),
        "latest_per_params": [
            {"params": changed_params_text(r, defaults), "variants": variants_text(r.get("variants_changed", {})),
             "verdict": r["verdict"], "id": r["id"], "date": str(r.get("started") or "")[:10]}
            for _, r in sorted(latest.items())
        ],
        "first_passing_commit": (passing[-1].get("provenance", {}).get("commit") or "")[:10] if passing else None,
        "last_passing_commit": (passing[0].get("provenance", {}).get("commit") or "")[:10] if passing else None,
        "trend": trend,
        "about": next((r.get("about") for r in records if r.get("about")), None),
        "shapes": next((r.get("shapes") for r in records if r.get("shapes")), []),
    }


def stage_markdown(history: dict[str, Any], sweep_table: str | None = None) -> str:
    out = [f"# {history['stage']} — stage report", "", f"{history['runs']} run(s) recorded.", ""]
    about = history.get("about") or {}
    if about.get("proves"):
        out += ["## What this stage proves", "", about["proves"], ""]
    if about.get("cannot_see"):
        out += ["## What it cannot see", "", about["cannot_see"], ""]
    out += [
        f"First passing commit: `{history['first_passing_commit'] or '-'}` · last passing commit: `{history['last_passing_commit'] or '-'}`",
        "",
        "## Latest verdict per parameter set",
        "",
        "Parameters away from kernel.yaml's defaults, and the variants each run changed.",
        "",
        "| parameters | variants | verdict | run | date |",
        "|---|---|---|---|---|",
    ]
    for row in history["latest_per_params"]:
        out.append(f"| `{row['params']}` | `{row['variants']}` | {row['verdict']} | {row['id']} | {row['date']} |")
    out += ["", "## Trend (newest first)", "", "| run | verdict | params | min cos | max err | compile s | commit | card |", "|---|---|---|---|---|---|---|---|"]
    for t in history["trend"]:
        out.append(
            f"| {t['id']} | {t['verdict']} | `{t['params']}` | {fmt(t['min_cos'], '.6f')} | {fmt(t['max_err'], '.3g')} | "
            f"{fmt(t['compile_s'], '.2f')} | {t['commit']} | {t['gpu'] or '-'} |"
        )
    if sweep_table:
        out += ["", sweep_table]
    out.append("")
    return "\n".join(out)


def stage_report_path(ws: Workspace, stage_id: str) -> Path:
    return ws.runs_dir / "reports" / (stage_id.replace("/", "-") + ".md")


def run_report_text(record: dict[str, Any]) -> str:
    """A run's report: the report.md written with it, unless its record changed since (an
    edit, an import over it): then made again from the record, as it is now."""
    run_dir = Path(record["_dir"])
    saved = run_dir / "report.md"
    try:
        current = saved.stat().st_mtime >= (run_dir / RECORD).stat().st_mtime
    except OSError:
        current = False
    return (read_saved(saved) if current else None) or run_markdown(record)


def read_saved(path: Path) -> str | None:
    """A report wb wrote (a run's report.md, a stage's sweep table); None when there is none or
    it is not a readable text file of sane size (the caller then goes without it or makes it
    again)."""
    from workbench.schemas import SchemaError, read_text

    try:
        return read_text(path, 16 * 1024 * 1024)
    except (FileNotFoundError, SchemaError):
        return None


def write_stage_report(ws: Workspace, stage_id: str) -> Path:
    path = stage_report_path(ws, stage_id)
    atomic_write_text(path, _stage_text(ws, path, stage_id))
    return path


def stage_report(ws: Workspace, stage_id: str) -> str:
    """The stage's report (`wb report STAGE`), written to runs/reports/ as well; a file wb
    cannot write there is a warning: the report is still shown."""
    path = stage_report_path(ws, stage_id)
    text = _stage_text(ws, path, stage_id)
    try:
        atomic_write_text(path, text)
    except UserError as exc:
        warnings.warn(f"stage report not written: {exc}")
    return text


def _stage_text(ws: Workspace, path: Path, stage_id: str) -> str:
    return stage_markdown(stage_history(ws, stage_id), read_saved(path.with_suffix(".sweep.md")))


def stamped_note(found: dict[str, Any]) -> str:
    """' (each CTA's first N tiles stamped: ...)' when a CTA reached the layout's limit (its
    later tiles are not in the trace; the CTA's end time still is)."""
    limit, tiles = found.get("tiles_stamped_per_cta"), found.get("tiles_per_cta") or []
    if isinstance(limit, int) and len(tiles) == 2 and isinstance(tiles[1], int) and tiles[1] >= limit:
        return f" (only each CTA's first {limit} tiles are stamped: CTAs with more have later tiles missing from the trace)"
    return ""
