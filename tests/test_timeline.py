"""Tile timelines (workbench/run/timeline.py, stages/fmha/trace.py) from real stamps: 8 CTAs of
a traced stage D launch on an H200 (tests/data/trace_stage_d_h200_8ctas.json, d=64 s=8192
causal, 2 consumer warpgroups), turned into a Perfetto/Chrome trace and its summary."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from workbench.records import report
from workbench.run import timeline

DATA = Path(__file__).parent / "data" / "trace_stage_d_h200_8ctas.json"


@pytest.fixture(scope="module")
def stamps():
    from stages.fmha import trace

    saved = json.loads(DATA.read_text())
    assert "events" not in saved  # a save from before the steady step's stamps
    slices, clocks = trace.decode(saved["words"], saved["ctas"], saved["consumer_wgs"], trace.EVENTS_BEFORE_STEP_STAMPS)
    return saved, slices, clocks, trace.lanes(saved["consumer_wgs"])


def test_the_trace_has_a_process_per_cta_a_thread_per_warpgroup_and_nested_phases(stamps):
    saved, slices, clocks, lanes = stamps
    events = timeline.chrome_trace(slices, clocks, "stage D", lanes)
    assert timeline.validate(json.loads(json.dumps(events))) == []
    names = {(e["pid"], e["args"]["name"]) for e in events["traceEvents"] if e["name"] == "process_name"}
    assert names == {(c, f"CTA {c}") for c in range(8)}
    threads = {e["args"]["name"] for e in events["traceEvents"] if e["name"] == "thread_name"}
    assert threads == {"producer", "WG1", "WG2"}
    tiles = [e for e in events["traceEvents"] if e.get("cat") == "tile"]
    # each lane's tiles follow one another (longest first: the first causal tile is the longest)
    for (pid, tid) in {(e["pid"], e["tid"]) for e in tiles}:
        mine = sorted((e for e in tiles if (e["pid"], e["tid"]) == (pid, tid)), key=lambda e: e["ts"])
        assert all(a["ts"] + a["dur"] <= b["ts"] + 1e-3 for a, b in zip(mine, mine[1:]))
        assert mine[0]["dur"] > mine[-1]["dur"]
    # the phases of a consumer tile tile it: they add up to the tile's span
    first = next(e for e in tiles if e["pid"] == 0 and e["tid"] == 1 and e["args"]["tile"] == 0)
    phases = [e for e in events["traceEvents"] if e.get("cat") == "phase" and e["pid"] == 0 and e["tid"] == 1 and e["args"]["tile"] == 0]
    assert len(phases) == 7 and sum(p["dur"] for p in phases) == pytest.approx(first["dur"], abs=0.01)


def test_the_summary_agrees_with_the_clock_pairs(stamps):
    saved, slices, clocks, _ = stamps
    s = timeline.summarize(slices, clocks)
    assert s["ctas"] == 8 and s["tiles_per_cta"][1] <= 32
    first = min(c.start_ns for c in clocks.values())
    ends = sorted((c.end_ns - first) for c in clocks.values())
    assert (s["cta_end_first_ns"], s["cta_end_last_ns"]) == (ends[0], ends[-1])
    assert 1.0e6 < s["cta_end_last_ns"] < 1.3e6  # this launch ran ~1.19 ms (untraced median 1.25 ms over 100 launches)
    steady = s["phase_median_ns"]["WG: steady steps (all)"]
    assert 0.85 < steady / s["phase_median_ns"]["producer: K/V ring (rest)"] < 1.15  # the ring feeds the steps
    assert all(v >= 0 for v in s["phase_median_ns"].values())


def test_validate_names_what_would_not_load():
    assert timeline.validate([]) == ["not an object with a traceEvents list"]
    bad = {"traceEvents": [
        {"ph": "X", "name": "a", "pid": 0, "tid": 0, "ts": 0, "dur": 10},
        {"ph": "X", "name": "b", "pid": 0, "tid": 0, "ts": 5, "dur": 10},  # overlaps a without nesting
        {"ph": "X", "name": "c", "pid": 0, "tid": 1, "ts": -1, "dur": 1},
        {"ph": "M", "name": "thread_name", "pid": 0, "tid": 1, "args": {}},
    ]}
    problems = timeline.validate(bad)
    assert any("'b'" in p and "without nesting" in p for p in problems)
    assert any("ts must be a number >= 0" in p for p in problems)
    assert any("thread_name without args.name" in p for p in problems)


def test_trace_tiles_writes_a_perfetto_file_from_saved_stamps(tmp_path):
    out = tmp_path / "d.trace.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "trace_tiles.py"), "--from-json", str(DATA), "--perfetto", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "8 CTAs" in proc.stdout and timeline.validate(json.loads(out.read_text())) == []


def test_trace_tiles_refuses_a_broken_save_in_one_line(tmp_path):
    """Every kind of broken --from-json save was a traceback (JSONDecodeError, KeyError: 'args',
    a bare StopIteration when the words were cut short, TypeError on odd values)."""
    saved = json.loads(DATA.read_text())
    saved.pop("ctas", None)
    cases = {
        "cut.json": ('{"args": {', "cannot read"),
        "empty.json": ("{}", "expected an object with 'args'"),
        "list.json": ("[]", "expected an object with 'args'"),
        "short.json": (json.dumps({**saved, "words": saved["words"][:-7]}), "no whole number of CTAs' stamps"),
        "events.json": (json.dumps({**saved, "events": "x"}), "'events' must be a whole number above 0"),
        "words.json": (json.dumps({**saved, "words": ["a"]}), "'words' must be a list of whole numbers"),
        "missing.json": (None, "cannot read"),
    }
    for name, (text, fragment) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        proc = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "trace_tiles.py"), "--from-json", str(path), "--perfetto", str(tmp_path / "o.json")],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert proc.stderr.strip().count("\n") == 0 and fragment in proc.stderr, (name, proc.stderr)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "trace_tiles.py"), "--from-json", str(DATA), "--perfetto", str(tmp_path / "no" / "o.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1 and proc.stderr.strip().startswith("trace_tiles: cannot write"), proc.stderr


# ----------------------------------------------------------------------------- wb run --trace


def test_wb_run_trace_writes_the_timeline_beside_the_record(toy_ws, wb):
    """The toy stage's trace hook times its CPU doubling in 64-row tiles on two 'CTAs': the
    record, report.md and the terminal carry the summary, trace.json loads as a trace."""
    proc = wb("run", "a", "--n", "512", "-f", "toy-ones", "--trace", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    found = record["trace"]
    assert found["file"] == "trace.json" and found["fixture"] == "toy-ones" and found["lanes"] == ["WG1"]
    assert found["ctas"] == 2 and found["tiles_per_cta"] == [4, 4]  # 512 rows: 256 per CTA, 64-row tiles
    assert set(found["phase_median_ns"]) == {"WG: load", "WG: compute"}
    assert found["bits_differing_from_untraced"] == {"y": 0}  # the traced build computes what the untraced does
    run_dir = toy_ws / "runs" / record["id"]
    events = json.loads((run_dir / "trace.json").read_text())
    assert timeline.validate(events) == [] and len([e for e in events["traceEvents"] if e.get("cat") == "tile"]) == 8
    assert "## Tile timeline" in (run_dir / "report.md").read_text()
    shown = wb("run", "a", "--n", "512", "-f", "toy-ones", "--trace")
    assert "trace: runs/" in shown.stdout and "open in ui.perfetto.dev" in shown.stdout


def test_the_bits_are_compared_with_the_untraced_build_the_trace_names(toy_ws, wb):
    """A trace that had to change a variant names the untraced build its bits must equal
    (Timeline.untraced; fmha stage D: split_tail=off). The toy's bug=nan run build writes a
    NaN the traced doubling does not (the run FAILs on it); against the bug-free twin the
    trace names, no element differs."""
    proc = wb("run", "a", "--n", "512", "-f", "toy-ones", "-V", "bug=nan", "--trace", "--json")
    record = json.loads(proc.stdout)
    assert record["verdict"] == "FAIL" and record["results"][0]["outputs"]["y"]["nan"] == 1
    assert record["trace"]["bits_differing_from_untraced"] == {"y": 0}, record["trace"]


def test_trace_refusals_are_one_line_with_exit_2(toy_ws, wb):
    proc = wb("run", "b", "--trace")
    assert proc.returncode == 2 and "--trace: toy/stage-b has no trace hook" in proc.stderr and "Traceback" not in proc.stderr
    proc = wb("run", "a", "--trace", "--host", "h100")
    assert proc.returncode == 2 and "--trace runs on this machine only" in proc.stderr
    assert not (toy_ws / "runs").exists() or not any(p.name != "reports" for p in (toy_ws / "runs").iterdir())


def test_a_cta_at_the_stamp_limit_is_said_to_have_tiles_missing(stamps, tmp_path):
    """stage D stamps each CTA's first 32 tiles: a trace whose busiest CTA reached 32 says its
    later tiles are not in it; one below the limit says nothing."""
    saved, slices, clocks, lanes = stamps
    found = timeline.write(timeline.Timeline(slices, clocks, lanes, "stage D", tiles_stamped=32), tmp_path / "t.json")
    assert found["tiles_stamped_per_cta"] == 32
    assert report.stamped_note({**found, "tiles_per_cta": [28, 32]}).startswith(" (only each CTA's first 32 tiles are stamped")
    assert report.stamped_note({**found, "tiles_per_cta": [5, 6]}) == ""
    assert report.stamped_note({"tiles_per_cta": [5, 40]}) == ""  # a hook that names no limit


def test_a_cta_whose_clock_did_not_advance_is_refused_not_written_as_nan(tmp_path):
    """A CTA whose start and end clock() read the same (odd stamps) has no ns per cycle: its
    events' ts and dur were NaN, validate passed them (NaN < 0 is false) and trace.json held
    NaN, which is no JSON and no viewer opens. Now the trace is refused in one message."""
    clocks = {0: timeline.Clock(start_ns=100, start_clk=5, end_ns=200, end_clk=5)}
    line = timeline.Timeline([timeline.Slice(0, "WG1", "tile 0", 5, 9, kind="tile")], clocks, ["WG1"], "odd")
    assert any("ts must be a number >= 0" in p for p in timeline.validate(
        timeline.chrome_trace(line.slices, line.clocks, line.title, line.lanes)))
    with pytest.raises(ValueError, match="would not load as intended"):
        timeline.write(line, tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


def test_a_buffer_without_clock_pairs_says_so(tmp_path):
    """A buffer whose CTAs' clock words are all zero (the kernel never wrote them) decodes to
    no CTA; the trace's error was min()'s 'arg is an empty sequence'."""
    layout = timeline.StampLayout(slots=1, tiles=2, events=2)
    slices, clocks = timeline.decode([0] * layout.length(2), 2, layout, [("WG1", [("work", 0, 1)])])
    assert (slices, clocks) == ([], {})
    with pytest.raises(ValueError, match="no CTA wrote its start and end"):
        timeline.write(timeline.Timeline(slices, clocks, ["WG1"], "empty"), tmp_path / "t.json")


def test_a_buffer_shorter_than_its_layout_says_so():
    """A buffer shorter than the layout for the grid failed as 'not enough values to unpack'."""
    layout = timeline.StampLayout(slots=1, tiles=2, events=2)
    with pytest.raises(ValueError, match=r"the trace buffer holds 11 words, fewer than the 16 its layout needs for 2 CTAs"):
        timeline.decode([0] * (layout.length(2) - 5), 2, layout, [("WG1", [("work", 0, 1)])])


def test_the_steady_step_stamps_decode_as_phases_inside_the_steady_steps():
    """Stamps 8..12 (inside steady step TRACED_STEP) decode as four phases between that
    step's start and end, inside "steady steps (all)"; the tile still ends at its O store; a
    tile of fewer visits (step stamps zero) just has no step phases."""
    from stages.fmha import trace

    ctas, wgs = 1, 2
    words = [0] * trace.LAYOUT.length(ctas)
    clock = trace.LAYOUT.clock_word(ctas, 0)
    words[clock: clock + 4] = [1000, 100, 9000, 900]
    # tile 0 of WG1: the tile's 8 stamps, steady steps from 300 to 700, step 2 inside them
    tile0 = [200, 220, 250, 300, 700, 750, 780, 800] + [400, 430, 480, 490, 520]
    # tile 1 of WG1: two KV visits only, no step 2
    tile1 = [810, 820, 830, 840, 860, 870, 880, 890] + [0] * 5
    for j, stamps in enumerate((tile0, tile1)):
        at = trace.trace_word(0, 1, j)
        words[at: at + trace.TRACE_EVENTS] = stamps
    slices, _ = trace.decode(words, ctas, wgs)
    mine = [s for s in slices if s.lane == "WG1" and s.tile == 0]
    (tile,) = [s for s in mine if s.kind == "tile"]
    assert (tile.start, tile.end) == (200, 800)
    (steady,) = [s for s in mine if s.name == "steady steps (all)"]
    step = [s for s in mine if s.name.startswith(f"step {trace.TRACED_STEP}:")]
    assert [(s.start, s.end) for s in step] == [(400, 430), (430, 480), (480, 490), (490, 520)]
    assert all(steady.start <= s.start and s.end <= steady.end for s in step)
    assert not [s for s in slices if s.lane == "WG1" and s.tile == 1 and s.name.startswith("step ")]
    assert [s for s in slices if s.lane == "WG1" and s.tile == 1 and s.kind == "tile"]
    # the same words read with the old 8-stamp layout land elsewhere: the layout matters
    assert trace.layout(trace.EVENTS_BEFORE_STEP_STAMPS).length(ctas) < trace.LAYOUT.length(ctas)
