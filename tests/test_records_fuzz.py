"""Any run.json: `wb runs`, `wb list`, `wb diff-run`, `wb report`, `wb explain` never trace back.

500 random records (issue "Trust nothing that comes in", item 2): a realistic record with
one field replaced by a value of a random wrong type or size (dicts where strings go, lists
where dicts go, NaN, 10^400, 200 KB strings, rich markup, control characters, deep nesting),
or a whole file that is not a record (invalid UTF-8, truncated, a JSON list, 100 000 nested
brackets). Every reader either uses the record or skips it with a warning; the commands exit
0, 1 or 2 with no traceback. Run in-process (the CLI's `main`) so 500 records take seconds.
"""

import copy
import json
import random
import warnings

import pytest

from workbench.records import memory, report
from workbench.cli import main
from workbench.records.diff import diff_runs
from workbench.records.store import list_records
from workbench.workspace import Workspace

BASE = {
    "schema": 1,
    "kind": "run",
    "kernel": "toy",
    "stage": "toy/stage-a",
    "letter": "a",
    "stage_title": "Scale",
    "params": {"n": 128, "dtype": "bf16"},
    "variants": {"bug": "none"},
    "variants_changed": {},
    "fixtures_requested": ["toy-random"],
    "seed": 0,
    "verdict": "FAIL",
    "error": None,
    "crashed_on": None,
    "results": [
        {
            "fixture": "toy-random",
            "label": "toy-random#0",
            "seed": 0,
            "variants": {"bug": "none"},
            "verdict": "FAIL",
            "outputs": {
                "y": {
                    "verdict": "FAIL", "cos": 0.5, "rel_l2": 0.9, "max_abs_err": 3.0, "max_err_at": [1, 2],
                    "tolerance": 0.01, "nan": 0, "inf": 0, "unwritten": 4, "reasons": ["max error 3 > tolerance 0.01"],
                }
            },
            "launch_s": 0.001,
            "diagnosis": {"status": "unexplained", "headline": "no known bug explains it", "candidates": []},
        }
    ],
    "shapes": [{"name": "gX", "key": "gX@stage_a.py", "location": "stages/toy/stage_a.py:12", "layout": "(64,64):(64,1)", "rank": 2, "kind": "probe"}],
    "about": {"proves": "scaling", "cannot_see": "nothing"},
    "fixture_notes": {"toy-random": {"isolates": "x", "hides": "y"}},
    "timing": {"compile_s": 0.1, "run_s": 0.01, "total_s": 1.0, "compile_cached": False, "compiles": [], "worker_reused": True},
    "provenance": {"commit": "abcdef1234", "dirty": True, "diff_hash": "ff", "gpu": "NVIDIA H200", "arch": "sm_90a", "sources": {"stages/toy/stage_a.py": "abc"}},
    "started": "2026-12-03T10:00:00+00:00",
    "finished": "2026-12-03T10:00:01+00:00",
    # wb run --sanitize / wb profile / wb run --trace
    "sanitizer": {
        "tool": "racecheck", "verdict": "RACE", "run_verdict": "FAIL", "errors": 1, "warnings": 0, "findings_total": 1,
        "findings_in_stage": 1, "log": "sanitizer.log",
        "findings": [{"message": "Error: Race reported", "kernel": "kernel_cutlass_x", "file": "s.py", "line": 3,
                      "details": ["and Read access at s.py:4"], "stage_kernel": True, "count": 2}],
    },
    "profile": {
        "tool": "ncu", "kernel": "kernel_cutlass_x", "grid": "(132, 1, 1)", "block": "(384, 1, 1)", "kernels": 1, "log": "ncu.log",
        "counters": {"duration_us": 10.0, "tensor_pipe_pct": 50.0, "stalls_top5": [{"reason": "wait", "value": 1.5}]},
        "roofline": {"flops": 1e9, "tflops": 100.0, "intensity": 10.0, "dram_peak_gbps": 4800.0}, "picture": "roofline.png",
        "notes": [], "metrics_count": 10,
    },
    "trace": {
        "file": "trace.json", "fixture": "toy-ones", "events": 10, "lanes": ["WG1"], "ctas": 2, "cta_start_skew_ns": 5,
        "cta_end_first_ns": 100, "cta_end_median_ns": 110, "cta_end_last_ns": 120, "tail_ns": 10, "tiles_per_cta": [1, 2],
        "phase_median_ns": {"WG: load": 3.0}, "bits_differing_from_untraced": {"y": 0},
    },
}

BAD_VALUES = [
    None, True, 0, -1, 10**400 if False else 10**40, float("nan"), float("inf"), "", "x" * 200_000,
    "[bold red]markup[/] [/]", "line\nbreak\x00nul\x1b[31m", "<!-- wb:end log -->", "ünï", [], [1, 2], [[[]]],
    {}, {"x": 1}, {"verdict": {"x": 1}}, [{"a": None}], {"": None},
]


def _paths(value, prefix=()):
    """Every path into the record (dict keys and list indices)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def mutate(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.08:  # not a record at all
        return rng.choice([
            '{"stage": "toy/stage-a", "verd',
            "[1, 2, 3]",
            "null",
            "[" * 100_000 + "]" * 100_000,
            json.dumps(BASE)[:-40],
            '{"stage": "toy/stage-a", "verdict": "PASS"}\udcff',
        ])
    record = copy.deepcopy(BASE)
    for _ in range(rng.randrange(1, 4)):
        paths = [p for p in _paths(record) if p]
        path = rng.choice(paths)
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = copy.deepcopy(rng.choice(BAD_VALUES))
    return json.dumps(record, allow_nan=True)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-ws")
    from tests.conftest import copy_toy_ws

    copy_toy_ws(root, dirs_exist_ok=True)
    rng = random.Random(14)
    runs = root / "runs"
    for i in range(500):
        d = runs / f"20261203-10{i // 60:02d}{i % 60:02d}-{i:06d}"
        d.mkdir(parents=True)
        text = mutate(rng)
        (d / "run.json").write_bytes(text.encode("utf-8", "surrogateescape") if rng.random() > 0.03 else b"\xff\xfe" + text.encode()[:100])
    return root


def test_every_reader_survives_500_random_records(fuzzed, capsys):
    ws = Workspace(fuzzed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = list_records(ws.runs_dir)
    assert 20 < len(records) < 500  # some survived validation, some were skipped
    for a, b in zip(records, records[1:]):
        diff_runs(a, b)
    for r in records:
        report.run_markdown(r)
    report.stage_markdown(report.stage_history(ws, "toy/stage-a"))
    from workbench.cli.render import render_diff, render_run, render_runs

    render_runs(records)
    for r in records[:60]:
        render_run(r)
    render_diff(diff_runs(records[0], records[1]))
    memory.update_blocks(ws, memory.run_edits(list(reversed(records))))
    memory._scan(memory.split_lines(ws.memory_path.read_text()))
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv",
    [["runs"], ["runs", "-n", "500", "--json"], ["list"], ["diff-run"], ["diff-run", "last~3", "last"], ["report", "last"],
     ["report", "a"], ["explain"], ["explain", "last~2", "--json"]],
)
def test_commands_exit_cleanly_on_a_fuzzed_workspace(fuzzed, capsys, monkeypatch, argv):
    monkeypatch.chdir(fuzzed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    captured = capsys.readouterr()
    assert code in (0, 1, 2), captured.err
    assert "Traceback" not in captured.err + captured.out
