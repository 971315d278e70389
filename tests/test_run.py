"""`wb run` end to end on the CPU test kernel: verdicts, isolation, records, MEMORY.md."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO


def record_of(ws: Path, proc) -> dict:
    data = json.loads(proc.stdout)
    return json.loads((ws / "runs" / data["id"] / "run.json").read_text())


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it no longer runs anything.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_pass_run_writes_record_report_and_memory(toy_ws, wb):
    proc = wb("run", "a", "--json")
    assert proc.returncode == 0, proc.stderr
    rec = record_of(toy_ws, proc)
    assert rec["verdict"] == "PASS"
    assert rec["stage"] == "toy/stage-a" and rec["params"] == {"n": 128, "dtype": "bf16"}
    assert [c["label"] for c in rec["results"]] == ["toy-random#0", "toy-random#1", "toy-ones"]
    m = rec["results"][0]["outputs"]["y"]
    assert m["cos"] > 0.99999 and m["unwritten"] == 0 and m["nan"] == 0
    prov = rec["provenance"]
    assert prov["host"] and prov["torch"] and "stages/toy/stage_a.py" in prov["sources"]
    assert (toy_ws / "runs" / rec["id"] / "report.md").read_text().startswith("# toy/stage-a — PASS")
    memory = (toy_ws / "MEMORY.md").read_text()
    assert "<!-- wb:begin status -->" in memory and rec["id"] in memory


@pytest.mark.parametrize(
    "bug, reason",
    [("zero", "output is all zero"), ("nan", "1 NaN"), ("partial", "4096 element(s) never written")],
)
def test_wrong_outputs_fail_with_the_reason(toy_ws, wb, bug, reason):
    proc = wb("run", "a", "-V", f"bug={bug}", "--fixture", "toy-random", "--seeds", "1", "--json")
    assert proc.returncode == 1
    rec = record_of(toy_ws, proc)
    assert rec["verdict"] == "FAIL"
    assert any(reason in r for r in rec["results"][0]["outputs"]["y"]["reasons"]), rec["results"][0]["outputs"]["y"]["reasons"]


def test_constant_output_passes_only_when_the_reference_is_constant(toy_ws, wb):
    # toy-ones makes y == 2 everywhere: a constant output that is right.
    proc = wb("run", "a", "--fixture", "toy-ones", "--json")
    assert proc.returncode == 0, proc.stdout


def test_hang_kills_the_process_group_and_next_run_is_clean(toy_ws, wb):
    proc = wb("run", "a", "-V", "bug=sleep", "--timeout", "2", "--json", timeout=60)
    assert proc.returncode == 1
    rec = record_of(toy_ws, proc)
    assert rec["verdict"] == "HANG" and "2 s" in rec["error"]["message"]
    import torch

    # the worker's environment reached the record although no result came back (issue 14 item 8)
    assert rec["provenance"]["torch"] == torch.__version__
    pid = rec["timing"]["worker_pid"]
    deadline = time.time() + 5
    while not gone(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert gone(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    again = wb("run", "a", "--json")
    assert again.returncode == 0 and record_of(toy_ws, again)["timing"]["worker_reused"] is False


def test_crash_of_the_worker_is_recorded_with_its_output(toy_ws, wb):
    proc = wb("run", "a", "-V", "bug=crash", "--json")
    rec = record_of(toy_ws, proc)
    assert proc.returncode == 1 and rec["verdict"] == "CRASH"
    assert "worker process died" in rec["error"]["message"]
    assert "Fatal Python error" in rec["error"]["log"] and "stage_a.py" in rec["error"]["log"]


def test_cuda_error_is_a_crash_and_the_worker_is_replaced(toy_ws, wb):
    first = wb("run", "a", "-V", "bug=cuda_error", "--json")
    rec = record_of(toy_ws, first)
    assert rec["verdict"] == "CRASH" and "illegal memory access" in rec["error"]["message"]
    assert rec["error"]["location"].endswith("stage_a.py:" + str(_line_of(toy_ws / "stages/toy/stage_a.py", "CUDA error")))
    second = record_of(toy_ws, wb("run", "a", "--json"))
    assert second["verdict"] == "PASS" and second["timing"]["worker_pid"] != rec["timing"]["worker_pid"]


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_compile_error_points_at_the_users_line(toy_ws, wb):
    proc = wb("run", "a", "-V", "bug=compile_error", "--json")
    rec = record_of(toy_ws, proc)
    assert rec["verdict"] == "COMPILE_ERROR" and "weakly congruent" in rec["error"]["message"]
    line = _line_of(toy_ws / "stages/toy/stage_a.py", "raise ValueError")
    assert rec["error"]["location"].endswith(f"stages/toy/stage_a.py:{line}")


def test_a_stage_module_that_exits_on_import_is_a_compile_error_naming_it(toy_ws, wb):
    """sys.exit() at the top of a stage module ended the worker: a CRASH, 'the worker process
    died', with nothing saying why. It is the module's COMPILE_ERROR at its line, as a raise is."""
    path = toy_ws / "stages/toy/stage_a.py"
    path.write_text('import sys\nsys.exit("not ready")\n' + path.read_text())
    rec = record_of(toy_ws, wb("run", "a", "--json"))
    assert rec["verdict"] == "COMPILE_ERROR", rec["error"]
    assert "stage_a.py called sys.exit('not ready') on import" in rec["error"]["message"]
    assert rec["error"]["location"].endswith("stages/toy/stage_a.py:2")


def test_a_stage_that_calls_sys_exit_while_it_runs_is_a_crash_saying_so(toy_ws, wb):
    """sys.exit() inside launch() ended the worker: CRASH 'the worker process died' with no
    reason. The run's CRASH now says the stage called sys.exit and where; the next run works."""
    path = toy_ws / "stages/toy/stage_a.py"
    text = path.read_text()
    path.write_text("import sys\n" + text.replace("        bug = compiled\n", "        bug = compiled\n        if bug == 'zero':\n            sys.exit(3)\n"))
    rec = record_of(toy_ws, wb("run", "a", "-V", "bug=zero", "--json"))
    assert rec["verdict"] == "CRASH", rec["error"]
    assert rec["error"]["message"] == "the stage's code called sys.exit(3)"
    assert "stages/toy/stage_a.py:" in (rec["error"]["location"] or ""), rec["error"]
    assert record_of(toy_ws, wb("run", "a", "--json"))["verdict"] == "PASS"


def test_a_kernels_mutants_file_that_exits_leaves_the_failing_run_a_fail(toy_ws, wb):
    """sys.exit() at the import of stages/toy/mutants_*.py (loaded for the diagnosis of a FAIL)
    made the run a CRASH with no fixture results: the kernel's FAIL was lost to a broken
    diagnosis file. The verdict and the fixtures stay; the diagnosis says why it is missing."""
    (toy_ws / "stages/toy/mutants_x.py").write_text("import sys\nsys.exit(3)\n")
    rec = record_of(toy_ws, wb("run", "a", "-f", "toy-random", "-V", "bug=zero", "--json"))
    assert rec["verdict"] == "FAIL", rec.get("error")
    said = f"diagnosis failed: {toy_ws / 'stages/toy/mutants_x.py'}: the kernel's diagnosis hooks file failed to import: SystemExit: 3"
    assert rec["results"] and all(c["verdict"] == "FAIL" and c["diagnosis"] == {"error": said} for c in rec["results"])


@pytest.mark.parametrize("spec, says", [
    ('TensorSpec((p.n, 64), "float")', "TensorSpec dtype 'float': expected one of bf16, fp16"),
    ('TensorSpec((p.n, 6.4), p.dtype)', "TensorSpec shape (128, 6.4): expected a tuple of sizes"),
])
def test_a_tensor_spec_a_stage_gets_wrong_is_named_at_the_stages_line(toy_ws, wb, spec, says):
    """TensorSpec((n, 64), "float") in a stage's inputs() was a KeyError 'float' at whatever
    fixture first read it; the spec refuses it where the stage makes it."""
    path = toy_ws / "stages/toy/stage_a.py"
    text = path.read_text()
    path.write_text(text.replace('return {"x": TensorSpec((p.n, 64), p.dtype)}', f'return {{"x": {spec}}}'))
    rec = record_of(toy_ws, wb("run", "a", "--json"))
    assert rec["verdict"] in ("CRASH", "ERROR"), rec
    assert says in rec["error"]["message"], rec["error"]
    line = 1 + text.splitlines().index('        return {"x": TensorSpec((p.n, 64), p.dtype)}')
    assert (rec["error"]["location"] or "").endswith(f"stages/toy/stage_a.py:{line}"), rec["error"]


@pytest.mark.parametrize("edit, says", [
    (('return {"x": TensorSpec((p.n, 64), p.dtype)}', 'return [TensorSpec((p.n, 64), p.dtype)]'),
     "Double.inputs() returned list: expected a dict of name -> TensorSpec"),
    (('return {"y": TensorSpec((p.n, 64), p.dtype)}', 'return {"y": (p.n, 64)}'),
     "Double.outputs() returned dict with an entry that is no name -> TensorSpec"),
    (("    needs_gpu = False", '    needs_gpu = "no"'), "Double.needs_gpu = 'no': expected True or False"),
])
def test_a_stage_whose_specs_or_flags_are_of_the_wrong_kind_is_one_line_naming_it(toy_ws, wb, edit, says):
    """inputs() returning a list read as "no fixture applies to toy/stage-a"; needs_gpu = "no"
    counted as true (the run was NO_GPU on a machine without one)."""
    path = toy_ws / "stages/toy/stage_a.py"
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1]))
    proc = wb("run", "a")
    assert proc.returncode == 2 and says in proc.stderr, proc.stdout + proc.stderr
    assert not list((toy_ws / "runs").glob("2*"))


def test_a_stage_class_missing_a_method_a_run_calls_is_one_line_naming_it(toy_ws, wb):
    """A Stage subclass without reference() (or inputs(), ...) ran into Stage's own
    NotImplementedError: a CRASH record 'NotImplementedError' naming no method, and MEMORY.md
    showed the kernel crashing. It is one line naming the file, the class and the method."""
    path = toy_ws / "stages/toy/stage_b.py"
    text = path.read_text()
    path.write_text(text[: text.index("    def reference")])
    proc = wb("run", "b")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "stage_b.py: Square does not define reference (a run calls inputs, outputs, compile, launch, reference" in proc.stderr
    assert not list((toy_ws / "runs").glob("2*"))


def _signal_dispositions(pid: int) -> str:
    """Whether process ``pid`` ignores, blocks or catches SIGINT, SIGTERM and SIGHUP (Linux)."""
    try:
        fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    except OSError:
        return "signal dispositions: unknown"
    said = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        states = [name for name in ("SigIgn", "SigBlk", "SigCgt") if int(fields.get(name, "0"), 16) >> (sig - 1) & 1]
        said.append(f"{sig.name} {'/'.join(states) or 'default'}")
    return "wb's signal dispositions before the signal: " + ", ".join(said)


@pytest.mark.parametrize("given, expected", [("ignored", "ignored"), ("default", "handled")])
def test_a_sighup_ignored_by_whoever_started_wb_stays_ignored(given, expected):
    """`nohup wb sweep ...` must survive the terminal closing: wb takes SIGHUP as Ctrl-C only
    where its starter left it at the default (SIGTERM always)."""
    from workbench import interrupts

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN if given == "ignored" else signal.SIG_DFL)
        interrupts.stop_on_termination()
        now = signal.getsignal(signal.SIGHUP)
        assert ("ignored" if now is signal.SIG_IGN else "handled" if callable(now) else "default") == expected
        assert callable(signal.getsignal(signal.SIGTERM))
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
def test_ctrl_c_or_sigterm_leaves_an_interrupted_record_and_kills_the_worker(toy_ws, sig):
    """SIGTERM (`timeout`, `kill`, a batch system ending the job) is handled as Ctrl-C, and so
    is SIGHUP (the terminal closed, ssh dropped: it killed wb before its record). wb started
    from a terminal: SIGHUP at its default, also when the suite itself runs under nohup (wb
    then rightly keeps ignoring it, interrupts.stop_on_termination)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "run", "a", "-V", "bug=sleep"],
        cwd=toy_ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    seen = ""
    deadline = time.time() + 60
    while "fixture" not in seen and time.time() < deadline:
        seen += proc.stdout.readline()
    time.sleep(0.3)
    dispositions = _signal_dispositions(proc.pid)  # for the message: a SIGINT wb ignores is lost
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, f"{dispositions}\n{seen}{out}"
    runs = sorted((toy_ws / "runs").glob("2*/run.json"))
    rec = json.loads(runs[-1].read_text())
    assert rec["verdict"] == "INTERRUPTED"
    pid = rec["timing"]["worker_pid"]
    deadline = time.time() + 5
    while not gone(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert gone(pid)
    assert not list((toy_ws / "runs").glob("*/.run.json.*.tmp"))


def test_warm_worker_is_reused_and_sees_edited_sources(toy_ws, wb):
    first = record_of(toy_ws, wb("run", "a", "--json"))
    second = record_of(toy_ws, wb("run", "a", "--json"))
    assert second["timing"]["worker_reused"] is True
    assert second["timing"]["worker_pid"] == first["timing"]["worker_pid"]
    stage = toy_ws / "stages/toy/stage_a.py"
    stage.write_text(stage.read_text().replace('y.copy_(inputs["x"] * 2)', 'y.copy_(inputs["x"] * 3)'))
    third = wb("run", "a", "--json")
    rec = record_of(toy_ws, third)
    assert third.returncode == 1 and rec["verdict"] == "FAIL" and rec["timing"]["worker_reused"] is True
    assert rec["provenance"]["sources"]["stages/toy/stage_a.py"] != first["provenance"]["sources"]["stages/toy/stage_a.py"]
    os.kill(first["timing"]["worker_pid"], signal.SIGKILL)


def test_a_workspace_made_again_at_its_path_does_not_get_the_old_workspaces_worker(toy_ws, wb):
    """A fresh clone where the last one was (`rm -rf ws && git clone ... ws`): the warm worker
    of the deleted folder, same path and same wb code, runs in a folder that no longer exists
    (its cwd, its Python) and served the new clone with the old one's loaded modules. It is
    replaced; the first clone's worker does not outlive the check."""
    first = record_of(toy_ws, wb("run", "a", "--json"))
    old = toy_ws.with_name("ws-deleted")
    toy_ws.rename(old)
    shutil.copytree(old, toy_ws, ignore=shutil.ignore_patterns(".wb", "runs"))
    os.chdir(toy_ws)
    second = record_of(toy_ws, wb("run", "a", "--json"))
    assert second["verdict"] == "PASS" and second["timing"]["worker_reused"] is False
    assert second["timing"]["worker_pid"] != first["timing"]["worker_pid"]
    deadline = time.time() + 5
    while not gone(first["timing"]["worker_pid"]) and time.time() < deadline:
        time.sleep(0.05)
    assert gone(first["timing"]["worker_pid"])
    third = record_of(toy_ws, wb("run", "a", "--json"))  # the new clone's own worker is warm
    assert third["timing"]["worker_reused"] is True and third["timing"]["worker_pid"] == second["timing"]["worker_pid"]
    os.kill(second["timing"]["worker_pid"], signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps (Linux)")
def test_a_cpu_stages_worker_starts_without_the_dsl(toy_ws, wb):
    """A plain PyTorch stage (needs_gpu = False) gets a worker that preloads torch but not the
    CuTe DSL (half a second of a new worker's start): no library of the DSL is mapped in it."""
    rec = record_of(toy_ws, wb("run", "a", "--json"))
    pid = rec["timing"]["worker_pid"]
    assert rec["verdict"] == "PASS" and rec["timing"]["worker_reused"] is False
    libraries = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/" in line}
    os.kill(pid, signal.SIGKILL)
    assert any("/torch/" in path for path in libraries)
    assert not any("cutlass" in path for path in libraries), sorted(p for p in libraries if "cutlass" in p)


def test_fresh_flag_uses_a_new_worker_each_time(toy_ws, wb):
    a = record_of(toy_ws, wb("run", "a", "--fresh", "--json"))
    b = record_of(toy_ws, wb("run", "a", "--fresh", "--json"))
    assert not a["timing"]["worker_reused"] and not b["timing"]["worker_reused"]
    assert a["timing"]["worker_pid"] != b["timing"]["worker_pid"]


def test_per_stage_timeout_from_kernel_yaml(toy_ws, wb):
    rec = record_of(toy_ws, wb("run", "b", "--json"))
    assert rec["timing"]["timeout_s"] == 5.0


def test_terminal_output_names_verdict_and_report(toy_ws, wb):
    proc = wb("run", "a", "-V", "bug=zero", "--fixture", "toy-random", "--seeds", "1")
    assert proc.returncode == 1
    assert "FAIL toy/stage-a" in proc.stdout and "output is all zero" in proc.stdout and "report.md" in proc.stdout


def test_run_needing_a_gpu_without_one_exits_2(toy_ws, wb):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert wb("new", "kernel", "scaled").returncode == 0
    proc = wb("run", "scaled/a")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "needs a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not [p for p in (toy_ws / "runs").glob("2*") if p.is_dir()]
    # decided before any worker started (it took 6 s: a worker importing torch and the DSL to say so)
    assert not (toy_ws / ".wb" / "logs").exists() and not list((toy_ws / ".wb").glob("pids/*.json"))
    # wb sweep too: it printed its plan, a first case ERROR, then this line
    swept = wb("sweep", "scaled/a", "--n", "128,256")
    assert swept.returncode == 2 and swept.stderr.strip().count("\n") == 0 and "needs a CUDA GPU" in swept.stderr
    assert "ERROR" not in swept.stdout and not [p for p in (toy_ws / "runs").glob("2*") if p.is_dir()]


def test_gpu_need_is_read_from_the_stage_source(tmp_path):
    from workbench.kernels.stage_source import needs_gpu

    cases = {
        "class S(Stage):\n    needs_gpu = False\n": False,
        "class S(Stage):\n    pass\n": True,
        "class S(workbench.Stage):\n    needs_gpu: bool = True\n": True,
        "class Base(Stage):\n    pass\nclass S(Base):\n    needs_gpu = False\n": None,  # they disagree: ask the worker
        "class S(Other):\n    pass\n": None,
        "class S(Stage):\n    needs_gpu = compute()\n": None,
        "def broken(:\n": None,
    }
    for source, expected in cases.items():
        path = tmp_path / "stage.py"
        path.write_text(source)
        assert needs_gpu(path) is expected, source


def test_ctrl_c_while_a_worker_starts_ends_that_worker(toy_ws, monkeypatch):
    """Ctrl-C in the seconds a new worker imports torch (and the DSL) left it running as an
    orphan until its idle limit (600 s by default)."""
    from workbench.run import supervisor
    from workbench.workspace import Workspace

    spawned = []
    real_popen = supervisor.subprocess.Popen

    def popen(*args, **kwargs):
        spawned.append(real_popen(*args, **kwargs))
        return spawned[-1]

    real_sleep = time.sleep
    pressed = []

    def ctrl_c(seconds):  # the first wait for the socket meets Ctrl-C; later sleeps (the kill's wait) are real
        if not pressed:
            pressed.append(True)
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(supervisor.subprocess, "Popen", popen)
    monkeypatch.setattr(supervisor.time, "sleep", ctrl_c)
    socket_path = str(supervisor._socket_dir() / f"once-test-{os.getpid()}-{time.monotonic_ns()}.sock")
    with pytest.raises(KeyboardInterrupt):
        supervisor.Worker.spawn(Workspace(toy_ws), socket_path, once=True)
    (proc,) = spawned
    assert proc.poll() is not None and gone(proc.pid)


def test_a_reader_that_leaves_the_pipe_does_not_cost_the_run(toy_ws):
    """`wb run a | head -1`: the progress write to the closed pipe raised BrokenPipeError in the
    middle of the run, which ended (exit 1, nothing on stderr) with no record and its worker
    killed. Now wb carries on without its reader and writes the record."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "run", "a"], cwd=toy_ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdout.readline()
    proc.stdout.close()  # the reader leaves, as head -1 does
    assert proc.wait(timeout=120) == 0
    (record,) = [json.loads(p.read_text()) for p in (toy_ws / "runs").glob("2*/run.json")]
    assert record["verdict"] == "PASS"


def test_one_run_workers_logs_are_pruned_to_the_newest(toy_ws, wb, monkeypatch):
    """Every one-run worker (--fresh, a sweep's fresh lanes, compile groups) wrote a log to
    .wb/logs that nothing removed: they piled up. The oldest beyond the newest few are removed."""
    from workbench.run import supervisor

    monkeypatch.setattr(supervisor, "KEEP_ONCE_LOGS", 3)
    logs = toy_ws / ".wb" / "logs"
    logs.mkdir(parents=True)
    for i in range(5):
        old = logs / f"worker-once-1-{i}.log"
        old.write_text("old\n")
        os.utime(old, (1000 + i, 1000 + i))
    (logs / "worker-abc123.log").write_text("a warm worker's log\n")
    assert wb("run", "a", "--fresh").returncode == 0
    once = sorted(p.name for p in logs.glob("worker-once-*.log"))
    assert len(once) == 3 and "worker-once-1-2.log" not in once and "worker-once-1-4.log" in once
    assert (logs / "worker-abc123.log").exists()


def test_a_warm_workers_log_is_trimmed_between_jobs_and_keeps_its_tail(toy_ws, wb, monkeypatch):
    """A warm worker serves many runs and appended to one log for ever: a stage printing 20 MB
    a run grew .wb/logs/worker-*.log by 20 MB each time. Past the limit, the next job starts
    the log again (its last part kept in <log>.old), and the worker goes on writing to it."""
    from workbench.run import supervisor

    monkeypatch.setattr(supervisor, "MAX_LOG_BYTES", 200_000)
    monkeypatch.setattr(supervisor, "KEEP_LOG_BYTES", 1000)
    stage = toy_ws / "stages/toy/stage_a.py"
    stage.write_text('print("x" * 300_000 + "\\nEND-OF-PRINT", flush=True)\n' + stage.read_text())
    first = record_of(toy_ws, wb("run", "a", "--json"))
    (log,) = (toy_ws / ".wb" / "logs").glob("worker-*.log")
    assert log.stat().st_size > 300_000
    second = record_of(toy_ws, wb("run", "a", "--json"))
    assert second["timing"]["worker_pid"] == first["timing"]["worker_pid"] and second["verdict"] == "PASS"
    old = log.with_name(log.name + ".old")
    assert old.is_file() and old.stat().st_size == 1000
    assert 300_000 < log.stat().st_size < 400_000, log.stat().st_size  # this run's print alone
    assert log.read_bytes().count(b"END-OF-PRINT") == 1
    os.kill(first["timing"]["worker_pid"], signal.SIGKILL)
