"""Stale-process hygiene with real processes: pid files, `wb ps`, `wb kill`, the pid-reuse
guard, and the orphan a killed `wb run` leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO

from workbench import processes
from workbench.run import procs
from workbench.workspace import Workspace


def alive(pid: int) -> bool:
    return processes.starttime(pid) is not None


def wait_until(cond, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def spawn_with_pidfile(ws: Path, kind: str = "warm-worker", **extra) -> subprocess.Popen:
    """A real process that writes its own pid file the way wb's workers do, then sleeps."""
    code = textwrap.dedent(
        f"""
        import json, sys, time
        from workbench.run import procs
        extra = json.loads(sys.argv[1])
        procs.PidFile({str(ws / '.wb' / 'pids' / 'test.json')!r}.replace('test.json', f'test-{{__import__("os").getpid()}}.json'), {kind!r}, **extra)
        print("ready", flush=True)
        time.sleep(300)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(extra)], stdout=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def test_starttime_distinguishes_processes():
    me = processes.starttime(os.getpid())
    assert isinstance(me, int) and me > 0
    assert processes.same_process(os.getpid(), me, processes.boot_id())
    assert not processes.same_process(os.getpid(), me + 1)
    assert not processes.same_process(os.getpid(), me, "another-boot")
    assert processes.starttime(2 ** 22 + 12345) is None


def test_ps_lists_and_kill_ends_an_orphan(toy_ws, wb):
    # A warm worker whose socket is gone can never be reached again: an orphan.
    orphan = spawn_with_pidfile(toy_ws, socket=str(toy_ws / "gone.sock"), idle=600)
    # A healthy idle warm worker (its socket exists) is not one.
    (toy_ws / "here.sock").write_text("")
    healthy = spawn_with_pidfile(toy_ws, socket=str(toy_ws / "here.sock"), idle=600)
    try:
        rows = json.loads(wb("ps", "--json").stdout)
        states = {r["pid"]: r["state"] for r in rows}
        assert states == {orphan.pid: "orphan", healthy.pid: "idle"}
        assert "socket is gone" in next(r["note"] for r in rows if r["pid"] == orphan.pid)
        shown = wb("ps")
        assert str(orphan.pid) in shown.stdout and "orphan" in shown.stdout
        killed = json.loads(wb("kill", "--json").stdout)
        assert [(k["pid"], k["killed"]) for k in killed] == [(orphan.pid, True)]
        reap(orphan)
        assert orphan.returncode is not None and alive(healthy.pid)
        assert not list((toy_ws / ".wb" / "pids").glob(f"*-{orphan.pid}.json"))
        # By pid, `wb kill` ends an idle worker too; --all ends everything left.
        assert json.loads(wb("kill", str(healthy.pid), "--json").stdout)[0]["killed"]
        reap(healthy)
        assert healthy.returncode is not None
        assert "no wb worker processes" in wb("ps").stdout
    finally:
        for p in (orphan, healthy):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_pid_reuse_guard_never_kills_a_stranger(toy_ws, wb):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    try:
        wait_until(lambda: alive(stranger.pid), what="the stranger to start")
        folder = toy_ws / ".wb" / "pids"
        folder.mkdir(parents=True, exist_ok=True)
        # A pid file naming the stranger's pid, as if an old worker had had it: other start time.
        fake = {
            "pid": stranger.pid, "pgid": stranger.pid, "kind": "warm-worker", "host": procs.socket.gethostname(),
            "boot_id": processes.boot_id(), "starttime": processes.starttime(stranger.pid) - 1, "started": time.time() - 3600,
            "socket": str(toy_ws / "gone.sock"), "idle": 600, "job": None,
        }
        stale = folder / f"old-{stranger.pid}.json"
        stale.write_text(json.dumps(fake))
        # `wb ps` recognises the stale file (and removes it) ...
        rows = json.loads(wb("ps", "--all", "--json").stdout)
        assert [r["state"] for r in rows] == ["reused"] and "another process" in rows[0]["note"]
        assert not stale.exists()
        # ... and `wb kill` refuses the pid, by number or with --all.
        stale.write_text(json.dumps(fake))
        refused = wb("kill", str(stranger.pid))
        assert refused.returncode == 1 and "not wb's to kill" in refused.stdout
        stale.write_text(json.dumps(fake))
        assert json.loads(wb("kill", "--all", "--json").stdout) == []
        assert alive(stranger.pid)
        # Same for a pid file from before a reboot (another boot id), and one without a start time.
        (folder / f"boot-{stranger.pid}.json").write_text(json.dumps({**fake, "starttime": processes.starttime(stranger.pid), "boot_id": "x"}))
        (folder / f"legacy-{stranger.pid}.json").write_text(json.dumps({"pid": stranger.pid, "pgid": stranger.pid, "started": 1}))
        assert wb("kill", str(stranger.pid)).returncode == 1
        assert alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_a_pid_file_copied_with_its_workspace_is_not_this_workspaces_to_kill(toy_ws, wb, tmp_path):
    """`cp -r` of a workspace carries .wb/pids along: the copy's `wb ps` listed the original's
    busy worker and `wb kill --all` ended it, and the original's run was recorded as a CRASH.
    A pid file names where it was written; found elsewhere, it is foreign, never signalled."""
    worker = subprocess.Popen(  # the original's worker: its cwd is the original workspace
        [sys.executable, "-c", "import time; time.sleep(300)", "workbench.run.worker"], cwd=tmp_path, start_new_session=True
    )
    try:
        wait_until(lambda: alive(worker.pid), what="the stand-in worker to start")
        original = tmp_path / "original" / ".wb" / "pids" / f"worker-{worker.pid}.json"
        data = {
            "pid": worker.pid, "pgid": worker.pid, "kind": "warm-worker", "host": procs.socket.gethostname(),
            "boot_id": processes.boot_id(), "starttime": processes.starttime(worker.pid), "started": time.time(),
            "socket": str(tmp_path / "gone.sock"), "idle": 600, "job": None, "path": os.path.realpath(original),
        }
        copied = toy_ws / ".wb" / "pids" / original.name
        copied.parent.mkdir(parents=True, exist_ok=True)
        copied.write_text(json.dumps(data))
        rows = json.loads(wb("ps", "--all", "--json").stdout)
        assert [(r["state"], r["pid"]) for r in rows] == [("foreign", worker.pid)] and "copied with its workspace" in rows[0]["note"]
        assert json.loads(wb("kill", "--all", "--json").stdout) == []
        assert wb("kill", str(worker.pid)).returncode == 1 and alive(worker.pid)
        # where it was written, the same file is the worker's (an orphan: its socket is gone)
        assert procs._classify(original, data, time.time()).state == "orphan"
    finally:
        worker.kill()
        worker.wait()


def test_idle_past_timeout_and_once_worker_without_wb_are_orphans(toy_ws, wb):
    (toy_ws / "s.sock").write_text("")
    stuck = spawn_with_pidfile(toy_ws, socket=str(toy_ws / "s.sock"), idle=1, last_active=time.time() - 3600)
    dead_parent = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_parent.wait()
    lonely = spawn_with_pidfile(toy_ws, "once-worker", socket=str(toy_ws / "s.sock"), parent={"pid": dead_parent.pid, "starttime": 1})
    try:
        rows = {r["pid"]: r for r in json.loads(wb("ps", "--json").stdout)}
        assert rows[stuck.pid]["state"] == "orphan" and "past its idle timeout" in rows[stuck.pid]["note"]
        assert rows[lonely.pid]["state"] == "orphan" and "one-run worker" in rows[lonely.pid]["note"]
        assert sorted(k["pid"] for k in json.loads(wb("kill", "--json").stdout)) == sorted([stuck.pid, lonely.pid])
    finally:
        for p in (stuck, lonely):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _start_sleeping_run(toy_ws: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "run", "a", "-V", "bug=sleep", "--timeout", "300"],
        cwd=toy_ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for line in proc.stdout:
        if "fixture" in line:
            break
    return proc


@pytest.mark.parametrize("worker", ["started-by-this-wb", "warm-from-an-earlier-wb"])
def test_a_worker_whose_wb_is_killed_ends_its_job_within_5_s(toy_ws, wb, worker):
    """Issue 14 item 8: kill -9 of `wb run` left its worker running the job (on an H200 it held
    138 GB for seconds after). A worker started by that wb dies by the parent-death signal;
    a warm worker an earlier wb started dies when the job's socket hangs up."""
    ws = Workspace(toy_ws)
    warm = None
    if worker == "warm-from-an-earlier-wb":
        assert wb("run", "a").returncode == 0  # leaves a warm worker whose parent is gone
        (warm,) = [p.pid for p in procs.scan(ws) if p.alive]
    proc = _start_sleeping_run(toy_ws)
    try:
        busy = wait_until(lambda: [p for p in procs.scan(ws) if p.state == "busy"], what="the busy worker")
        pid = busy[0].pid
        assert busy[0].data["job"]["supervisor"]["pid"] == proc.pid
        if warm is not None and pid != warm:
            pytest.skip("wb's own code changed between the two runs, so the warm worker was replaced")
        assert (processes._stat_fields(pid)[1] == str(proc.pid)) == (warm is None)  # field 4: its parent
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        wait_until(lambda: not alive(pid), timeout=5.0, what="the worker to end")
        assert time.monotonic() - killed < 5.0
        assert [r for r in json.loads(wb("ps", "--json").stdout) if r["state"] != "gone"] == []
        assert "orphaned" not in wb("run", "a").stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        procs.kill(ws, everything=True)


def test_wb_run_warns_about_an_orphan_of_an_earlier_run(toy_ws, wb):
    """A busy worker whose wb is gone and that did not end (stuck where no signal helps) is
    an orphan: `wb run` warns once, `wb kill` ends it."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stuck = spawn_with_pidfile(toy_ws, job={"run_dir": str(toy_ws / "runs" / "x"), "supervisor": {"pid": gone.pid, "starttime": 1}, "since": time.time()})
    try:
        run = wb("run", "a", "--json")
        assert run.returncode == 0, run.stderr
        warnings = [line for line in run.stderr.splitlines() if "orphaned wb process" in line]
        assert len(warnings) == 1 and f"pid {stuck.pid}" in warnings[0] and "wb kill" in warnings[0]
        killed = json.loads(wb("kill", "--json").stdout)
        assert [k["pid"] for k in killed if k["killed"]] == [stuck.pid]
    finally:
        if stuck.poll() is None:
            os.killpg(stuck.pid, signal.SIGKILL)
        stuck.wait()
        procs.kill(Workspace(toy_ws), everything=True)


def test_ps_lists_a_worker_without_its_pid_file_and_a_dying_one(toy_ws, wb):
    """`wb ps` lists every process wb started here while it lives: a worker whose pid file
    was deleted shows as untracked (and `wb kill PID` ends it), a worker marked dying as dying."""
    assert wb("run", "a").returncode == 0
    ws = Workspace(toy_ws)
    (info,) = [p for p in procs.scan(ws) if p.alive]

    def untracked():
        # The worker rewrites its pid file just after it answers (job done, last active), so
        # a file deleted right after `wb run` returns can come back once: delete it again.
        info.path.unlink(missing_ok=True)
        rows = json.loads(wb("ps", "--json").stdout)
        return [(r["pid"], r["state"]) for r in rows] == [(info.pid, "untracked")]

    wait_until(untracked, what="wb ps to list the worker as untracked")
    procs.PidFile.__new__(procs.PidFile)  # the class stays importable without a process
    data = {**info.data, "dying": "its wb went away during the job"}
    info.path.write_text(json.dumps(data))
    assert [(r["state"], r["note"]) for r in json.loads(wb("ps", "--json").stdout)] == [("dying", "its wb went away during the job")]
    info.path.unlink()
    killed = json.loads(wb("kill", str(info.pid), "--json").stdout)
    assert killed[0]["killed"], killed
    wait_until(lambda: not alive(info.pid), what="the untracked worker to end")



def test_a_worker_without_socket_or_pid_file_is_starting_or_exiting_by_its_age(toy_ws, monkeypatch):
    """A worker removes its pid file, then its socket, then tears torch down: `wb ps` in that
    moment listed it as untracked (a worker someone else's pid file deletion hid). Without a
    socket it is exiting, or starting when it is seconds old; with one it stays untracked."""
    sock = toy_ws / ".wb" / "w.sock"
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "workbench.run.worker", "--socket", str(sock)],
                            cwd=toy_ws, start_new_session=True)
    ws = Workspace(toy_ws)

    def state():
        return [(p.state, p.alive) for p in procs.scan(ws) if p.pid == fake.pid]

    try:
        wait_until(lambda: state() != [], what="the fake worker to show in /proc")
        assert state() == [("starting", True)]
        monkeypatch.setattr(procs, "STARTING_S", 0.0)
        assert state() == [("exiting", True)]
        sock.parent.mkdir(exist_ok=True)
        sock.write_text("")
        assert state() == [("untracked", True)]
    finally:
        fake.kill()
        fake.wait()

def test_worker_pid_file_records_identity_and_job(toy_ws, wb):
    assert wb("run", "a").returncode == 0
    files = list((toy_ws / ".wb" / "pids").glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert files[0].name.endswith(f"-{data['pid']}.json")
    assert data["kind"] == "warm-worker" and data["job"] is None and data["host"]
    assert data["starttime"] == processes.starttime(data["pid"]) and data["boot_id"] == processes.boot_id()
    procs.kill(Workspace(toy_ws), everything=True)
    wait_until(lambda: not alive(data["pid"]), what="the worker to end")


def test_pid_files_that_are_not_files_are_listed_as_unreadable_and_never_block(toy_ws):
    """A FIFO among the pid files blocked `wb ps` and `wb kill --all` for ever, a link to
    /dev/zero read until memory ran out."""
    from conftest import run_wb_process

    pids = toy_ws / ".wb" / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    os.mkfifo(pids / "zz-1.json")
    (pids / "zz-2.json").symlink_to("/dev/zero")
    listed = run_wb_process("ps", "--all", "--json", cwd=toy_ws, timeout=60)
    assert listed.returncode == 0, listed.stderr
    notes = {Path(p["pidfile"]).name: p["note"] for p in json.loads(listed.stdout)}
    assert notes == {"zz-1.json": "unreadable pid file", "zz-2.json": "unreadable pid file"}
    killed = run_wb_process("kill", "--all", cwd=toy_ws, timeout=60)
    assert killed.returncode == 0, killed.stderr


def test_a_pid_files_temporary_left_by_a_killed_write_is_removed_once_stale(toy_ws):
    """A worker killed while writing its pid file left `.<stem>-<pid>.json.<rand>.tmp` that
    neither `wb ps` nor `wb kill` ever removed; a fresh one (a write going on) stays."""
    pids = toy_ws / ".wb" / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    stale, fresh = pids / ".abc-1.json.x1.tmp", pids / ".abc-2.json.x2.tmp"
    stale.write_text("{")
    fresh.write_text("{")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    procs.scan(Workspace(toy_ws))
    assert not stale.exists() and fresh.exists()


def test_wb_kill_of_a_busy_worker_makes_its_run_interrupted_not_a_crash(toy_ws, wb):
    """`wb kill PID` on a worker busy with another wb's run: that wb recorded "CRASH: the
    worker process died", a crash MEMORY.md then showed that never happened. The kill leaves
    a marker beside the pid file; the run reads it and records INTERRUPTED, naming wb kill."""
    ws = Workspace(toy_ws)
    proc = _start_sleeping_run(toy_ws)
    try:
        busy = wait_until(lambda: [p for p in procs.scan(ws) if p.state == "busy"], what="the busy worker")
        killed = wb("kill", str(busy[0].pid))
        assert killed.returncode == 0, killed.stderr
        out, _ = proc.communicate(timeout=60)
        (record,) = [json.loads(p.read_text()) for p in (toy_ws / "runs").glob("2*/run.json")]
        assert record["verdict"] == "INTERRUPTED", out
        assert f"killed by `wb kill`" in record["error"]["message"]
        assert not list(procs.pid_dir(ws).glob("*.killed"))
    finally:
        if proc.poll() is None:
            proc.kill()
        procs.kill(ws, everything=True)


def test_a_worker_this_wb_ended_is_not_reported_as_killed_by_wb_kill(tmp_path):
    """A Ctrl-C'd sweep ends its busy workers through kill_proc, which leaves the `wb kill`
    marker: when the lane saw the socket close before STOPPING, its record said "the worker was
    killed by `wb kill` (pid <the sweep's own pid>)"."""
    import socket as socket_lib

    from workbench.run import supervisor

    ours, theirs = socket_lib.socketpair()
    pidfile = tmp_path / "pids" / "warm-1.json"
    pidfile.parent.mkdir()
    procs._mark_killed(pidfile.parent, 4242)

    class EndedWorker:  # the worker has ended: recv returns b""
        pid, reused = 4242, True

        def __init__(self):
            self.pidfile = pidfile

        def connect(self):
            theirs.shutdown(socket_lib.SHUT_WR)  # it answers nothing more; the job still goes in
            return ours

        def log_size(self):
            return 0

        def trim_log(self):
            pass

        def log_tail(self, since=0):
            return ""

        def alive(self):
            return False

        def kill(self):
            pass

    outcome = supervisor._drive(EndedWorker(), {"op": "run"}, 5.0, lambda e: None)
    assert outcome.status == "INTERRUPTED" and outcome.message == supervisor.STOPPED
    assert not list(pidfile.parent.glob("*.killed"))  # the marker is taken away


@pytest.mark.parametrize("content", [
    {"pid": "x"}, {"pid": 0, "started": "x"}, {"pid": 1, "job": {"run_dir": 5}}, {"pid": 1, "started": 1e400},
    {"pid": 2**22 + 7, "started": 1e400}, {"pid": 2**22 + 7, "job": "x"}, {"pid": 2**22 + 7, "parent": {"pid": "x"}},
])
def test_a_pid_file_with_wrong_typed_fields_is_listed_as_unreadable_and_kept(toy_ws, wb, content):
    """`wb ps --all` ended in a traceback (ValueError, TypeError, OverflowError) on a pid file
    whose fields have the wrong types; such a file is now a row "unreadable pid file (what is
    wrong)", in text and JSON, and is left where it is (wb cannot tell whose it is)."""
    pids = toy_ws / ".wb" / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    path = pids / "zz-1.json"
    path.write_text(json.dumps(content))
    text = wb("ps", "--all")
    assert text.returncode == 0 and "unreadable" in text.stdout, text.stdout + text.stderr
    listed = wb("ps", "--all", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["state"] == "unreadable" and row["note"].startswith("unreadable pid file (") and not row["age_s"]
    if not isinstance(content.get("pid"), int):  # no pid to show: not a made-up 0
        assert row["pid"] is None and "│ 0 " not in text.stdout
    assert wb("kill", "--all").returncode == 0
    assert json.loads(path.read_text()) == content


def test_a_pid_file_naming_a_program_that_is_not_wb_is_never_acted_on(toy_ws, wb):
    """A pid file with a stranger's pid and its true start time (written by hand, or forged
    into .wb/pids/) made `wb ps` list the stranger as an orphaned worker and `wb kill` end it,
    its whole process group with it. A process whose command line is no wb process's is
    listed as unverified now, and never signalled or its file removed."""
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        # exec'd, not only forked: until then its command line is pytest's (a flake seen in CI)
        wait_until(lambda: Path(f"/proc/{stranger.pid}/cmdline").read_bytes().startswith(b"sleep\0"),
                   what="the stranger to exec sleep")
        folder = toy_ws / ".wb" / "pids"
        folder.mkdir(parents=True, exist_ok=True)
        forged = folder / f"forged-{stranger.pid}.json"
        forged.write_text(json.dumps({
            "pid": stranger.pid, "pgid": stranger.pid, "kind": "warm-worker", "host": procs.socket.gethostname(),
            "boot_id": processes.boot_id(), "starttime": processes.starttime(stranger.pid), "started": time.time() - 3600,
            "socket": str(toy_ws / "gone.sock"), "idle": 600, "job": None,
        }))
        rows = json.loads(wb("ps", "--all", "--json").stdout)
        assert [r["state"] for r in rows] == ["unverified"] and "'sleep 300', not wb" in rows[0]["note"], rows
        assert json.loads(wb("kill", "--json").stdout) == [] and json.loads(wb("kill", "--all", "--json").stdout) == []
        refused = wb("kill", str(stranger.pid))
        assert refused.returncode == 1 and "not wb's to kill" in refused.stdout
        time.sleep(0.2)
        assert alive(stranger.pid) and forged.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_wb_kill_never_signals_a_process_named_by_a_malformed_pid_file(toy_ws, wb):
    """A pid file that names a live process with its right start time, but whose other fields
    are of the wrong type, is no ground to signal it: `wb kill --all` and `wb kill PID` leave
    the process running (before, both ended in a traceback; a type check that reads only
    some fields could have acted on the rest)."""
    proc = spawn_with_pidfile(toy_ws, socket=str(toy_ws / "gone.sock"))  # an orphan: its socket is gone
    try:
        (path,) = (toy_ws / ".wb" / "pids").glob(f"*-{proc.pid}.json")
        data = json.loads(path.read_text())
        assert procs.pidfile_problem(data) is None
        path.write_text(json.dumps({**data, "job": {"run_dir": 5, "supervisor": None, "since": time.time()}}))
        assert [p.state for p in procs.scan(Workspace(toy_ws))] == ["unreadable"]
        assert wb("kill", "--all").returncode == 0
        refused = wb("kill", str(proc.pid))
        assert refused.returncode == 1 and "unreadable pid file (job.run_dir is not text)" in refused.stdout
        time.sleep(0.2)
        assert alive(proc.pid) and path.exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        reap(proc)


def test_sockets_no_worker_listens_on_are_pruned_and_live_ones_kept(tmp_path):
    """A worker ended by SIGKILL (its parent-death signal, `wb kill`) leaves its socket: the
    socket folder held over a thousand of them. A live one (bound under its staging name and
    renamed, as the worker does) stays; so does a fresh one (its worker may be starting)."""
    import socket as socket_lib

    from workbench.run import supervisor

    folder = tmp_path / "s"
    folder.mkdir()
    dead = socket_lib.socket(socket_lib.AF_UNIX, socket_lib.SOCK_STREAM)
    dead.bind(str(folder / "dead.sock"))
    dead.close()  # the file stays, nobody listens
    live = socket_lib.socket(socket_lib.AF_UNIX, socket_lib.SOCK_STREAM)
    live.bind(str(folder / "live.sock.123.tmp"))
    live.listen(1)
    os.replace(folder / "live.sock.123.tmp", folder / "live.sock")
    fresh = socket_lib.socket(socket_lib.AF_UNIX, socket_lib.SOCK_STREAM)
    fresh.bind(str(folder / "fresh.sock"))
    fresh.close()
    old = time.time() - 2 * supervisor.DEAD_SOCKET_AGE_S
    for name in ("dead.sock", "live.sock"):
        os.utime(folder / name, (old, old), follow_symlinks=False)
    try:
        supervisor._prune_dead_sockets(folder)
        assert sorted(p.name for p in folder.iterdir()) == ["fresh.sock", "live.sock"]
    finally:
        live.close()


def test_a_pid_file_or_kill_marker_nested_too_deeply_is_unreadable_not_a_traceback(toy_ws, wb):
    """'[[[[...' (64 KiB fit under the pid file limit) made json's decoder raise RecursionError,
    which `wb ps` and `wb kill` did not expect: a traceback; a `wb kill` marker like it would
    have taken a run's outcome down the same way."""
    pids = toy_ws / ".wb" / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / "zz-1.json").write_text("[" * 60_000)
    listed = wb("ps", "--all", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["state"], r["pid"]) for r in json.loads(listed.stdout)] == [("unreadable", None)]
    assert wb("kill", "--all").returncode == 0
    (pids / "77.killed").write_text("[" * 4000)
    assert procs.killed_by_wb_kill(pids / "w-77.json", 77) is None


@pytest.mark.parametrize("kind", ["file", "others-may-write", "another-users"])
def test_a_socket_folder_not_this_users_own_is_one_line_and_no_run_folder(toy_ws, wb, tmp_path, monkeypatch, kind):
    """<tmp>/wb-<uid> is in a folder all users share: one made first by another user (or
    writable by others) let them put a socket where wb looks for its warm worker, and wb sent
    it its jobs; a file there was a FileExistsError traceback."""
    import tempfile

    if kind == "another-users" and os.getuid() != 0:
        pytest.skip("making a folder of another user needs root")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = tmp_path / f"wb-{os.getuid()}"
    if kind == "file":
        folder.write_text("x")
    else:
        folder.mkdir()
        folder.chmod(0o777)
        if kind == "another-users":
            os.chown(folder, 65534, -1)
    proc = wb("run", "a", "--fixture", "toy-ones", "--seeds", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"wb: error: wb's socket folder {folder} " in proc.stderr
    assert not (toy_ws / "runs").exists() or not [p for p in (toy_ws / "runs").iterdir() if p.name != "reports"]
    swept = wb("sweep", "a", "--n", "128,256")
    assert swept.returncode == 2 and "wb's socket folder" in swept.stderr, swept.stdout + swept.stderr


def test_a_folder_at_the_warm_workers_socket_path_is_one_line(toy_ws, tmp_path):
    """_find_warm removes a socket no worker answers on: a folder there was an
    IsADirectoryError traceback of wb run (and no worker could bind that path)."""
    from workbench.errors import UserError
    from workbench.run import supervisor

    path = tmp_path / "tag.sock"
    path.mkdir()
    with pytest.raises(UserError, match=f"wb cannot remove what is at its warm worker's socket path {path}: Is a directory"):
        supervisor._find_warm(Workspace(toy_ws), str(path))
    assert path.is_dir()


def test_a_one_run_worker_whose_wb_dies_before_its_job_exits_by_itself(toy_ws):
    """A wb killed while its one-run worker was still starting left that worker waiting out
    its 600 s idle limit, and its pid file named no parent (the worker took its parent from
    getppid(), init by then), so `wb kill` did not call it an orphan. wb now names itself
    (--parent PID:STARTTIME) and the worker exits within seconds of that wb's death."""
    wb_stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    me = processes.identity(wb_stand_in.pid)
    sock = toy_ws / "once.sock"
    pids = toy_ws / ".wb" / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "workbench.run.worker", "--socket", str(sock), "--once", "--idle", "600",
         "--pidfile", str(pids / "once-test.json"), "--parent", f"{me['pid']}:{me['starttime']}"],
        cwd=toy_ws, env={**os.environ, "PYTHONPATH": str(REPO), "WB_WORKER_PRELOAD": "torch"}, start_new_session=True,
    )
    try:
        pidfile = wait_until(lambda: list(pids.glob("once-test-*.json")), what="the worker's pid file")[0]
        assert json.loads(pidfile.read_text())["parent"] == {"pid": me["pid"], "starttime": me["starttime"]}
        wb_stand_in.kill()
        wb_stand_in.wait()
        assert worker.wait(timeout=60) == 0
        assert not pidfile.exists() and not sock.exists()
    finally:
        for proc in (wb_stand_in, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_parent_death_signal_is_disarmed_before_the_answer_is_sent(tmp_path):
    """wb exits as soon as it has a job's answer; the SIGKILL armed for its death, still set
    while the answer was sent, then killed the worker before it removed its pid file and
    socket (2 of 5 `wb shapes` runs left both behind). ParentWatch.done() disarms it."""
    sock = tmp_path / "w.sock"
    code = textwrap.dedent(
        f"""
        import ctypes, socket, sys
        from workbench.run.worker import ParentWatch
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind({str(sock)!r}); server.listen(1)
        print("ready", flush=True)
        conn, _ = server.accept()
        libc = ctypes.CDLL(None, use_errno=True)
        def armed():
            value = ctypes.c_int(-1)
            libc.prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
            return value.value
        with ParentWatch(conn) as watch:
            during = armed()
            watch.done()
            print(during, armed(), flush=True)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout.readline().strip() == "ready"
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(sock))
            during, after = map(int, child.stdout.readline().split())
        assert during == signal.SIGKILL and after == 0
    finally:
        child.kill()
        child.wait()


def test_a_warm_worker_is_shared_only_under_the_same_wb_home_and_dsl_settings(toy_ws, monkeypatch):
    """A worker reads WB_HOME and CUTE_DSL_* once, at its start: `WB_HOME=X wb shapes` then a
    plain `wb shapes` put the second run's compile cache in X (and the other way round)."""
    from workbench.run.supervisor import warm_tag

    ws = Workspace(toy_ws)
    for name in ("WB_HOME", "CUTE_DSL_ARCH", "CUTE_DSL_KEEP_PTX", "WB_UNRELATED"):
        monkeypatch.delenv(name, raising=False)
    plain = warm_tag(ws)
    assert warm_tag(ws, {"WB_UNRELATED": "1"}) == plain
    tags = {warm_tag(ws, {"WB_HOME": "/tmp/x"}), warm_tag(ws, {"WB_HOME": "/tmp/y"}),
            warm_tag(ws, {"CUTE_DSL_ARCH": "sm_90a"}), warm_tag(ws, {"CUTE_DSL_KEEP_PTX": "1"})}
    assert len(tags) == 4 and plain not in tags


@pytest.mark.parametrize("pid", ["0", "-1", "-4242"])
def test_a_pid_below_one_is_a_slip_refused_in_one_line(toy_ws, wb, pid):
    """kill(2) reads 0 as the caller's process group and -N as group N: `wb kill 0` said "not
    wb's to kill" with exit 1, as if it had looked for a worker by that pid."""
    proc = wb("kill", "--", pid)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"wb: error: pid {pid}: a process id is a whole number from 1 up (`wb ps` lists wb's)"


def test_the_words_for_no_idle_limit_and_for_nothing_at_all_to_kill(toy_ws, wb, tmp_path):
    """WB_WORKER_IDLE=0 (no limit) read "exits after 0 s" in `wb ps`; `wb kill --all` with
    nothing running said "no orphaned wb processes", as if it had looked at orphans only."""
    done = wb("kill", "--all")
    assert done.returncode == 0 and "nothing to kill: no wb processes" in done.stdout and "orphaned" not in done.stdout
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "workbench.run.worker"], cwd=tmp_path)
    try:
        wait_until(lambda: alive(worker.pid), what="the stand-in worker to start")
        sock = tmp_path / "w.sock"
        sock.write_text("")
        data = {"pid": worker.pid, "kind": "warm-worker", "starttime": processes.starttime(worker.pid), "boot_id": processes.boot_id(),
                "socket": str(sock), "idle": 0, "started": time.time(), "job": None}
        info = procs._classify(tmp_path / "w.json", data, time.time())
        assert info.state == "idle" and info.note.endswith("(no idle limit)"), info.note
    finally:
        worker.kill()
        worker.wait()


_ESCAPE = """        if bug == "sleep":
            import subprocess, sys
            from pathlib import Path
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
            forked = os.fork()
            if forked == 0:  # a daemon the classic way: fork, then a session of its own
                os.setsid()
                time.sleep(600)
                os._exit(0)
            Path("escaped.pids").write_text(f"{child.pid} {forked}")
            time.sleep(600)
"""


def _escaping_stage(toy_ws: Path) -> Path:
    """Stage a's `bug=sleep` first starts two processes outside the worker's process group (a
    setsid child, a forked daemon), writes their pids to escaped.pids in the workspace, then hangs."""
    stage = toy_ws / "stages" / "toy" / "stage_a.py"
    text = stage.read_text()
    plain = '        if bug == "sleep":\n            time.sleep(600)\n'
    assert plain in text
    stage.write_text(text.replace(plain, _ESCAPE))
    return toy_ws / "escaped.pids"


@pytest.mark.parametrize("how", ["hang", "wb-kill", "wb-killed", "wb-killed-under-a-warm-worker"])
def test_what_a_job_started_outside_the_workers_process_group_ends_with_the_worker(toy_ws, wb, how):
    """Killing the worker's process group left a stage's setsid child or forked daemon running
    (on a GPU, holding its memory): the worker's token in their environment finds them on every
    path where a worker ends abnormally: a HANG (and Ctrl-C, the same kill), `wb kill`, the wb
    of the job killed (the worker it started dies by the parent-death SIGKILL: its sentinel
    sweeps), and the wb of a job on a warm worker killed (the worker sees the hang-up)."""
    ws = Workspace(toy_ws)
    pids_file = _escaping_stage(toy_ws)
    escaped: list[int] = []
    proc = None
    try:
        if how == "hang":
            ran = wb("run", "a", "-V", "bug=sleep", "--timeout", "3", "--json")
            assert ran.returncode == 1 and json.loads(ran.stdout)["verdict"] == "HANG", ran.stdout + ran.stderr
            escaped = [int(x) for x in pids_file.read_text().split()]
        else:
            if how == "wb-killed-under-a-warm-worker":
                assert wb("run", "a").returncode == 0  # the warm worker, its wb gone
            proc = _start_sleeping_run(toy_ws)
            escaped = [int(x) for x in wait_until(lambda: pids_file.exists() and pids_file.read_text().split(), what="escaped.pids")]
            assert all(alive(pid) for pid in escaped)
            if how == "wb-kill":
                (busy,) = wait_until(lambda: [p for p in procs.scan(ws) if p.state == "busy"], what="the busy worker")
                assert wb("kill", str(busy.pid)).returncode == 0
                proc.communicate(timeout=60)
            else:
                proc.kill()
                proc.wait()
        wait_until(lambda: not any(alive(pid) for pid in escaped), timeout=5.0, what="the escaped processes to end")
    finally:
        for pid in escaped:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc is not None and proc.poll() is None:
            proc.kill()
        procs.kill(ws, everything=True)


def test_a_worker_that_exits_by_itself_stands_its_sentinel_down(toy_ws, wb):
    """Each worker starts a sentinel (workbench/run/sentinel.py) that sweeps after a worker that
    dies; a worker that ends normally (here a one-run worker after its job) ends its sentinel
    first: what the job left running on purpose stays, and no sentinel is left behind."""
    stage = toy_ws / "stages" / "toy" / "stage_a.py"
    text = stage.read_text()
    plain = '        bug = compiled\n'
    assert plain in text
    stage.write_text(text.replace(plain, plain + (
        '        import subprocess, sys\n'
        '        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)\n'
        '        with open("left.pids", "a") as f:\n'
        '            f.write(f"{child.pid}\\n")\n'
    )))
    try:
        ran = wb("run", "a", "--fresh", "--json")
        assert ran.returncode == 0, ran.stderr
        children = [int(x) for x in (toy_ws / "left.pids").read_text().split()]  # one per fixture launched
        run_id = json.loads(ran.stdout)["id"]
        pid = json.loads((toy_ws / "runs" / run_id / "run.json").read_text())["timing"]["worker_pid"]
        wait_until(lambda: not alive(pid), timeout=10.0, what="the one-run worker to exit")
        time.sleep(0.5)  # a sentinel that swept would have by now
        assert children and all(alive(child) for child in children)

        def sentinels():
            found = []
            for name in filter(str.isdigit, os.listdir("/proc")):
                try:
                    argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if any(a.endswith(b"sentinel.py") for a in argv) and str(pid).encode() in argv and alive(int(name)):
                    found.append(int(name))
            return found

        assert sentinels() == []
    finally:
        for path in toy_ws.glob("left.pids"):
            for pid_left in map(int, path.read_text().split()):
                if alive(pid_left):
                    os.kill(pid_left, signal.SIGKILL)


def test_thousands_of_pid_files_are_counted_not_drawn_and_running_processes_come_first(toy_ws, wb):
    """`wb ps --all` over 20k pid files of processes on other hosts took 40 s, nearly all of it
    drawing the table: past its first rows (the running processes first) the rest is counted by
    state, and `--json` still lists every one."""
    from workbench.cli.hosts import PS_ROWS

    pids = procs.pid_dir(Workspace(toy_ws))
    pids.mkdir(parents=True, exist_ok=True)
    extra = PS_ROWS + 5
    for i in range(extra):
        pid = 4_000_000 + i
        path = pids / f"w-{pid}.json"
        path.write_text(json.dumps({
            "pid": pid, "pgid": pid, "kind": "warm-worker", "host": "another-host", "boot_id": processes.boot_id(),
            "starttime": 1, "started": time.time(), "last_active": time.time(), "argv": ["python"],
            "cuda_visible_devices": None, "path": str(path), "job": None,
        }))
    live = spawn_with_pidfile(toy_ws)
    try:
        shown = wb("ps", "--all")
        assert shown.returncode == 0, shown.stderr
        rows = [line for line in shown.stdout.splitlines() if line.startswith("│")]
        assert len(rows) == PS_ROWS
        assert str(live.pid) in rows[0]  # the running process before the pid files of other hosts
        assert "6 more not shown (foreign 6): `wb ps --all --json` lists every one" in shown.stdout
        assert len(json.loads(wb("ps", "--all", "--json").stdout)) == extra + 1
    finally:
        live.kill()
        reap(live)


def test_the_sentinel_never_signals_a_group_whose_leaders_pid_names_another_process():
    """The sentinel knows its worker by pid and start time (the worker passes its own): a pid
    that now names a process started at another time was recycled, so neither it nor the group
    of that id is waited on or killed; the same pid and start time is the worker's group."""
    import subprocess

    from workbench.run import sentinel

    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)  # leads a group of its own pid
    try:
        born = sentinel.started(stranger.pid)
        assert born is not None and sentinel.started(2**22 + 7) is None
        assert sentinel.sweep_group(stranger.pid, born + 1) is False and stranger.poll() is None
        # the sentinel as the worker starts it, given a start time that is not this process's: it
        # neither waits on the stranger nor kills its group
        script = Path(sentinel.__file__)
        done = subprocess.run([sys.executable, "-I", "-S", str(script), str(stranger.pid), "no-such-token", str(born + 1)],
                              timeout=20)
        assert done.returncode == 0 and stranger.poll() is None
        assert sentinel.sweep_group(stranger.pid, born) is True
        assert stranger.wait(5) == -signal.SIGKILL
    finally:
        if stranger.poll() is None:
            stranger.kill()
