"""Tile timelines from in-kernel clock stamps: a Chrome/Perfetto trace file and its summary.

A traced kernel writes clock() stamps per CTA, warpgroup ("lane") and work tile, and each
CTA's (globaltimer, clock) at its start and end, into an int32 buffer laid out by a
``StampLayout``. ``decode`` turns the buffer into ``Slice``s (a lane's span between two
stamps: a whole work tile, or one phase of it) and ``Clock``s (one per CTA, to convert its
clock to nanoseconds), given the kernel's phases (which stamps bound which part of a tile:
stages/fmha/trace.py, stages/moe/trace.py). This module is kernel-agnostic:

- ``chrome_trace``: the Trace Event Format JSON that ui.perfetto.dev and chrome://tracing
  open: one process per CTA, one thread per lane, tiles as complete ("X") events with their
  phases nested inside, times in µs from the first CTA's start;
- ``validate``: the format's rules this file relies on (what Perfetto's JSON importer needs);
- ``summarize``: CTA start skew, the spread of CTA end times (wave quantization: the last
  CTA's work past the median one's), tiles per CTA, and the median of each phase.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WRAP = 2**32  # clock() and the low word of globaltimer are 32-bit: differences are taken mod 2^32


@dataclass
class Clock:
    """One CTA's (globaltimer ns, clock) at its start and at its end."""

    start_ns: int
    start_clk: int
    end_ns: int
    end_clk: int

    @property
    def ns_per_clk(self) -> float:
        cycles = (self.end_clk - self.start_clk) % WRAP
        return ((self.end_ns - self.start_ns) % WRAP) / cycles if cycles else float("nan")

    def ns(self, clk: int) -> float:
        """ns since this CTA's start of a clock() stamp taken in it."""
        return ((clk - self.start_clk) % WRAP) * self.ns_per_clk


@dataclass
class Slice:
    cta: int
    lane: str  # "producer", "WG1", ...
    name: str  # "tile 3", or a phase: "first softmax + P"
    start: int  # clock() stamps
    end: int
    kind: str = "phase"  # "tile" (a work tile's whole span) or "phase" (inside one)
    tile: int = 0  # the lane's work-tile index on its CTA


@dataclass
class Timeline:
    """What a stage's ``trace`` hook returns (wb run --trace): one launch's decoded stamps."""

    slices: list[Slice]
    clocks: dict[int, Clock]
    lanes: list[str]  # thread names, in order: "producer", "WG1", ...
    title: str
    meta: dict[str, Any] | None = None
    tiles_stamped: int | None = None  # the layout's limit: each CTA's first so many tiles are stamped
    # launches the untraced build whose output bits the traced one's must equal, (inputs,
    # outputs) -> None, where that is not the run's own build (the trace changed a variant)
    untraced: Callable[[Any, Any], None] | None = None


@dataclass(frozen=True)
class StampLayout:
    """An int32 trace buffer: ``base`` words of the kernel's own first; then per CTA, lane
    slot (``slots`` of them: the producer and the consumer warpgroups) and work tile (the
    CTA's first ``tiles``), ``events`` clock() stamps; then each CTA's (globaltimer, clock)
    at its start and at its end. The index methods take plain ints on the host and DSL
    integers in the kernel."""

    slots: int
    tiles: int
    events: int
    base: int = 0

    def word(self, cta, lane, j, event=0):
        """Index of ``event`` of lane ``lane``'s ``j``-th work tile on CTA ``cta``."""
        return self.base + ((cta * self.slots + lane) * self.tiles + j) * self.events + event

    def clock_word(self, ctas, cta):
        """Index of CTA ``cta``'s start (globaltimer, clock) pair, its end pair right after."""
        return self.word(ctas, 0, 0) + 4 * cta

    def length(self, ctas: int) -> int:
        """The buffer's length (words) for a grid of ``ctas``."""
        return self.clock_word(ctas, ctas)


Phases = list[tuple[str, int, int]]  # (name, first stamp, last stamp) of one part of a work tile


def decode(words: list[int], ctas: int, layout: StampLayout, lanes: list[tuple[str, Phases]]) -> tuple[list[Slice], dict[int, Clock]]:
    """One traced launch's buffer -> the slices and each CTA's clock. ``lanes``: per slot in
    order, its name and phases; a tile's span runs from its stamp 0 to the last phase's end.
    A tile whose stamps are all zero was never reached; a phase with a zero stamp was not
    stamped on that path (e.g. a warpgroup with no rows in the tile), and is left out."""
    if len(words) < layout.length(ctas):  # (it read as "not enough values to unpack")
        raise ValueError(f"the trace buffer holds {len(words)} words, fewer than the {layout.length(ctas)} "
                         f"its layout needs for {ctas} CTAs (a smaller buffer than the launch's grid)")
    slices: list[Slice] = []
    clocks: dict[int, Clock] = {}
    for cta in range(ctas):
        base = layout.clock_word(ctas, cta)
        gt0, ck0, gt1, ck1 = (w % WRAP for w in words[base: base + 4])
        if not (gt0 or gt1):
            continue  # a CTA of the grid that never ran (a smaller launch than the buffer)
        clocks[cta] = Clock(gt0, ck0, gt1, ck1)
        for slot, (lane, parts) in enumerate(lanes):
            last = parts[-1][2]
            for j in range(layout.tiles):
                at = layout.word(cta, slot, j)
                ev = [w % WRAP for w in words[at: at + layout.events]]
                if not (ev[0] and ev[last]):
                    continue
                slices.append(Slice(cta, lane, f"tile {j}", ev[0], ev[last], kind="tile", tile=j))
                slices += [Slice(cta, lane, name, ev[a], ev[b], tile=j) for name, a, b in parts if ev[a] and ev[b]]
    return slices, clocks


def write(timeline: "Timeline", path) -> dict[str, Any]:
    """Write the timeline's trace file (validated first) and return its summary, with the
    file's name and event count; ValueError when the trace would not load as intended."""
    import json
    from pathlib import Path

    if not timeline.clocks:  # every CTA's clock words zero: min() of no start said only "empty sequence"
        raise ValueError("no CTA wrote its start and end (globaltimer, clock) pairs: the buffer holds no timeline")
    events = chrome_trace(timeline.slices, timeline.clocks, timeline.title, timeline.lanes, timeline.meta)
    problems = validate(events)
    if problems:
        raise ValueError("the trace would not load as intended: " + "; ".join(problems[:3]))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(events, allow_nan=False))
    tmp.replace(path)
    return {"file": path.name, "events": len(events["traceEvents"]), "lanes": timeline.lanes,
            "tiles_stamped_per_cta": timeline.tiles_stamped, **summarize(timeline.slices, timeline.clocks)}


def _offsets(clocks: dict[int, Clock]) -> tuple[int, dict[int, float]]:
    """The first CTA's start, and every CTA's start in ns after it."""
    first = min(c.start_ns for c in clocks.values())
    return first, {cta: float((c.start_ns - first) % WRAP) for cta, c in clocks.items()}


def _times(s: Slice, clocks: dict[int, Clock], offsets: dict[int, float]) -> tuple[float, float]:
    c = clocks[s.cta]
    start = offsets[s.cta] + c.ns(s.start)
    return start, start + ((s.end - s.start) % WRAP) * c.ns_per_clk


def chrome_trace(slices: list[Slice], clocks: dict[int, Clock], title: str, lanes: list[str], meta: dict[str, Any] | None = None) -> dict:
    """The Trace Event Format object (json.dump it): pid = CTA, tid = lane index."""
    _, offsets = _offsets(clocks)
    events: list[dict[str, Any]] = []
    for cta in sorted(clocks):
        events.append({"ph": "M", "name": "process_name", "pid": cta, "tid": 0, "args": {"name": f"CTA {cta}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": cta, "tid": 0, "args": {"sort_index": cta}})
        for tid, lane in enumerate(lanes):
            events.append({"ph": "M", "name": "thread_name", "pid": cta, "tid": tid, "args": {"name": lane}})
    tid_of = {lane: i for i, lane in enumerate(lanes)}
    # a tile before its phases at equal start times: viewers nest by order within a thread
    for s in sorted(slices, key=lambda s: (s.cta, tid_of[s.lane], _times(s, clocks, offsets)[0], s.kind != "tile")):
        start, end = _times(s, clocks, offsets)
        events.append({
            "ph": "X", "name": s.name, "cat": s.kind, "pid": s.cta, "tid": tid_of[s.lane],
            "ts": round(start / 1e3, 4), "dur": round(max(end - start, 0.0) / 1e3, 4), "args": {"tile": s.tile},
        })
    return {"traceEvents": events, "displayTimeUnit": "ns", "otherData": {"title": title, **(meta or {})}}


def validate(trace: Any) -> list[str]:
    """What would keep a Trace Event Format JSON from loading as intended (empty: fine): the
    object form with a traceEvents list; every event a phase, pid and tid; complete events
    with numeric ts >= 0 and dur >= 0; metadata events naming processes and threads; complete
    events of one thread properly nested (a child inside its parent, no partial overlap)."""
    problems: list[str] = []
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        return ["not an object with a traceEvents list"]
    spans: dict[tuple, list[tuple[float, float, str]]] = {}
    for i, e in enumerate(trace["traceEvents"]):
        if not isinstance(e, dict) or e.get("ph") not in ("X", "M", "B", "E", "i", "C"):
            problems.append(f"event {i}: no known phase ('ph')")
            continue
        if not isinstance(e.get("pid"), int) or not isinstance(e.get("tid"), int):
            problems.append(f"event {i}: pid and tid must be integers")
        if not isinstance(e.get("name"), str) or not e["name"]:
            problems.append(f"event {i}: no name")
        if e["ph"] == "M":
            if e.get("name") in ("process_name", "thread_name") and not isinstance((e.get("args") or {}).get("name"), str):
                problems.append(f"event {i}: {e.get('name')} without args.name")
            continue
        ts, dur = e.get("ts"), e.get("dur")
        if not _finite(ts) or ts < 0:
            problems.append(f"event {i}: ts must be a number >= 0")
            continue
        if e["ph"] == "X":
            if not _finite(dur) or dur < 0:
                problems.append(f"event {i}: dur must be a number >= 0")
                continue
            spans.setdefault((e["pid"], e["tid"]), []).append((float(ts), float(ts) + float(dur), e["name"]))
    eps = 1e-3  # µs: the rounding of ts and dur
    for (pid, tid), items in spans.items():
        stack: list[tuple[float, float, str]] = []
        for start, end, name in sorted(items, key=lambda x: (x[0], -x[1])):
            while stack and start >= stack[-1][1] - eps:
                stack.pop()
            if stack and end > stack[-1][1] + eps:
                problems.append(f"pid {pid} tid {tid}: '{name}' at {start:.3f} µs overlaps '{stack[-1][2]}' without nesting")
                break
            stack.append((start, end, name))
    return problems


def _finite(value: Any) -> bool:
    """A number JSON can hold: NaN (a CTA whose clock did not advance) is no JSON, and the
    viewers refuse the file."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarize(slices: list[Slice], clocks: dict[int, Clock]) -> dict[str, Any]:
    """The timeline in numbers (ns): CTA start skew, CTA end spread (first, median, last),
    tiles per CTA (min, max), and the median of each phase over every lane and tile."""
    _, offsets = _offsets(clocks)
    ends = sorted(offsets[cta] + (c.end_ns - c.start_ns) % WRAP for cta, c in clocks.items())
    starts = sorted(offsets.values())
    tiles: dict[int, set] = {}
    phases: dict[str, list[float]] = {}
    for s in slices:
        if s.kind == "tile":
            tiles.setdefault(s.cta, set()).add((s.lane, s.tile))
        else:
            phases.setdefault(f"{s.lane.rstrip('0123456789') or s.lane}: {s.name}", []).append(((s.end - s.start) % WRAP) * clocks[s.cta].ns_per_clk)
    per_cta = [len({t for lane, t in v}) for v in tiles.values()] or [0]
    return {
        "ctas": len(clocks),
        "cta_start_skew_ns": starts[-1] - starts[0],
        "cta_end_first_ns": ends[0],
        "cta_end_median_ns": statistics.median(ends),
        "cta_end_last_ns": ends[-1],
        "tail_ns": ends[-1] - statistics.median(ends),  # the last CTA's work past the median CTA's end
        "tiles_per_cta": [min(per_cta), max(per_cta)],
        "phase_median_ns": {name: statistics.median(v) for name, v in sorted(phases.items())},
    }
