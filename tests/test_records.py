"""Run records: atomic, corrupt ones skipped with a warning, selectors, listing, diff, reports."""

import json
import os

import pytest

from workbench.errors import UserError
from workbench.records.store import CorruptRecordWarning, list_records, new_run_dir, select, write_record


def make(runs, stage="toy/stage-a", verdict="PASS", **extra):
    d = new_run_dir(runs)
    write_record(d, {"stage": stage, "verdict": verdict, "params": {"n": 128}, **extra})
    return d.name


def test_ids_sort_by_time_and_are_unique(tmp_path):
    ids = [make(tmp_path) for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50


def test_corrupt_and_partial_records_are_skipped_with_a_warning(tmp_path):
    good = make(tmp_path)
    bad = new_run_dir(tmp_path)
    (bad / "run.json").write_text('{"stage": "toy/stage-a", "verd')
    half = new_run_dir(tmp_path)  # a run still in progress: folder, no record
    (half / ".run.json.x.tmp").write_text("{")
    with pytest.warns(CorruptRecordWarning, match="corrupt"):
        records = list_records(tmp_path)
    assert [r["id"] for r in records] == [good]


def test_selectors(tmp_path):
    a = make(tmp_path, stage="toy/stage-a")
    b = make(tmp_path, stage="toy/stage-b")
    c = make(tmp_path, stage="toy/stage-a", verdict="FAIL")
    assert select(tmp_path, "last")["id"] == c
    assert select(tmp_path, "last~1")["id"] == b
    assert select(tmp_path, "last~2")["id"] == a
    assert select(tmp_path, c)["id"] == c
    stage_of = lambda s: {"a": "toy/stage-a", "stage-b": "toy/stage-b"}[s]  # noqa: E731
    assert select(tmp_path, "a@last", stage_of)["id"] == c
    assert select(tmp_path, "a@last~1", stage_of)["id"] == a
    assert select(tmp_path, "stage-b@last", stage_of)["id"] == b
    with pytest.raises(UserError, match="only 3 runs"):
        select(tmp_path, "last~3")
    with pytest.raises(UserError, match="only 3 runs"):  # int() refuses 5000 digits: it was a ValueError traceback
        select(tmp_path, "last~" + "9" * 5000)
    with pytest.raises(UserError, match="ambiguous"):
        select(tmp_path, "2")
    with pytest.raises(UserError, match="no run matches"):
        select(tmp_path, "19990101")


def test_unique_prefix_selects(tmp_path):
    d = tmp_path / "20200101-000000-000001"
    d.mkdir()
    write_record(d, {"stage": "s", "verdict": "PASS"})
    make(tmp_path)
    assert select(tmp_path, "2020")["id"] == d.name


def test_a_huge_error_message_leaves_a_record_wb_reads_back(tmp_path):
    """A stage raising a message of megabytes: run.json held it whole, over the schema's 4 MiB,
    so every later `wb runs` skipped it as corrupt (the run dropped out of history); with 50 MiB
    the worker took so long to ship it that a --timeout read HANG. The worker cuts the error to
    its head and tail, and the record cuts any string it would not read back."""
    from workbench.records.store import read_record
    from workbench.run.worker import ERROR_TEXT_MAX, error_info

    try:
        raise RuntimeError("head " + "A" * (5 << 20) + " tail")
    except RuntimeError as exc:
        info = error_info(exc, [])
    assert info["message"].startswith("head AAA") and info["message"].endswith("AAA tail")
    assert len(info["message"]) < ERROR_TEXT_MAX + 100 and "characters left out" in info["message"]
    assert len(info["traceback"]) < 4 * ERROR_TEXT_MAX + 100 and info["traceback"].rstrip().endswith("AAA tail")

    d = new_run_dir(tmp_path / "runs")
    write_record(d, {"kind": "run", "stage": "k/stage-a", "verdict": "CRASH", "params": {}, "variants": {},
                     "error": {"message": "B" * (5 << 20)}, "fixtures": [{"note": ["C" * (5 << 20)]}]})
    back = read_record(d)
    assert back is not None and back["verdict"] == "CRASH"
    assert back["error"]["message"].startswith("BBB") and len(back["error"]["message"]) < (1 << 20) + 100


def test_write_is_atomic_no_temp_left(tmp_path):
    d = new_run_dir(tmp_path)
    write_record(d, {"stage": "s", "verdict": "PASS", "big": "x" * 100000})
    assert [p.name for p in d.iterdir()] == ["run.json"]
    assert json.loads((d / "run.json").read_text())["big"] == "x" * 100000


def test_wb_runs_lists_and_survives_a_corrupt_record(toy_ws, wb):
    assert wb("run", "a").returncode == 0
    assert wb("run", "b").returncode == 0
    bad = toy_ws / "runs" / "20000101-000000-000000"
    bad.mkdir()
    (bad / "run.json").write_text("not json")
    proc = wb("runs")
    assert proc.returncode == 0
    assert "toy/stage-a" in proc.stdout and "toy/stage-b" in proc.stdout
    assert "skipping corrupt run record" in proc.stderr
    only_b = wb("runs", "b", "--json")
    assert [r["stage"] for r in json.loads(only_b.stdout)] == ["toy/stage-b"]
    assert len(json.loads(wb("runs", "-n", "1", "--json").stdout)) == 1


def test_wb_runs_shows_what_sets_a_run_apart_and_full_shows_everything(toy_ws, wb):
    """Stage D's runs listed every parameter and variant, 14 lines a run: the list now shows
    the parameters away from kernel.yaml's defaults and the variants the run changed,
    "defaults" when none, a bench by its cases; --full, all of them; a stage no longer
    defined, every parameter."""
    runs = toy_ws / "runs"
    make(runs, params={"n": 128, "dtype": "bf16"}, variants={"bug": "none"}, variants_changed={})
    make(runs, params={"n": 256, "dtype": "bf16"}, variants={"bug": "zero"}, variants_changed={"bug": "zero"})
    make(runs, kind="bench", params={}, bench=[{"case": "n=128"}, {"case": "n=256"}], bench_sweep=True)
    make(runs, stage="gone/stage-a", params={"n": 128, "dtype": "bf16"})
    rows = [line for line in wb("runs").stdout.splitlines() if line.startswith("│ 2")]
    cells = [[c.strip() for c in row.split("│")[2:6]] for row in rows]
    assert cells == [
        ["gone/stage-a", "PASS", "n=128 dtype=bf16", "defaults"],
        ["toy/stage-a", "PASS", "bench: 2 cases (the sweep)", "defaults"],
        ["toy/stage-a", "PASS", "n=256", "bug=zero"],
        ["toy/stage-a", "PASS", "defaults", "defaults"],
    ], rows
    full = wb("runs", "--full").stdout
    assert "n=128 dtype=bf16" in full and "bug=none" in full


def test_diff_run_reports_a_regression_with_exit_1(toy_ws, wb):
    assert wb("run", "a", "--fixture", "toy-random").returncode == 0
    assert wb("run", "a", "--fixture", "toy-random", "-V", "bug=zero").returncode == 1
    proc = wb("diff-run", "--json")
    assert proc.returncode == 1
    d = json.loads(proc.stdout)
    assert d["verdict_flip"] and d["regressed"]
    assert {f["fixture"] for f in d["fixtures"] if f["regressed"]} == {"toy-random#0", "toy-random#1"}
    assert {"key": "bug", "a": "none", "b": "zero"} in d["variants"]
    cos = [m for f in d["fixtures"] for m in f["metrics"] if m["metric"] == "cos"]
    assert cos and all(not m["better"] for m in cos)
    text = wb("diff-run")
    assert text.returncode == 1 and "regressed" in text.stdout
    # Reversed: B fixes A, exit 0.
    fixed = wb("diff-run", "last", "last~1", "--json")
    assert fixed.returncode == 0 and any(f["fixed"] for f in json.loads(fixed.stdout)["fixtures"])


def test_a_stage_report_tells_parameter_sets_apart_by_what_is_away_from_the_defaults(toy_ws):
    """Stage D's report listed every parameter and variant per row (1195 lines for 200 runs):
    its rows show the parameters away from kernel.yaml's defaults and the variants the run
    changed, one row per full parameter set, the trend likewise."""
    from workbench.records.report import stage_history, stage_markdown
    from workbench.workspace import Workspace

    runs = toy_ws / "runs"
    make(runs, params={"n": 128, "dtype": "bf16"}, variants={"bug": "none"}, variants_changed={})
    make(runs, params={"n": 256, "dtype": "bf16"}, variants={"bug": "zero"}, variants_changed={"bug": "zero"}, verdict="FAIL")
    make(runs, params={"n": 256, "dtype": "bf16"}, variants={"bug": "none"}, variants_changed={})
    history = stage_history(Workspace(toy_ws), "toy/stage-a")
    assert [(r["params"], r["variants"], r["verdict"]) for r in history["latest_per_params"]] == [
        ("defaults", "defaults", "PASS"), ("n=256", "defaults", "PASS"), ("n=256", "bug=zero", "FAIL"),
    ]
    assert [t["params"] for t in history["trend"]] == ["n=256", "n=256", "defaults"]
    text = stage_markdown(history)
    assert "| `n=256` | `bug=zero` | FAIL |" in text and "dtype=bf16" not in text


def test_diff_run_shows_changed_stage_source(toy_ws, wb):
    assert wb("run", "b").returncode == 0
    path = toy_ws / "stages/toy/stage_b.py"
    path.write_text(path.read_text() + "\n# edited\n")
    assert wb("run", "b").returncode == 0
    d = json.loads(wb("diff-run", "--json").stdout)
    assert d["sources_changed"] == ["stages/toy/stage_b.py"] and not d["regressed"]


def test_report_of_run_and_of_stage(toy_ws, wb):
    assert wb("run", "a", "--n", "256").returncode == 0
    assert wb("run", "a", "-V", "bug=nan", "--fixture", "toy-random").returncode == 1
    run_report = wb("report", "last", "--raw")
    assert run_report.returncode == 0 and run_report.stdout.startswith("# toy/stage-a — FAIL")
    assert "1 NaN" in run_report.stdout
    stage_report = wb("report", "stage-a", "--raw")
    assert stage_report.returncode == 0
    assert "Latest verdict per parameter set" in stage_report.stdout
    assert "| `n=256` | `defaults` | PASS |" in stage_report.stdout and "| `defaults` | `bug=nan` | FAIL |" in stage_report.stdout
    assert (toy_ws / "runs/reports/toy-stage-a.md").exists()
    rendered = wb("report", "a")
    assert rendered.returncode == 0 and "stage report" in rendered.stdout


@pytest.mark.parametrize("target, says", [
    ("zz/a", "unknown kernel 'zz'"),
    ("stage-zz", "kernel toy has no stage 'stage-zz'"),
    ("2026", "no run matches '2026'"),
    ("last~3", "last~3: no runs recorded yet"),
])
def test_wb_report_of_something_that_is_neither_run_nor_stage_says_why(toy_ws, wb, target, says):
    """`wb report zz/a` and `wb report stage-zz` said "no run matches", hiding the unknown
    kernel or stage; what the target looks like now picks the error that explains it."""
    proc = wb("report", target)
    assert proc.returncode == 2 and says in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("make_blocker, what", [
    (lambda p: os.mkfifo(p), "a special file"),  # said 'File exists', as if the report were there
    (lambda p: p.write_text("x\n"), "a file"),
])
def test_a_thing_in_the_way_of_the_reports_folder_is_named(toy_ws, wb, make_blocker, what):
    runs = toy_ws / "runs"
    make(runs)
    make_blocker(runs / "reports")
    shown = wb("report", "a")
    assert shown.returncode == 0, shown.stderr
    assert f"stage report not written: cannot write {runs / 'reports' / 'toy-stage-a.md'}: {runs / 'reports'} is not a folder ({what})" in shown.stderr


@pytest.mark.parametrize("blocker", ["file", "folder"])
def test_wb_report_of_a_stage_shows_it_when_its_file_cannot_be_written(toy_ws, wb, blocker):
    """`wb report STAGE` writes runs/reports/<stage>.md and showed what it read back: with
    runs/reports a file, or the stage's report a folder, it showed nothing ('wb: error:
    cannot write ...', exit 2) although every record was readable. Now it warns and shows it."""
    runs = toy_ws / "runs"
    run_id = make(runs)
    if blocker == "file":
        (runs / "reports").write_text("in the way\n")
    else:
        (runs / "reports" / "toy-stage-a.md").mkdir(parents=True)
    for raw in (["--raw"], []):
        shown = wb("report", "a", *raw)
        assert shown.returncode == 0, shown.stderr
        assert "stage report" in shown.stdout and run_id in shown.stdout
        assert shown.stderr.startswith("wb: warning: stage report not written: cannot write") and "Traceback" not in shown.stderr
    assert blocker == "folder" or (runs / "reports").read_text() == "in the way\n"


def test_list_shows_stages_in_order_with_last_verdict(toy_ws, wb):
    assert wb("run", "b").returncode == 0
    data = json.loads(wb("list", "--json").stdout)
    stages = data[0]["stages"]
    assert [s["letter"] for s in stages] == ["a", "b"]
    assert stages[0]["last_verdict"] is None and stages[1]["last_verdict"] == "PASS"


def test_list_falls_back_on_what_memory_remembers_in_a_fresh_clone(toy_ws, wb):
    """A fresh clone has no runs/ (git-ignored) but MEMORY.json, committed, knows each stage's
    last verdict: `wb list` showed "-" for every stage. runs/ still wins where it has a run, and
    a MEMORY.json that does not read leaves the listing as it was."""
    assert wb("run", "b").returncode == 0
    memory_json = toy_ws / "MEMORY.json"
    data = json.loads(memory_json.read_text())
    data["status"]["toy/stage-a"] = {"verdict": "FAIL", "last_run": "20261201-000000-000001", "cases": {}}
    data["status"]["toy/stage-b"]["verdict"] = "CRASH"  # older news than runs/' PASS
    memory_json.write_text(json.dumps(data))

    def listed():
        done = wb("list", "--json")
        assert done.returncode == 0, done.stderr
        return [(s["last_verdict"], s["last_run"], s["last_from"]) for s in json.loads(done.stdout)[0]["stages"]]

    run_b = json.loads(wb("runs", "--json").stdout)[0]["id"]
    assert listed() == [("FAIL", "20261201-000000-000001", "MEMORY.json"), ("PASS", run_b, "runs")]
    shown = wb("list")
    assert "20261201-000000-000001 (MEMORY.md)" in shown.stdout and f"{run_b} (MEMORY.md)" not in shown.stdout
    memory_json.write_text("{ broken")
    assert listed() == [(None, None, None), ("PASS", run_b, "runs")]


def test_list_does_not_take_a_run_of_an_injected_bug_for_the_stages_verdict(toy_ws, wb):
    """`wb run a -V bug=zero` (a deliberate bug, caught: FAIL) made `wb list` show stage a as
    FAIL, while MEMORY.md's status (the same "last run") leaves such runs out."""
    assert wb("run", "a").returncode == 0
    passed = json.loads(wb("runs", "--json").stdout)[0]["id"]
    assert wb("run", "a", "-V", "bug=zero").returncode == 1
    stage_a = json.loads(wb("list", "--json").stdout)[0]["stages"][0]
    assert (stage_a["last_verdict"], stage_a["last_run"], stage_a["last_from"]) == ("PASS", passed, "runs")


def test_a_limit_of_zero_lists_nothing_and_the_cli_says_so(tmp_path, capsys, monkeypatch):
    """`wb runs -n 0` used to show a row: list_records(limit=0) appended before checking."""
    from workbench.cli import main

    make(tmp_path / "runs")
    assert list_records(tmp_path / "runs", limit=0) == []
    (tmp_path / "wb.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["runs", "-n", "0"])
    assert exit_.value.code == 2 and "1 or more" in capsys.readouterr().err


def test_a_run_folder_without_a_record_says_whether_its_wb_runs_or_was_killed(tmp_path):
    """A wb killed with SIGKILL left an empty runs/<id>/ that `wb report` called 'corrupt or
    still running' for ever. The folder names its wb until the record is written."""
    import subprocess
    import sys

    from conftest import REPO
    from workbench.errors import UserError
    from workbench.records.store import OWNER, new_run_dir, select, write_record

    runs = tmp_path / "runs"
    mine = new_run_dir(runs)
    with pytest.raises(UserError, match=r"has no record yet: its wb \(pid \d+\) is still running it"):
        select(runs, mine.name)
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from workbench.records.store import new_run_dir; print(new_run_dir(__import__('pathlib').Path({str(runs)!r})).name)"
    theirs = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    with pytest.raises(UserError, match=r"has no record: its wb \(pid \d+\) ended before writing it \(killed\?\)"):
        select(runs, theirs)
    write_record(mine, {"kind": "run", "stage": "toy/stage-a", "verdict": "PASS", "params": {}, "variants": {}})
    assert not (mine / OWNER).exists() and select(runs, mine.name)["verdict"] == "PASS"


def test_a_run_folders_owner_marker_nested_past_jsons_depth_is_unreadable_not_a_traceback(tmp_path):
    """.wb-owner.json of 3000 '[' (under its 4 KiB limit) raised RecursionError in wb runs."""
    from workbench.records.store import OWNER, unfinished_run

    run = tmp_path / "runs" / "20261205-000000-000000"
    run.mkdir(parents=True)
    (run / OWNER).write_text("[" * 3000)
    assert unfinished_run(run).endswith("has no readable record (corrupt, or written by a wb older than this one)")


def test_plain_progress_lines_show_control_characters_instead_of_acting_on_them(capsys, monkeypatch):
    """Off a terminal, progress lines printed an event's text as it came (a remote host's
    fixture name with an escape sequence reached the terminal)."""
    from workbench import terminal
    from workbench.cli.render import progress

    monkeypatch.setattr(terminal, "interactive", lambda: False)
    with progress("run toy/stage-a") as emit:
        emit({"type": "progress", "phase": "trace", "fixture": "x\x1b[2Jy"})
    out = capsys.readouterr().out
    assert "\x1b" not in out and "x\\x1b[2Jy" in out, repr(out)


def test_wb_runs_names_the_run_folders_whose_wb_was_killed(toy_ws, wb):
    """After kill -9 of wb, `wb runs` said 'no runs recorded yet' (or listed the others) and
    only `wb report <id>` told of the run. It now says what each such folder is, below the list."""
    import subprocess
    import sys

    from conftest import REPO

    assert wb("run", "a").returncode == 0
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from workbench.records.store import new_run_dir; print(new_run_dir(__import__('pathlib').Path('runs')).name)"
    killed = subprocess.run([sys.executable, "-c", code], cwd=toy_ws, capture_output=True, text=True, check=True).stdout.strip()
    out = wb("runs").stdout
    assert "toy/stage-a" in out and f"run {killed} has no record: its wb (pid" in out and "ended before writing it (killed?)" in out


def test_diff_run_of_a_verdict_only_flip_and_of_two_stages_says_so(toy_ws, wb):
    """A run-level verdict flip with no fixture changed printed 'verdict flipped', then 'no
    differences in verdicts', then 'B regresses on at least one fixture'; two runs of different
    stages were compared without a word."""
    import shutil

    assert wb("run", "a").returncode == 0 and wb("run", "b").returncode == 0
    ids = sorted(p.name for p in (toy_ws / "runs").iterdir() if p.name[:1].isdigit())
    copy = ids[0][:-6] + "999999"
    shutil.copytree(toy_ws / "runs" / ids[0], toy_ws / "runs" / copy)
    record = json.loads((toy_ws / "runs" / copy / "run.json").read_text())
    (toy_ws / "runs" / copy / "run.json").write_text(json.dumps({**record, "verdict": "MAYBE"}))
    flipped = wb("diff-run", ids[0], copy)
    assert flipped.returncode == 1
    assert "no differences" not in flipped.stdout and "B regresses (its verdict is MAYBE)" in flipped.stdout
    across = wb("diff-run", ids[0], ids[1])
    assert "A and B are runs of different stages (toy/stage-a, toy/stage-b)" in across.stdout


def test_a_record_without_parameters_says_so_in_its_report(toy_ws, wb):
    """A record whose params were lost (edited by hand) showed 'parameters: ``'."""
    from workbench.records import report

    assert wb("run", "a").returncode == 0
    (path,) = list((toy_ws / "runs").glob("2*/run.json"))
    record = json.loads(path.read_text())
    record.pop("params")
    assert "- parameters: none recorded" in report.run_markdown(record)
    assert "- parameters: `n=128" in report.run_markdown(json.loads(path.read_text()))


def test_explain_of_a_failing_run_without_failed_fixtures_says_why_it_shows_nothing(toy_ws, wb):
    """A record whose fixtures' verdicts are no FAIL (edited by hand, or a word wb does not
    know) made `wb explain` print only its header line."""
    assert wb("run", "a").returncode == 0
    (run,) = [p for p in (toy_ws / "runs").iterdir() if p.name[:1].isdigit()]
    record = json.loads((run / "run.json").read_text())
    record["verdict"] = "FAIL"
    for case in record["results"]:
        case["verdict"] = "WEIRD"
    (run / "run.json").write_text(json.dumps(record))
    out = wb("explain", run.name).stdout
    assert "no fixture FAILed, so none has a diagnosis (the fixtures' verdicts: WEIRD)" in out


def test_wb_report_of_a_run_whose_record_changed_since_its_report_shows_the_record(toy_ws, wb):
    """wb report RUN showed the report.md written with the run even after run.json changed (a
    hand edit, an import over it); it is made again from the record when that is newer."""
    import os

    assert wb("run", "a").returncode == 0
    (run,) = [p for p in (toy_ws / "runs").iterdir() if p.name[:1].isdigit()]
    assert "# toy/stage-a — PASS" in wb("report", run.name, "--raw").stdout
    record = json.loads((run / "run.json").read_text())
    record["verdict"] = "FAIL"
    (run / "run.json").write_text(json.dumps(record))
    later = (run / "report.md").stat().st_mtime + 5
    os.utime(run / "run.json", (later, later))
    assert "# toy/stage-a — FAIL" in wb("report", run.name, "--raw").stdout
    (run / "report.md").write_text("# hand-kept report\n")
    os.utime(run / "report.md", (later + 5, later + 5))  # written after the record: shown as it is
    assert wb("report", run.name, "--raw").stdout.startswith("# hand-kept report")


def test_a_run_whose_compile_timings_are_of_other_types_renders(capsys):
    """timing.compiles is any list under the schema (a remote host's record comes from another
    wb): a string cold_seconds or an entry that is no object was a TypeError after the run."""
    from workbench.cli.render import render_run

    record = {"id": "20261205-000000-000000", "stage": "toy/stage-a", "verdict": "PASS", "params": {"n": 128},
              "variants": {}, "results": [], "provenance": {},
              "timing": {"compile_cached": True, "compile_s": 0.1,
                         "compiles": [{"cache": "disk", "cold_seconds": "3"}, "odd", {"cache": 5, "cold_seconds": 2.5}, {"cold_seconds": True}]}}
    render_run(record)
    out = " ".join(capsys.readouterr().out.split())
    assert "compile 0.10 s (5/cache/disk hit; cold 2.50 s)" in out, out


def test_fields_the_schema_lets_be_null_or_missing_render_without_a_traceback(toy_ws, wb):
    """run_record.py lets error.message be null and a stall have no value (and `wb import`
    takes such a record): wb explain crashed on the first, wb report on the second."""
    assert wb("run", "a").returncode == 0
    (run,) = [p for p in (toy_ws / "runs").iterdir() if p.name[:1].isdigit()]
    record = json.loads((run / "run.json").read_text())
    record["verdict"] = "ERROR"
    record["error"] = {"message": None, "location": "stage_a.py:3"}
    record["profile"] = {"tool": "ncu", "counters": {"stalls_top5": [{"reason": "long_scoreboard"}]}}
    (run / "run.json").write_text(json.dumps(record))
    (run / "report.md").unlink()  # else wb report shows the one written with the run
    explained = wb("explain", run.name)
    assert explained.returncode == 0 and "at stage_a.py:3" in explained.stdout
    for raw in (["--raw"], []):
        shown = wb("report", run.name, *raw)
        assert shown.returncode == 0 and "stall: long_scoreboard" in shown.stdout and "Traceback" not in shown.stdout + shown.stderr


def test_a_stage_report_takes_a_record_whose_start_is_null(toy_ws, wb):
    """run_record.py lets `started` be null (and `wb import` takes such a record): wb report
    STAGE built its table's date with started[:10] and ended in a TypeError traceback."""
    runs = toy_ws / "runs"
    run_id = make(runs, started=None)
    make(runs, started="2026-12-03T10:00:00+00:00", params={"n": 256})
    shown = wb("report", "a", "--raw")
    assert shown.returncode == 0, shown.stderr
    assert f"| {run_id} |  |" in shown.stdout and "| 2026-12-03 |" in shown.stdout


def test_an_integer_past_a_floats_range_makes_a_record_corrupt_not_a_traceback(toy_ws, wb):
    """JSON integers have no size limit: a record with max_abs_err 10**400 passed the schema
    (an int is a Number) and wb diff-run, wb report and the run table ended in an
    OverflowError traceback (int too large to convert to float). Such a file is now corrupt:
    skipped with a warning, named when asked for."""
    runs = toy_ws / "runs"
    case = lambda err: [{"fixture": "toy-random", "verdict": "FAIL", "outputs": {"y": {"verdict": "FAIL", "max_abs_err": err}}}]  # noqa: E731
    older = make(runs, verdict="FAIL", results=case(1.0))
    huge = make(runs, verdict="FAIL", results=case(10**400))
    assert str(10**400) in (runs / huge / "run.json").read_text()
    for args in (["diff-run", older, huge], ["report", huge], ["explain", huge]):
        proc = wb(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "an integer of 401 digits" in proc.stderr and proc.stderr.rstrip().endswith("has no readable record (corrupt, or written by a wb older than this one)")
    listed = wb("runs")
    assert listed.returncode == 0 and older in listed.stdout and huge not in listed.stdout


def test_control_characters_in_a_record_never_reach_the_terminal(toy_ws, wb):
    """A record (an imported one can hold anything) with ESC sequences in its title and error
    message had wb report and wb explain print them raw: a retitled window, a cleared screen."""
    assert wb("run", "a").returncode == 0
    (run,) = [p for p in (toy_ws / "runs").iterdir() if p.name[:1].isdigit()]
    record = json.loads((run / "run.json").read_text())
    record["verdict"] = "ERROR"
    record["stage_title"] = "QK\x1b]0;pwned\x07"
    record["error"] = {"message": "boom\x1b[2J", "location": "stage_a.py:3\x9b"}
    (run / "run.json").write_text(json.dumps(record))
    (run / "report.md").unlink()
    for args in (["explain", run.name], ["report", run.name], ["report", run.name, "--raw"]):
        shown = wb(*args)
        assert shown.returncode == 0, args
        assert not any(c in shown.stdout for c in "\x1b\x07\x9b"), args
        assert "boom\\x1b[2J" in shown.stdout, args


def _no_worker(monkeypatch):
    """Fail the test if a worker is asked to work (wb run, bench, compile)."""
    import workbench.run.bench
    import workbench.run.compile_jobs
    import workbench.run.execute

    for module in (workbench.run.execute, workbench.run.bench, workbench.run.compile_jobs):
        monkeypatch.setattr(module, "run_job", lambda *a, **k: pytest.fail("a worker was asked to work"))


def _break_runs(root, how):
    """Put something that is no folder where runs/ goes: a file, a symlink loop, a link to /dev/null."""
    runs = root / "runs"
    if how == "file":
        runs.write_text("not a folder\n")
    elif how == "loop":
        runs.symlink_to("runs")
    else:
        runs.symlink_to("/dev/null")
    return runs


@pytest.mark.parametrize("how", ["file", "loop", "devnull"])
@pytest.mark.parametrize("command", [["run", "a"], ["compile", "a"], ["bench", "a"], ["sweep", "a", "--n", "128,256", "--gpus", "none"]])
def test_a_runs_path_that_is_no_folder_is_one_line_before_any_work(toy_ws, wb, monkeypatch, how, command):
    """`wb run`, `compile`, `bench` and `sweep` with runs/ a file, a symlink loop or a link to
    /dev/null: one line naming runs and why (exit 2), no traceback, checked before a worker
    starts or a sweep runs a case (it used to fail every case with an ERROR row), and what is
    in the way is left as it was."""
    runs = _break_runs(toy_ws, how)
    before = runs.read_text() if how == "file" else __import__("os").readlink(runs)
    _no_worker(monkeypatch)
    proc = wb(*command)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stdout
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("wb: error:")]
    assert len(line) == 1 and f"{runs} is not a folder" in line[0], proc.stderr
    assert {"file": "a file", "loop": "a symlink loop", "devnull": "a link to /dev/null"}[how] in line[0]
    assert (runs.read_text() if how == "file" else __import__("os").readlink(runs)) == before


def test_a_read_only_runs_folder_is_one_line_before_any_work(toy_ws, wb, monkeypatch):
    """A runs/ wb may not write (root passes any mode check, so the access check is faked):
    `wb run` and `wb sweep` say so in one line (exit 2) before a worker starts, not a
    PermissionError traceback (run) or a PermissionError row per case (sweep)."""
    import os

    runs = toy_ws / "runs"
    runs.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **k: False if os.fspath(path) == str(runs) else real_access(path, mode, **k))
    _no_worker(monkeypatch)
    for command in (["run", "a"], ["sweep", "a", "--n", "128,256", "--gpus", "none"]):
        proc = wb(*command)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip() == f"wb: error: {runs} is not writable: wb records every run there (runs/<id>/run.json); make it writable"
    assert list(runs.iterdir()) == []


@pytest.mark.parametrize("how", ["file", "loop"])
def test_listing_runs_says_a_broken_runs_path_is_no_folder(toy_ws, wb, how):
    """`wb runs` and `wb report last` with runs/ a file or a symlink loop: one line saying it is
    not a folder (exit 2), not "no runs recorded yet" with exit 0; a missing runs/ still
    means no runs yet."""
    proc = wb("runs")
    assert proc.returncode == 0 and "no runs recorded yet" in proc.stdout
    runs = _break_runs(toy_ws, how)
    for command in (["runs"], ["report", "last"]):
        proc = wb(*command)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "no runs recorded" not in proc.stdout + proc.stderr
        assert proc.stderr.startswith(f"wb: error: {runs} is not a folder") and len(proc.stderr.splitlines()) == 1


def test_a_case_with_a_null_label_is_named_by_its_fixture_and_compiled_is_no_regression(toy_ws, wb):
    """A FAIL case whose label is null (the schema allows it) was a heading 'None' in wb explain
    and its report; and `wb diff-run PASS-run COMPILED-run` exited 1 as a regression, though
    a compile record runs no fixture and says nothing of correctness."""
    import json

    assert wb("run", "a", "-V", "bug=nan", "--fixture", "toy-random").returncode == 1
    failed = json.loads(wb("runs", "--json").stdout)[0]["id"]
    path = toy_ws / "runs" / failed / "run.json"
    data = json.loads(path.read_text())
    for case in data["results"]:
        case["label"] = None
    path.write_text(json.dumps(data))
    for args in (("explain", failed), ("report", failed, "--raw")):
        out = wb(*args).stdout
        assert "### None" not in out and "\nNone\n" not in out and "toy-random" in out, (args, out)

    assert wb("run", "a", "--fixture", "toy-ones").returncode == 0
    passed = json.loads(wb("runs", "--json").stdout)[0]["id"]
    compiled = toy_ws / "runs" / (passed[:-6] + "999999")
    compiled.mkdir()
    data = json.loads((toy_ws / "runs" / passed / "run.json").read_text())
    data.update(kind="compile", verdict="COMPILED", results=[])
    (compiled / "run.json").write_text(json.dumps(data))
    diff = wb("diff-run", passed, compiled.name)
    assert diff.returncode == 0, diff.stdout + diff.stderr


def test_a_report_too_large_to_render_quickly_is_printed_as_its_source(toy_ws, wb):
    """A record within its limits but with thousands of fixture results took rich over a
    minute to render as Markdown (13 MB: 66 s). Past RENDER_MAX_CHARS wb report prints the
    source, as --raw does, and says so."""
    import json

    from workbench.cli.history import RENDER_MAX_CHARS

    assert wb("run", "a", "--fixture", "toy-random").returncode == 0
    run_id = json.loads(wb("runs", "--json").stdout)[0]["id"]
    path = toy_ws / "runs" / run_id / "run.json"
    data = json.loads(path.read_text())
    one = data["results"][0]
    data["results"] = [{**one, "label": f"{one['fixture']}#{i}"} for i in range(8000)]
    path.write_text(json.dumps(data))
    raw = wb("report", run_id, "--raw").stdout
    assert len(raw) > RENDER_MAX_CHARS
    shown = wb("report", run_id)
    assert shown.returncode == 0 and "shown as its Markdown source" in shown.stderr
    assert shown.stdout == raw
