"""`wb diff-run`: what changed between two runs, and whether B regressed.

Order of importance: verdict flips, per-fixture metric deltas, changed parameters,
variants and provenance (commit, dirty, stage sources), shape changes, timing, speed.
"""

from __future__ import annotations

from typing import Any

from workbench.records.report import case_name
from workbench.records.store import list_records

METRICS = ("cos", "rel_l2", "max_abs_err", "nan", "unwritten")
# For each metric: does a larger value mean better?
HIGHER_IS_BETTER = {"cos": True, "rel_l2": False, "max_abs_err": False, "nan": False, "unwritten": False}


def default_pair(runs_dir) -> tuple[dict, dict]:
    """The last two runs of the most recent run's stage (A older, B newer)."""
    newest = list_records(runs_dir, limit=1)
    if not newest:
        raise LookupError("no runs recorded yet")
    stage = newest[0]["stage"]
    two = list_records(runs_dir, lambda r: r.get("stage") == stage, limit=2)
    if len(two) < 2:
        raise LookupError(f"only one run of {stage} recorded: nothing to compare it with")
    return two[1], two[0]


def _cases(record: dict) -> dict[str, dict]:
    return {case_name(c): c for c in record.get("results", [])}


def _changed(a: dict, b: dict) -> list[dict[str, Any]]:
    keys = list(dict.fromkeys([*a, *b]))
    return [{"key": k, "a": a.get(k), "b": b.get(k)} for k in keys if a.get(k) != b.get(k)]


def _shape_map(record: dict) -> dict[str, dict]:
    # records from workbench.compile.compiler carry a stable key (name@file, no line number)
    return {s.get("key") or f"{s.get('name')}@{(s.get('location') or '').rpartition('/')[2]}": s for s in record.get("shapes") or []}


def diff_runs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    ca, cb = _cases(a), _cases(b)
    fixtures = []
    for label in dict.fromkeys([*ca, *cb]):
        fa, fb = ca.get(label), cb.get(label)
        entry: dict[str, Any] = {
            "fixture": label,
            "a": fa["verdict"] if fa else None,
            "b": fb["verdict"] if fb else None,
            "metrics": [],
        }
        if fa and fb:
            for out in dict.fromkeys([*fa.get("outputs", {}), *fb.get("outputs", {})]):
                ma, mb = fa["outputs"].get(out, {}), fb["outputs"].get(out, {})
                for metric in METRICS:
                    va, vb = ma.get(metric), mb.get(metric)
                    if va is None or vb is None or va == vb:
                        continue
                    better = (vb > va) == HIGHER_IS_BETTER[metric]
                    entry["metrics"].append({"output": out, "metric": metric, "a": va, "b": vb, "delta": vb - va, "better": better})
        entry["regressed"] = entry["a"] == "PASS" and entry["b"] not in ("PASS", None)
        entry["fixed"] = entry["a"] not in ("PASS", None) and entry["b"] == "PASS"
        fixtures.append(entry)

    pa, pb = a.get("provenance", {}), b.get("provenance", {})
    sources_a, sources_b = pa.get("sources") or {}, pb.get("sources") or {}
    provenance = _changed(
        {k: pa.get(k) for k in ("commit", "dirty", "diff_hash", "gpu", "dsl", "torch", "arch", "host")},
        {k: pb.get(k) for k in ("commit", "dirty", "diff_hash", "gpu", "dsl", "torch", "arch", "host")},
    )
    sa, sb = _shape_map(a), _shape_map(b)
    shapes = []
    for key in dict.fromkeys([*sa, *sb]):
        xa, xb = sa.get(key), sb.get(key)
        if xa is None or xb is None:
            shapes.append({"probe": key, "a": xa and xa.get("layout"), "b": xb and xb.get("layout"), "change": "added" if xa is None else "removed"})
        elif xa.get("layout") != xb.get("layout") or xa.get("rank") != xb.get("rank"):
            change = "modes" if xa.get("rank") != xb.get("rank") else "layout"
            shapes.append({"probe": key, "a": xa.get("layout"), "b": xb.get("layout"), "rank_a": xa.get("rank"), "rank_b": xb.get("rank"), "change": change})
    ta, tb = a.get("timing", {}), b.get("timing", {})
    timing = [
        {"key": k, "a": ta.get(k), "b": tb.get(k), "delta": (tb.get(k) or 0) - (ta.get(k) or 0)}
        for k in ("compile_s", "run_s", "total_s")
        if ta.get(k) is not None and tb.get(k) is not None
    ]
    speed = _speed_diff(a, b)
    # COMPILED (wb compile: no fixtures run) says nothing of correctness: no regression
    regressed = (a["verdict"] == "PASS" and b["verdict"] not in ("PASS", "COMPILED")) or any(f["regressed"] for f in fixtures)
    return {
        "a": {"id": a["id"], "stage": a["stage"], "verdict": a["verdict"], "started": a.get("started")},
        "b": {"id": b["id"], "stage": b["stage"], "verdict": b["verdict"], "started": b.get("started")},
        "verdict_flip": a["verdict"] != b["verdict"],
        "fixtures": fixtures,
        "params": _changed(a.get("params", {}), b.get("params", {})),
        "variants": _changed(a.get("variants", {}), b.get("variants", {})),
        "provenance": provenance,
        "sources_changed": sorted(k for k in {*sources_a, *sources_b} if sources_a.get(k) != sources_b.get(k)),
        "shapes": shapes,
        "timing": timing,
        "speed": speed,
        "sanitizer": _sanitizer_diff(a, b),
        "counters": _counter_diff(a, b),
        "regressed": regressed,
    }


def _speed_diff(a: dict, b: dict) -> list[dict[str, Any]]:
    """Bench results present in both runs, keyed by case (filled by `wb bench`)."""
    ba = {c["case"]: c for c in a.get("bench", []) if "case" in c}
    bb = {c["case"]: c for c in b.get("bench", []) if "case" in c}
    out = []
    for case in ba.keys() & bb.keys():
        va, vb = ba[case].get("tflops"), bb[case].get("tflops")
        ratio = _ratio(vb, va) if va and vb else None
        if ratio is not None:
            out.append({"case": case, "a": va, "b": vb, "ratio": ratio})
    return sorted(out, key=lambda x: x["case"])


def _where(finding: dict) -> str:
    return f"{str(finding.get('file') or '?').rpartition('/')[2]}:{finding.get('line') or '?'} {finding.get('message')}"


def _sanitizer_diff(a: dict, b: dict) -> dict[str, Any] | None:
    """wb run --sanitize in either run: the tools, their verdicts, and which findings (by
    source line and message, stage kernels only) appeared or went away."""
    sa, sb = a.get("sanitizer") or {}, b.get("sanitizer") or {}
    if not sa and not sb:
        return None
    fa = {_where(f) for f in sa.get("findings") or [] if f.get("stage_kernel")}
    fb = {_where(f) for f in sb.get("findings") or [] if f.get("stage_kernel")}
    return {
        "tool": [sa.get("tool"), sb.get("tool")],
        "verdict": [sa.get("verdict"), sb.get("verdict")],
        "findings_in_stage": [sa.get("findings_in_stage"), sb.get("findings_in_stage")],
        "new": sorted(fb - fa),
        "gone": sorted(fa - fb),
    }


def _counter_diff(a: dict, b: dict) -> list[dict[str, Any]]:
    """wb profile in both runs: each headline counter that changed, A -> B (ratio when both
    are non-zero): "bank conflicts 4x fewer, tensor pipe +6 points"."""
    ca = ((a.get("profile") or {}).get("counters")) or {}
    cb = ((b.get("profile") or {}).get("counters")) or {}
    out = []
    for key in ca.keys() & cb.keys():
        va, vb = ca[key], cb[key]
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool) and va != vb:
            out.append({"counter": key, "a": va, "b": vb, "delta": vb - va, "ratio": _ratio(vb, va)})
    return sorted(out, key=lambda c: c["counter"])


def _ratio(b, a) -> float | None:
    """b / a, or None where a is 0 or the quotient is past a float (integers of 300 digits)."""
    try:
        return b / a if a else None
    except (OverflowError, ZeroDivisionError):
        return None
