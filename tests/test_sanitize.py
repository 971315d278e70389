"""`wb run --sanitize TOOL`: compute-sanitizer's reports become verdicts (workbench/run/sanitize.py).

On the CPU: the parser on logs in the tool's format, and the whole path through `wb run` with a
stand-in for compute-sanitizer (a script that starts the worker under it, as the tool does, and
writes a report into the log it was given). On the GPU the real tool runs the stage C bug
variants (tests/test_sanitize_gpu.py)."""

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import executable
from workbench.run import sanitize

STAGE_FILE = "/ws/stages/fmha/stage_c_online.py"
KERNEL = "kernel_cutlass_kernel_stagesfmhastage_c_online_FmhaOnline_object_at__0"

MEMCHECK_LOG = f"""========= COMPUTE-SANITIZER
========= Invalid __global__ write of size 4 bytes
=========     at {KERNEL}+0x2b40 in {STAGE_FILE}:268
=========     by thread (128,0,0) in block (1,0,0)
=========     Address 0x7f3a4c000400 is out of bounds
=========     and is 1 bytes after the nearest allocation at 0x7f3a4c000000 of size 1024 bytes
=========     Saved host backtrace up to driver entry point at kernel launch time
=========         Host Frame: cuLaunchKernelEx [0x2f5f1b] in libcuda.so.1
=========
========= Invalid __global__ write of size 4 bytes
=========     at {KERNEL}+0x2b40 in {STAGE_FILE}:268
=========     by thread (132,0,0) in block (1,0,0)
=========
========= ERROR SUMMARY: 2 errors
"""

RACECHECK_LOG = f"""========= COMPUTE-SANITIZER
========= Error: Race reported between Write access at {KERNEL}+0x1f30 in {STAGE_FILE}:322
=========     and Read access at {KERNEL}+0x2010 in {STAGE_FILE}:333 [512 hazards]
=========
========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)
"""

INITCHECK_TORCH_LOG = """========= COMPUTE-SANITIZER
========= Uninitialized __global__ memory read of size 2 bytes
=========     at void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int, T2, T3)+0x90
=========     by thread (0,0,0) in block (0,0,0)
=========
========= ERROR SUMMARY: 1 error
"""


def test_memcheck_report_names_the_kernel_the_python_line_and_the_thread():
    parsed = sanitize.parse_log(MEMCHECK_LOG)
    assert parsed["errors"] == 2
    assert len(parsed["findings"]) == 2
    first = parsed["findings"][0]
    assert first["message"] == "Invalid __global__ write of size 4 bytes"
    assert first["kernel"] == KERNEL and first["stage_kernel"]
    assert (first["file"], first["line"]) == (STAGE_FILE, 268)
    assert "by thread (128,0,0) in block (1,0,0)" in first["details"]
    assert not any("Host Frame" in d for d in first["details"])
    assert f"at {STAGE_FILE}:268" in first["details"]  # the kernel's symbol is kept once, not in every line


def test_one_report_per_unrolled_instruction_is_grouped_into_one_finding(tmp_path):
    log = tmp_path / "sanitizer.log"
    log.write_text(RACECHECK_LOG.replace("=========\n", RACECHECK_LOG.split("\n", 1)[1].rsplit("=========\n", 1)[0].replace("0x1f30", "0x1f50") + "=========\n", 1))
    verdict, field = sanitize.summarize("racecheck", log, "PASS")
    assert verdict == "RACE" and field["findings_in_stage"] == 2
    (race,) = field["findings"]
    assert race["count"] == 2 and race["message"] == f"Error: Race reported between Write access at {STAGE_FILE}:322"


def test_racecheck_analysis_counts_errors_not_hazards_and_keeps_both_sides():
    parsed = sanitize.parse_log(RACECHECK_LOG)
    assert (parsed["errors"], parsed["warnings"]) == (1, 0)
    (race,) = parsed["findings"]
    assert race["message"].startswith("Error: Race reported between Write access")
    assert (race["file"], race["line"]) == (STAGE_FILE, 322)
    assert any(":333" in d for d in race["details"])


@pytest.mark.parametrize("digits", [400, 5000])
def test_a_count_or_line_no_tool_prints_is_left_out_and_the_record_reads_back(tmp_path, digits):
    """A summary count or a line number of hundreds of digits (a log of garbage): over 4300
    int() raised a ValueError after the run, leaving its folder without a record; over 308 the
    record was written but refused when read back (wb runs skipped it as corrupt)."""
    import json

    from workbench.schemas import load_json
    from workbench.schemas.run_record import Sanitizer

    huge = "7" * digits
    log = tmp_path / "sanitizer.log"
    log.write_text(MEMCHECK_LOG.replace(":268", f":{huge}").replace("ERROR SUMMARY: 2 errors", f"ERROR SUMMARY: {huge} errors"))
    verdict, field = sanitize.summarize("memcheck", log, "PASS")
    assert verdict == "MEMCHECK" and field["errors"] is None and field["findings"][0]["line"] is None
    saved = tmp_path / "field.json"
    saved.write_text(json.dumps(field))
    load_json(saved, Sanitizer, 1 << 20)  # no SchemaError


def test_findings_in_torch_kernels_do_not_decide_the_verdict(tmp_path):
    log = tmp_path / "sanitizer.log"
    log.write_text(INITCHECK_TORCH_LOG)
    verdict, field = sanitize.summarize("initcheck", log, "PASS")
    assert verdict == "PASS" and field["verdict"] == "CLEAN"
    assert field["findings_total"] == 1 and field["findings_in_stage"] == 0
    assert field["findings"][0]["kernel"].startswith("void at::native::vectorized_elementwise_kernel")
    log.write_text(MEMCHECK_LOG)
    verdict, field = sanitize.summarize("memcheck", log, "CRASH")
    assert verdict == "MEMCHECK" and field["run_verdict"] == "CRASH" and field["findings_in_stage"] == 2


def test_a_log_without_summary_is_marked_incomplete(tmp_path):
    log = tmp_path / "sanitizer.log"
    log.write_text(MEMCHECK_LOG.rsplit("=========\n", 1)[0])  # the worker was killed before the tool's summary
    _, field = sanitize.summarize("memcheck", log, "HANG")
    assert field["completed"] is False and field["findings_in_stage"] == 2
    _, field = sanitize.summarize("memcheck", tmp_path / "missing.log", "CRASH")
    assert field["findings_total"] == 0 and field["log"] is None


# ----------------------------------------------------------------------------- through wb run

FAKE_TOOL = r'''#!{python}
"""Stand-in for compute-sanitizer: the worker runs as its child; the report goes to --log-file."""
import json, os, subprocess, sys
args = sys.argv[1:]
log = args[args.index("--log-file") + 1]
worker = args[args.index("-m") - 1:]
with open(os.environ["FAKE_SANITIZER_SEEN"], "w") as fh:
    json.dump({{"options": args[:args.index("-m") - 1], "lineinfo": os.environ.get("CUTE_DSL_LINEINFO"),
               "no_caching": os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING"), "no_poison": os.environ.get("WB_NO_POISON")}}, fh)
report = open(os.environ["FAKE_SANITIZER_REPORT"]).read()
findings, _, summary = report.rpartition("=========\n")
with open(log, "w") as fh:
    fh.write(findings)
code = subprocess.call(worker)
with open(log, "a") as fh:
    fh.write("=========\n" + summary)
sys.exit(code)
'''


@pytest.fixture
def fake_sanitizer(tmp_path, monkeypatch):
    tool = executable(tmp_path / "compute-sanitizer", FAKE_TOOL.format(python=sys.executable))
    seen = tmp_path / "seen.json"
    report = tmp_path / "report.log"
    monkeypatch.setenv("WB_COMPUTE_SANITIZER", str(tool))
    monkeypatch.setenv("FAKE_SANITIZER_SEEN", str(seen))
    monkeypatch.setenv("FAKE_SANITIZER_REPORT", str(report))
    return report, seen


def _record(ws: Path, proc) -> dict:
    return json.loads((ws / "runs" / json.loads(proc.stdout)["id"] / "run.json").read_text())


def test_a_race_report_becomes_the_verdict_recorded_rendered_and_diffed(toy_ws, wb, fake_sanitizer):
    report, seen = fake_sanitizer
    report.write_text(RACECHECK_LOG)
    proc = wb("run", "a", "--fixture", "toy-ones", "--sanitize", "racecheck", "--json")
    assert proc.returncode == 1, proc.stderr
    rec = _record(toy_ws, proc)
    assert rec["verdict"] == "RACE"
    found = rec["sanitizer"]
    assert found["tool"] == "racecheck" and found["run_verdict"] == "PASS" and found["completed"]
    assert found["findings"][0]["line"] == 322 and found["errors"] == 1
    options = json.loads(seen.read_text())
    assert options["lineinfo"] == "1" and options["no_caching"] == "1"
    assert options["options"][options["options"].index("--tool") + 1] == "racecheck"
    run_dir = toy_ws / "runs" / rec["id"]
    assert "Race reported" in (run_dir / "sanitizer.log").read_text()
    assert "## compute-sanitizer racecheck: RACE" in (run_dir / "report.md").read_text()
    assert "stage_c_online.py:322" in (run_dir / "report.md").read_text()

    proc = wb("run", "a", "--fixture", "toy-ones", "--sanitize", "racecheck")
    assert proc.returncode == 1
    assert "compute-sanitizer racecheck: RACE" in proc.stdout and "stage_c_online.py:322" in proc.stdout

    report.write_text("========= COMPUTE-SANITIZER\n=========\n========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n")
    proc = wb("run", "a", "--fixture", "toy-ones", "--sanitize", "racecheck", "--json")
    assert proc.returncode == 0, proc.stderr
    clean = _record(toy_ws, proc)
    assert clean["verdict"] == "PASS" and clean["sanitizer"]["verdict"] == "CLEAN" and clean["sanitizer"]["errors"] == 0

    # every sanitized run had a fresh worker of its own, under the stage's timeout x10
    assert not rec["timing"]["worker_reused"] and not clean["timing"]["worker_reused"]
    assert rec["timing"]["worker_pid"] != clean["timing"]["worker_pid"]
    assert rec["timing"]["timeout_s"] == 20 * sanitize.TIMEOUT_FACTOR  # the toy stage's 20 s, scaled

    explained = wb("explain", rec["id"])  # the fixtures passed: the findings are the explanation
    assert "compute-sanitizer racecheck: RACE" in explained.stdout and "stage_c_online.py:322" in explained.stdout

    diff = wb("diff-run", rec["id"], clean["id"])
    assert "compute-sanitizer: racecheck RACE (1 in the stage's kernels) → racecheck CLEAN (0)" in diff.stdout
    assert "- stage_c_online.py:322 Error: Race reported" in diff.stdout


def test_refusals_are_one_line_with_exit_2_and_leave_no_run(toy_ws, wb, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no compute-sanitizer anywhere
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.delenv("WB_COMPUTE_SANITIZER", raising=False)
    for args, expected in [
        (("--sanitize", "memchek"), "--sanitize 'memchek': expected one of memcheck, racecheck, synccheck, initcheck"),
        (("--sanitize", "racecheck", "--host", "h100"), "--sanitize runs on this machine only"),
    ]:
        proc = wb("run", "a", *args)
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    if not os.access("/usr/local/cuda/bin/compute-sanitizer", os.X_OK):
        proc = wb("run", "a", "--sanitize", "racecheck")
        assert proc.returncode == 2 and "needs NVIDIA compute-sanitizer" in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("WB_COMPUTE_SANITIZER", str(tmp_path / "nope"))
    proc = wb("run", "a", "--sanitize", "racecheck")
    assert proc.returncode == 2 and "WB_COMPUTE_SANITIZER=" in proc.stderr and "not an executable file" in proc.stderr
    assert not (toy_ws / "runs").exists() or not any((toy_ws / "runs").iterdir())


def test_a_tool_that_refuses_to_start_the_worker_is_a_recorded_crash(toy_ws, wb, tmp_path, monkeypatch):
    tool = executable(
        tmp_path / "compute-sanitizer",
        f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\n"
        "open(args[args.index('--log-file') + 1], 'w').write('========= COMPUTE-SANITIZER\\n"
        "========= Target application doesn\\'t exist or is not a valid executable\\n')\nsys.exit(1)\n",
    )
    monkeypatch.setenv("WB_COMPUTE_SANITIZER", str(tool))
    proc = wb("run", "a", "--fixture", "toy-ones", "--sanitize", "initcheck", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    rec = _record(toy_ws, proc)
    assert rec["verdict"] == "CRASH" and "worker exited at start" in rec["error"]["message"]
    assert rec["sanitizer"]["findings"][0]["message"].startswith("Target application doesn't exist")


def test_a_record_whose_tool_fields_are_broken_is_skipped_not_a_traceback(toy_ws, wb, fake_sanitizer):
    """sanitizer, profile and trace are declared in the run record schema: a hand-edited or
    damaged record (findings as text, counters as a list) is skipped with a warning by every
    reader, as any other corrupt record."""
    report, _ = fake_sanitizer
    report.write_text(RACECHECK_LOG)
    good = _record(toy_ws, wb("run", "a", "--fixture", "toy-ones", "--sanitize", "racecheck", "--json"))
    bad = _record(toy_ws, wb("run", "a", "--fixture", "toy-ones", "--sanitize", "racecheck", "--json"))
    path = toy_ws / "runs" / bad["id"] / "run.json"
    damaged = json.loads(path.read_text())
    damaged["sanitizer"]["findings"] = "race at line 3"
    damaged["profile"] = {"tool": "ncu", "counters": [1, 2]}
    path.write_text(json.dumps(damaged))
    for args in (("runs",), ("diff-run", good["id"], bad["id"]), ("report", bad["id"])):
        proc = wb(*args)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
    listed = wb("runs")
    assert good["id"] in listed.stdout and bad["id"] not in listed.stdout
    assert "skipping corrupt run record" in listed.stderr and "sanitizer.findings" in listed.stderr


def test_a_sanitized_run_out_of_time_is_a_hang_that_says_how_to_tell_slow_from_hung(toy_ws, wb, fake_sanitizer):
    """Under the tool every kernel runs 10-100x slower: the HANG says what to try, and the
    tool's log so far is kept."""
    report, _ = fake_sanitizer
    report.write_text("=========\n========= ERROR SUMMARY: 0 errors\n")
    proc = wb("run", "a", "--fixture", "toy-ones", "-V", "bug=sleep", "--sanitize", "memcheck", "--timeout", "3", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    rec = _record(toy_ws, proc)
    assert rec["verdict"] == "HANG"
    assert "no result after 3 s" in rec["error"]["message"] and "a longer --timeout" in rec["error"]["message"]
    assert rec["sanitizer"]["completed"] is False


def test_under_initcheck_the_outputs_are_left_unpoisoned_so_a_read_before_write_is_seen(toy_ws, wb, fake_sanitizer):
    """The worker's poison fill initializes every output: under initcheck it is skipped, so a
    kernel that reads an output it never wrote is an uninitialized read; under the other
    tools the poison stays and the toy's partial store shows unwritten elements."""
    report, seen = fake_sanitizer
    report.write_text("=========\n========= ERROR SUMMARY: 0 errors\n")
    unwritten = {}
    for tool in ("memcheck", "initcheck"):
        proc = wb("run", "a", "--fixture", "toy-ones", "-V", "bug=partial", "--sanitize", tool, "--json")
        assert "Traceback" not in proc.stderr, proc.stderr
        rec = _record(toy_ws, proc)
        unwritten[tool] = sum(f["outputs"][name]["unwritten"] for f in rec["results"] for name in f["outputs"])
        unwritten[tool + " env"] = json.loads(seen.read_text())["no_poison"]
    assert unwritten["memcheck"] > 0 and unwritten["initcheck"] == 0
    assert (unwritten["memcheck env"], unwritten["initcheck env"]) == (None, "1")


def test_a_tool_log_that_is_no_regular_file_is_a_note_not_a_blocked_wb(tmp_path):
    """The tool's log was read whatever it was: a FIFO left in its place blocked wb for ever
    (and a link to /dev/zero read until memory ran out). It is a note now, ncu's likewise."""
    import os
    import threading

    from workbench.run import profile, sanitize

    fifo = tmp_path / "log"
    os.mkfifo(fifo)
    out = {}
    reader = threading.Thread(target=lambda: out.update(
        san=sanitize.summarize("racecheck", fifo, "PASS"), prof=profile.summarize(fifo, "PASS", {})), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading the tool's log blocked"
    verdict, field = out["san"]
    assert verdict == "PASS" and field["notes"] == ["log is not a regular file: not read"] and field["log"] is None
    assert "log is not a regular file: not read" in out["prof"][1]["notes"]


def test_a_tool_log_that_beats_the_parser_leaves_the_run_recorded_with_its_own_verdict(toy_ws, wb, fake_sanitizer, monkeypatch):
    """An exception while summarizing the tool's log ended wb run with a traceback and a run
    folder without its record; the run is recorded, its verdict its own, the failure a note."""
    from workbench.run import sanitize

    report, _ = fake_sanitizer
    report.write_text(RACECHECK_LOG)
    monkeypatch.setattr(sanitize, "parse_log", lambda text: 1 / 0)
    proc = wb("run", "a", "--fixture", "toy-ones", "--sanitize", "racecheck", "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    rec = _record(toy_ws, proc)
    assert rec["verdict"] == "PASS" and rec["sanitizer"]["tool"] == "racecheck"
    assert rec["sanitizer"]["notes"] == ["wb could not read sanitizer.log: ZeroDivisionError: division by zero"], rec["sanitizer"]


def test_a_finding_without_a_line_or_count_renders(toy_ws, wb, fake_sanitizer):
    """The run record schema lets a finding leave out its line (and its count), but wb report
    and wb explain read finding['line'] and ended in a KeyError traceback, exit 1, for every
    later look at the run (an imported record too)."""
    report, _ = fake_sanitizer
    report.write_text(RACECHECK_LOG)
    rec = _record(toy_ws, wb("run", "a", "--fixture", "toy-ones", "--sanitize", "racecheck", "--json"))
    path = toy_ws / "runs" / rec["id"] / "run.json"
    data = json.loads(path.read_text())
    data["sanitizer"]["findings"] = [{"message": "m", "file": "/x/kernel_file.py", "stage_kernel": True}]
    path.write_text(json.dumps(data))
    for args in (("report", rec["id"]), ("report", rec["id"], "--raw"), ("explain", rec["id"])):
        proc = wb(*args)
        assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "kernel_file.py" in proc.stdout and "kernel_file.py:None" not in proc.stdout, (args, proc.stdout)
