"""`wb sweep` on the CPU test kernel: cases as normal runs, warm-worker reuse, a HANG case that
does not stop the sweep, lanes with their own CUDA_VISIBLE_DEVICES, and the Slurm path
through submitit's LocalExecutor."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import REPO

from workbench.run import procs
from workbench.errors import UserError
from workbench.workspace import Workspace


def record(ws: Path, run_id: str) -> dict:
    return json.loads((ws / "runs" / run_id / "run.json").read_text())


def test_plan_is_the_checked_cartesian_product(toy_ws):
    from workbench.remote import sweep
    from workbench.kernels.registry import load_kernels, resolve_stage

    ws = Workspace(toy_ws, {"default_kernel": "toy"})
    spec = resolve_stage(ws, "a", load_kernels(ws))
    cases = sweep.plan(spec, {"n": ["128", "256"], "dtype": ["bf16", "fp16"]}, {"bug": ["none", "nan"]})
    assert len(cases) == 8
    assert cases[0].label == {"n": "128", "dtype": "bf16", "bug": "none"}
    assert cases[1].variants == {"bug": "nan"} and cases[-1].params == {"n": 256, "dtype": "fp16"}
    with pytest.raises(UserError, match=r"sweep case n=200: .*multiple of 128"):
        sweep.plan(spec, {"n": ["128", "200"]}, {})
    with pytest.raises(UserError, match="comma-separated"):
        sweep.split_values("128,,256", "--n")
    assert len(sweep.plan(spec, {}, {})) == 1  # no axes: one case, the defaults
    # millions of combinations were each checked, for minutes, before any answer; now the axes'
    # sizes refuse it before a single case is (the toy stage has no variant x: checking a case
    # would have said so)
    many = [str(128 * i) for i in range(1, 1001)]
    with pytest.raises(UserError, match=r"a sweep of 3600000 cases \(1000 x 60 x 60\): over the 10000"):
        sweep.plan(spec, {"n": many, "batch": [str(i) for i in range(60)]}, {"x": [str(i) for i in range(60)]})


def test_bad_sweep_arguments_are_one_line_errors(toy_ws, wb):
    proc = wb("sweep", "a", "--n", "128,200")
    assert proc.returncode == 2 and "n=200" in proc.stderr and "Traceback" not in proc.stderr
    proc = wb("sweep", "a", "-p", "nope=1,2")
    assert proc.returncode == 2 and "no parameter 'nope'" in proc.stderr
    proc = wb("sweep", "a", "--gpus", "0,,1")
    assert proc.returncode == 2 and "--gpus" in proc.stderr
    # a misspelt --fixture ran every case as an ERROR and overwrote the stage's sweep report
    proc = wb("sweep", "a", "--n", "128,256", "--fixture", "toy-randon")
    assert proc.returncode == 2 and "unknown fixture 'toy-randon' (did you mean toy-random" in proc.stderr, proc.stderr
    assert not (toy_ws / "runs").exists() or not list((toy_ws / "runs").glob("2*"))


@pytest.mark.parametrize("args, fragment", [
    (["--slurm", "p"], "--slurm p: Slurm's srun is not on this machine's PATH"),
    (["--slurm", "@local", "--slurm-opt", "timeout_min=abc"], "--slurm-opt timeout_min=abc: expected a whole number"),
    (["--slurm", "@local", "--slurm-opt", "mem_gb=-1"], "--slurm-opt mem_gb=-1: expected a positive number"),
    (["--slurm", "@local", "--slurm-opt", "bogus=1"], "--slurm-opt bogus: not a submitit parameter; known: timeout_min, mem_gb"),
    (["--slurm", "@local", "--slurm-opt", "slurm_acount=abc"], "(did you mean slurm_account?)"),
    (["--slurm-opt", "slurm_account=abc"], "--slurm-opt goes with --slurm"),
])
def test_slurm_mistakes_are_one_line_before_anything_is_submitted(toy_ws, wb, tmp_path, monkeypatch, args, fragment):
    """`--slurm p` where Slurm is not installed was submitit's RuntimeError traceback ("Could
    not detect srun"), `--slurm-opt timeout_min=abc` a ValueError from inside submitit, an
    unknown --slurm-opt key was dropped without a word (submitit's LocalExecutor ignores
    what it does not know), and --slurm-opt without --slurm was ignored too. Each is now one
    line, exit 2, before a sweep folder or a record exists."""
    pytest.importorskip("submitit")
    empty = tmp_path / "no-slurm-here"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no srun, wherever the tests run
    proc = wb("sweep", "a", "--n", "128", *args)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("wb: error:") and "\n" not in err and fragment in err, err
    assert not (toy_ws / ".wb" / "slurm").exists() and not list((toy_ws / "runs").glob("2*"))


def test_known_slurm_options_are_typed_for_submitit():
    """What passes the check reaches submitit typed: whole numbers as int, yes/no as bool, a
    slurm_ value of digits as a number and other text as given."""
    pytest.importorskip("submitit")
    from workbench.remote.sweep import slurm_options

    opts = slurm_options("@local", {"timeout_min": "30", "mem_gb": "7.5", "stderr_to_stdout": "yes",
                                    "slurm_account": "abc", "slurm_array_parallelism": "4"})
    assert opts == {"timeout_min": 30, "mem_gb": 7.5, "stderr_to_stdout": True, "slurm_account": "abc",
                    "slurm_array_parallelism": 4}


# The job's timeout runs from when the worker accepts it (a new worker's start has its own
# limit), so a `sleep` case is HANG at any --timeout; 8 s leaves the other cases a wide margin
# (a nan case, diagnosis included, takes about 1 s on a 2-core machine, but over 4 s with four
# test processes on those 2 cores: it once came back HANG; a first job on a GPU machine also
# starts CUDA).
@pytest.mark.slow  # six cases in real workers; each HANG case waits out --timeout 8
def test_sweep_runs_every_case_reuses_the_warm_worker_and_survives_a_hang(toy_ws, wb):
    proc = wb("sweep", "a", "--n", "128,256", "-V", "bug=none,nan,sleep", "--timeout", "8", "--gpus", "none", "--json", timeout=400)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    rows = summary["rows"]
    assert [(r["label"]["n"], r["label"]["bug"], r["verdict"]) for r in rows] == [
        ("128", "none", "PASS"), ("128", "nan", "FAIL"), ("128", "sleep", "HANG"),
        ("256", "none", "PASS"), ("256", "nan", "FAIL"), ("256", "sleep", "HANG"),
    ]
    assert summary["lanes"] == ["local"] and summary["fixtures"] == ["toy-random", "toy-ones"]
    assert rows[0]["cells"]["toy-random"]["verdict"] == "PASS" and rows[0]["cells"]["toy-random"]["min_cos"] > 0.9999
    assert rows[1]["cells"]["toy-random"]["verdict"] == "FAIL" and rows[2]["cells"] == {}
    # Each case is a normal run record, tagged with the sweep.
    recs = [record(toy_ws, r["run"]) for r in rows]
    assert all(r["sweep"]["id"] == summary["id"] for r in recs)
    assert [r["sweep"]["case"] for r in recs] == list(range(6))
    # One warm worker served the cases; only the case after a HANG needed a new one.
    assert [r["timing"]["worker_reused"] for r in recs] == [False, True, True, False, True, True]
    # The summary is in the stage report.
    sweep_md = (toy_ws / "runs" / "reports" / "toy-stage-a.sweep.md").read_text()
    assert f"## Sweep {summary['id']}" in sweep_md and "| n | bug | run | toy-random | toy-ones |" in sweep_md
    assert "| 128 | sleep | HANG: no result after 8 s" in sweep_md
    stage_md = (toy_ws / "runs" / "reports" / "toy-stage-a.md").read_text()
    assert sweep_md.strip() in stage_md
    listed = wb("runs", "-n", "10")
    assert all(r["run"] in listed.stdout for r in rows)


@pytest.mark.slow  # six cases over two lanes, each lane a real warm worker
def test_sweep_lanes_each_have_their_own_gpu_and_warm_worker(toy_ws, wb):
    proc = wb("sweep", "a", "--n", "128,256,384,512", "--gpus", "0,1", "--json", timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["lanes"] == ["gpu0", "gpu1"]
    assert {r["lane"] for r in summary["rows"]} == {"gpu0", "gpu1"}
    # Two warm workers, one per lane, each with its CUDA_VISIBLE_DEVICES.
    workers = [p for p in procs.scan(Workspace(toy_ws)) if p.alive]
    assert sorted(p.data["cuda_visible_devices"] for p in workers) == ["0", "1"]
    recs = [record(toy_ws, r["run"]) for r in summary["rows"]]
    assert sum(r["timing"]["worker_reused"] for r in recs) == 2
    # each lane's records name its device and its worker, and no two lanes share either
    by_lane = {}
    for row, rec in zip(summary["rows"], recs):
        by_lane.setdefault(row["lane"], set()).add((rec["provenance"]["cuda_visible_devices"], rec["timing"]["worker_pid"]))
    assert sorted(by_lane) == ["gpu0", "gpu1"] and all(len(seen) == 1 for seen in by_lane.values()), by_lane
    assert by_lane["gpu0"] != by_lane["gpu1"] and {next(iter(s))[0] for s in by_lane.values()} == {"0", "1"}
    plain = wb("sweep", "a", "--n", "128,256", "--gpus", "0,1")
    assert plain.returncode == 0 and "sweep sweep-" in plain.stdout and "PASS 1.000000" in plain.stdout
    procs.kill(Workspace(toy_ws), everything=True)


# --timeout 4, as above: the PASS cases take well under a second once their worker accepts them
# (on a CPU machine; a GPU machine's first job also starts CUDA).
@pytest.mark.slow  # two submitit jobs, each a process with its own worker; HANG cases wait out --timeout 4
def test_slurm_path_through_submitit_local_executor(toy_ws, wb):
    pytest.importorskip("submitit")
    proc = wb(
        "sweep", "a", "--n", "128,256", "-V", "bug=none,sleep", "--timeout", "4", "--slurm", "@local", "--slurm-jobs", "2", "--json",
        timeout=400,
    )
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    verdicts = {(r["label"]["n"], r["label"]["bug"]): r["verdict"] for r in summary["rows"]}
    assert verdicts == {("128", "none"): "PASS", ("128", "sleep"): "HANG", ("256", "none"): "PASS", ("256", "sleep"): "HANG"}
    assert summary["lanes"] == ["slurm:@local"]
    recs = [record(toy_ws, r["run"]) for r in summary["rows"]]
    assert all(r["sweep"]["lane"].startswith("slurm:") for r in recs)
    assert len({r["sweep"]["lane"] for r in recs}) == 2  # two jobs
    assert (toy_ws / "runs" / "reports" / "toy-stage-a.sweep.md").exists()
    # Each job retired its warm worker when it ended.
    import time

    deadline = time.monotonic() + 20
    while [p for p in procs.scan(Workspace(toy_ws)) if p.alive and p.data.get("kind") == "warm-worker"]:
        assert time.monotonic() < deadline, "a Slurm job's warm worker outlived its job"
        time.sleep(0.2)


@pytest.mark.slow  # submitit job processes
def test_slurm_job_that_dies_leaves_lost_records(toy_ws):
    submitit = pytest.importorskip("submitit")
    from workbench.remote import sweep
    from workbench.kernels.registry import load_kernels, resolve_stage

    class Broken(submitit.LocalExecutor):
        def submit(self, fn, *args, **kwargs):  # the job's process dies before running any case
            import os

            job = super().submit(os._exit, 3)
            # submitit waits up to 15 s for a result file that a slow shared filesystem may not
            # show yet; a process that os._exit()s writes none, and this folder is local.
            job._results_timeout_s = 1
            return job

    ws = Workspace(toy_ws, {"default_kernel": "toy"})
    spec = resolve_stage(ws, "a", load_kernels(ws))
    cases = sweep.plan(spec, {"n": ["128", "256"]}, {})
    executor = Broken(folder=str(toy_ws / ".wb" / "slurm-test"))
    results = sweep.run_slurm(ws, spec, cases, sweep.RunOptions(), "sweep-x", lambda event: None, "p", jobs=1, executor=executor)
    assert [r.verdict for r in results] == ["LOST", "LOST"]
    assert results[0].record["error"]["message"].startswith("Slurm job ")
    assert record(toy_ws, results[0].record["id"])["verdict"] == "LOST"


def test_lost_record_has_the_fields_of_a_normal_run_record(toy_ws, monkeypatch):
    """A sweep case whose job died is recorded LOST with the same fields as a run that
    answered (both built by records.new_record), so every reader finds every field."""
    from workbench.kernels.registry import load_kernels, resolve_stage
    from workbench.records.store import read_record
    from workbench.remote import sweep
    from workbench.run import execute
    from workbench.run.supervisor import Outcome
    from workbench.schemas.run_record import RunRecord

    ws = Workspace(toy_ws, {"default_kernel": "toy"})
    spec = resolve_stage(ws, "a", load_kernels(ws))
    answered = Outcome(status="result", result={"verdict": "PASS", "fixtures": [], "env": {"gpu": "cpu"}})
    monkeypatch.setattr(execute, "run_job", lambda *args, **kwargs: answered)
    normal = execute.run_stage(ws, spec, spec.resolve_params({}), {})
    (case,) = sweep.plan(spec, {"n": ["128"]}, {})
    lost = sweep._lost(ws, spec, case, sweep.RunOptions(), "Slurm job 1 failed", {"id": "s", "case": 0, "of": 1, "lane": "x"}).record
    assert lost["verdict"] == "LOST" and normal["verdict"] == "PASS"
    assert set(lost) == set(normal)
    on_disk = [read_record(ws.runs_dir / r["id"]) for r in (normal, lost)]
    assert set(on_disk[0]) == set(on_disk[1])
    schema = {f.alias or name for name, f in RunRecord.model_fields.items()}
    assert schema <= set(on_disk[1]), schema - set(on_disk[1])


def _sweep_until(toy_ws, args: list[str], line: str):
    """`wb sweep a --n 128 --timeout 60 ARGS` in a process group of its own, read until its
    output shows ``line``; (the process, what it printed so far)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", COLUMNS="200")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "sweep", "a", "--n", "128", "--timeout", "60", *args],
        cwd=toy_ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    seen = ""
    deadline = time.time() + 120
    while line not in seen and time.time() < deadline:
        seen += proc.stdout.readline()
    return proc, seen


def _ctrl_c(proc, wait: float) -> str:
    """What a terminal's Ctrl-C does (SIGINT to the whole foreground group); the rest of the output."""
    import os
    import signal

    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=wait)
    return out


@pytest.mark.slow  # a real sweep in its own process, interrupted while a case hangs in its worker
def test_ctrl_c_ends_a_sweep_with_130_and_the_running_case_recorded_interrupted(toy_ws):
    """Ctrl-C used to exit 1 at once, the lane (a daemon thread; a Ctrl-C inside Thread.join
    marked it stopped) cut off mid-record: empty run folders, a record CRASH with no sweep tag.
    Now the lanes write their records first: the hanging case says INTERRUPTED, tagged."""
    # the first case is done: the second hangs
    proc, seen = _sweep_until(toy_ws, ["-V", "bug=none,sleep", "--gpus", "none"], "[1/2]")
    time.sleep(1.0)
    out = _ctrl_c(proc, wait=60)
    assert proc.returncode == 130, seen + out
    assert "wb: error: interrupted: the sweep stopped early" in out
    runs = [p for p in (toy_ws / "runs").iterdir() if p.name[:1].isdigit()]
    recs = sorted((record(toy_ws, p.name) for p in runs), key=lambda r: r["sweep"]["case"])
    assert [(r["sweep"]["case"], r["verdict"]) for r in recs] == [(0, "PASS"), (1, "INTERRUPTED")], recs
    assert not list((toy_ws / "runs").glob("*/.run.json.*.tmp"))


@pytest.mark.slow  # a submitit job with its own worker, interrupted while its case hangs
def test_ctrl_c_of_a_local_slurm_sweep_prints_no_traceback(toy_ws):
    """`--slurm @local`: submitit's job controller shares wb's process group, so a terminal's
    Ctrl-C reached it too, and its KeyboardInterrupt traceback (kill_tasks, time.sleep) went
    into the middle of the sweep's output, every time. Its stderr is now a file of its own."""
    pytest.importorskip("submitit")
    proc, seen = _sweep_until(toy_ws, ["-V", "bug=sleep", "--slurm", "@local"], "submitted")
    time.sleep(6.0)  # the job's process is running its case by now
    out = _ctrl_c(proc, wait=90)
    assert proc.returncode == 130, seen + out
    assert "Traceback" not in seen + out and "KeyboardInterrupt" not in seen + out, seen + out
    assert list((toy_ws / ".wb" / "slurm").glob("*/controller-0.err"))


def test_a_run_started_while_its_process_is_stopping_ends_interrupted(toy_ws):
    """A case whose worker was still starting when the sweep was interrupted ran to its end:
    only busy workers were ended. A run now checks STOPPING while it waits on its worker."""
    from workbench.kernels.registry import load_kernels
    from workbench.run import execute, supervisor

    ws = Workspace(toy_ws)
    spec = load_kernels(ws)["toy"].stage("a")
    supervisor.STOPPING.set()
    try:
        rec = execute.run_stage(ws, spec, spec.resolve_params({}), spec.resolve_variants({"bug": "sleep"}), warm=False, timeout=60)
    finally:
        supervisor.STOPPING.clear()
    assert rec["verdict"] == "INTERRUPTED" and "the sweep ended the worker" in rec["error"]["message"]
    assert rec["timing"]["total_s"] < 30
    assert procs.starttime(rec["timing"]["worker_pid"]) is None  # the worker is gone


def test_sweeps_started_in_one_second_get_their_own_ids(toy_ws, monkeypatch):
    """The id was the start time to the second: two sweeps started together shared it, their
    records' tags and a Slurm sweep's progress files (one sweep showed the other's rows)."""
    from datetime import datetime as real_datetime

    from workbench.remote import sweep as sweep_lib
    from workbench.workspace import Workspace

    class Frozen(real_datetime):
        @classmethod
        def now(cls, tz=None):
            return real_datetime(2026, 12, 5, 12, 0, 0, 123456)

    monkeypatch.setattr(sweep_lib, "datetime", Frozen)
    ws = Workspace(toy_ws)
    first = sweep_lib.new_sweep_id(ws)
    assert first == "sweep-20261205-120000-123456"
    calls = iter([real_datetime(2026, 12, 5, 12, 0, 0, 123456), real_datetime(2026, 12, 5, 12, 0, 0, 123457)])
    monkeypatch.setattr(Frozen, "now", classmethod(lambda cls, tz=None: next(calls)))
    assert sweep_lib.new_sweep_id(ws) == "sweep-20261205-120000-123457"  # the same instant is taken: the next


def test_sweep_id_claims_over_a_day_old_are_dropped(toy_ws):
    """Every sweep left a folder in .wb/sweeps/ for ever; a claim only has to outlive its instant."""
    from workbench.remote import sweep as sweep_lib
    from workbench.workspace import Workspace

    ws = Workspace(toy_ws)
    claims = ws.ensure_state_dir("sweeps")
    (claims / "sweep-20200101-000000-000001").mkdir()
    recent = sweep_lib.new_sweep_id(ws)
    assert sorted(p.name for p in claims.iterdir()) == [recent]
    assert sweep_lib.new_sweep_id(ws) != recent and (claims / recent).is_dir()  # a fresh claim stays


@pytest.mark.parametrize("answer", ["WB-GPUS [0", "WB-GPUS 5", "WB-GPUS " + "[" * 5000, "WB-GPUS \"01\"", "WB-GPUS [\"a b;x\"]", "WB-GPUS [0, 0]"])
def test_a_hosts_gpu_count_cut_off_or_not_wbs_is_one_line(toy_ws, monkeypatch, answer):
    import subprocess

    from workbench.remote import sweep as sweeps, transport
    from workbench.remote.hosts import Host

    monkeypatch.setattr(transport, "ssh_run", lambda host, script, timeout: subprocess.CompletedProcess([], 0, answer + "\n", ""))
    with pytest.raises(UserError, match="host h: its GPU count is cut off or not wb's"):
        sweeps.remote_gpus(Workspace(toy_ws, {}), Host("h", "me@box", "w"))
    monkeypatch.setattr(transport, "ssh_run", lambda host, script, timeout: subprocess.CompletedProcess([], 0, "WB-GPUS [\"0\", 1]\n", ""))
    assert sweeps.remote_gpus(Workspace(toy_ws, {}), Host("h", "me@box", "w")) == ["0", "1"]


def test_a_slurm_sweep_interrupted_while_it_waits_is_an_interrupted_sweep(toy_ws):
    """Ctrl-C (or SIGTERM) while wb waits on its Slurm jobs cancelled them, but the results
    were not marked interrupted: wb sweep exited 1, not 130, without saying it stopped early."""
    pytest.importorskip("submitit")
    from workbench.kernels.registry import load_kernels, resolve_stage
    from workbench.remote import sweep

    class Job:
        job_id = "7"
        cancelled = False

        def done(self):
            raise KeyboardInterrupt

        def cancel(self, check=True):
            Job.cancelled = True

        def result(self):
            raise RuntimeError("job 7 was cancelled")

    class Executor:
        def submit(self, *args):
            return Job()

    ws = Workspace(toy_ws, {"default_kernel": "toy"})
    spec = resolve_stage(ws, "a", load_kernels(ws))
    cases = sweep.plan(spec, {"n": ["128"]}, {})
    results = sweep.run_slurm(ws, spec, cases, sweep.RunOptions(), "sweep-x", lambda event: None, "p", jobs=1, executor=Executor())
    assert Job.cancelled and [r.verdict for r in results] == ["LOST"] and all(r.interrupted for r in results)
    summary = sweep.summarize(ws, spec, cases, results, "sweep-x", ["slurm:p"], "now")
    assert summary["interrupted"] is True  # what makes wb sweep say so and exit 130
