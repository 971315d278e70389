"""The speed chart of a bench record, with matplotlib (the optional `pictures` extra): one
group of bars per case (the stage's TFLOP/s and each peer's, timed in the same call), the
card's measured dense matmul peak as a line with a %-of-peak axis above, and wb's ratio to the
best peer (yardsticks left out) at the end of its bar. `wb bench` writes it to
runs/<id>/speed.png; `wb bench --sweep` also beside the kernel's perf doc (docs/perf.png for
fmha), which embeds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.diagnose.pictures import available, pyplot, save

#: the most TFLOP/s a chart or perf doc shows as a speed: a record from elsewhere may hold inf,
#: NaN or 10**300 (the schema reads them), which are no speed of any card
MAX_TFLOPS = 1e6
#: the most cases and series (wb and its peers) one chart draws: its height grows with the
#: cases (a record of 4,400 took 3 minutes and 34 MB to draw; the perf doc's sweep has 44)
MAX_CHART_CASES = 200
MAX_CHART_SERIES = 12


def speed(value: Any) -> float | None:
    """``value`` as a TFLOP/s figure to show, or None: not a number, not finite, not above 0,
    or past MAX_TFLOPS."""
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if 0 < v < MAX_TFLOPS else None  # (NaN fails both comparisons)


WB_COLOUR = "#1f4e79"
PEER_COLOURS = ["#e07b39", "#7a9e3a", "#9b59b6", "#c0392b", "#16a085", "#7f8c8d"]


def case_label(case: dict[str, Any]) -> str:
    """A short row label: the case's row and its column value (n=4096), else the case text."""
    column = case.get("column") or "n"
    value = (case.get("params") or {}).get(column)
    if case.get("row") is not None and value is not None:
        return f"{case['row']} · {column}={value}"
    return str(case.get("case", "?"))


def best_peer(case: dict[str, Any], yardsticks: tuple[str, ...] = ()) -> float | None:
    values = [speed(p.get("tflops")) for name, p in (case.get("peers") or {}).items() if name not in yardsticks]
    values = [v for v in values if v]
    return max(values) if values else None


def draw_speed_chart(path: Path, record: dict[str, Any], yardsticks: tuple[str, ...] = ()) -> Path | None:
    """The chart of ``record`` (a bench record) at ``path``; None when there is nothing timed,
    more than MAX_CHART_CASES cases or MAX_CHART_SERIES series to draw, or no matplotlib."""
    cases = [{**c, "tflops": speed(c.get("tflops"))} for c in record.get("bench") or []]
    cases = [c for c in cases if c["tflops"]]
    if not cases or len(cases) > MAX_CHART_CASES or not available():
        return None
    peers = sorted({name for c in cases for name, p in (c.get("peers") or {}).items() if speed(p.get("tflops"))})
    series = [f"wb {record['stage']}"] + peers
    if len(series) > MAX_CHART_SERIES:
        return None
    plt = pyplot()
    n = len(cases)
    bar = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(10, max(3.4, 1.6 + n * (0.35 + 0.22 * len(series)))), constrained_layout=True)
    for s, name in enumerate(series):
        values = [c["tflops"] if s == 0 else speed(((c.get("peers") or {}).get(name) or {}).get("tflops")) or 0.0 for c in cases]
        ys = [i + (s - (len(series) - 1) / 2) * bar for i in range(n)]
        ax.barh(ys, values, height=bar * 0.92, color=WB_COLOUR if s == 0 else PEER_COLOURS[(s - 1) % len(PEER_COLOURS)], label=name)
        for y, value, c in zip(ys, values, cases):
            if s == 0:
                best = best_peer(c, yardsticks)
                text = f"{c['tflops']:.0f}" + (f"  ×{c['tflops'] / best:.2f} of the best peer" if best else "")
                ax.text(value, y, " " + text, va="center", fontsize=8, color=WB_COLOUR, fontweight="bold")
            elif value:
                ax.text(value, y, f" {value:.0f}", va="center", fontsize=7, color="0.35")
    ax.set_yticks(range(n), [case_label(c) for c in cases], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("TFLOP/s (median, L2 flushed, every kernel checked first)")
    peak = speed((record.get("peak") or {}).get("tflops"))
    right = max([c["tflops"] for c in cases] + [speed(p.get("tflops")) or 0 for c in cases for p in (c.get("peers") or {}).values()])
    if peak:
        ax.axvline(peak, color="0.3", linestyle="--", linewidth=1)
        ax.text(peak, 0.02, f"peak {peak:.0f} ", transform=ax.get_xaxis_transform(), rotation=90,
                fontsize=8, color="0.3", ha="right", va="bottom")
        top = ax.secondary_xaxis("top", functions=(lambda x: 100 * x / peak, lambda p: p * peak / 100))
        top.set_xlabel("% of the card's dense bf16 matmul")
        right = max(right, peak)
    ax.set_xlim(0, right * 1.25)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    prov = record.get("provenance") or {}
    ax.set_title(
        f"{record['stage']} on {prov.get('gpu') or '?'} · run {record.get('id', '?')} · commit {(prov.get('commit') or '?')[:10]}"
        + (" (dirty)" if prov.get("dirty") else ""), fontsize=9,
    )
    return save(fig, path)


def draw_roofline(path: Path, points: list[dict[str, Any]], dram_gbps: float | None, peak_tflops: float | None, title: str,
                  peak_source: str = "wb bench") -> Path | None:
    """The card's roofline (DRAM bandwidth roof, dense matmul roof) with each kernel's point:
    {"label", "intensity" (FLOP per DRAM byte), "tflops"}. None without matplotlib or points.
    ``peak_source`` names where the compute roof comes from; without one, no point gets a
    share of "the roof" (the DRAM line alone is no ceiling for a compute-bound kernel)."""
    points = [p for p in points if p.get("intensity") and p.get("tflops")]
    if not points or not available():
        return None
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    low = min(1.0, min(p["intensity"] for p in points) / 4)
    high = max(1e4, max(p["intensity"] for p in points) * 4)
    xs = np.logspace(np.log10(low), np.log10(high), 200)
    top = max([p["tflops"] for p in points] + [peak_tflops or 0])
    if dram_gbps:
        roof = xs * dram_gbps / 1e3  # FLOP/byte x TB/s = TFLOP/s
        if peak_tflops:
            roof = np.minimum(roof, peak_tflops)
        ax.plot(xs, roof, color="0.25", linewidth=1.5, label=f"DRAM {dram_gbps / 1e3:.2f} TB/s (ncu)" + (f", dense matmul {peak_tflops:.0f} TFLOP/s ({peak_source})" if peak_tflops else ", no compute roof known (wb bench measures it)"))
    elif peak_tflops:
        ax.axhline(peak_tflops, color="0.25", linewidth=1.5, label=f"dense matmul {peak_tflops:.0f} TFLOP/s ({peak_source})")
    for i, p in enumerate(points):
        colour = WB_COLOUR if i == 0 else PEER_COLOURS[(i - 1) % len(PEER_COLOURS)]
        ceiling = min(peak_tflops, p["intensity"] * dram_gbps / 1e3 if dram_gbps else float("inf")) if peak_tflops else None
        share = f" ({100 * p['tflops'] / ceiling:.0f}% of the roof)" if ceiling else ""
        ax.scatter([p["intensity"]], [p["tflops"]], s=60, color=colour, zorder=3, label=f"{p['label']}: {p['tflops']:.0f} TFLOP/s{share}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(max(0.1, min(p["tflops"] for p in points) / 20), top * 2)
    ax.set_xlabel("arithmetic intensity (FLOP per DRAM byte, ncu's DRAM traffic)")
    ax.set_ylabel("TFLOP/s (the stage's FLOP count / ncu's kernel time)")
    ax.grid(True, which="both", color="0.92", linewidth=0.5)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    ax.set_title(title[:120], fontsize=9)
    return save(fig, path)
