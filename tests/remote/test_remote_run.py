"""`wb run --host`, `wb hosts`, `wb ps/kill --host`, `wb sweep --host` against a real sshd on
127.0.0.1 whose "remote" workspace is a second folder on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def wb_popen(*args, cwd):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "workbench", *map(str, args)], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for_line(proc, needle: str, timeout: float = 60) -> list[str]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never appeared; output: {''.join(seen)}")


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(x) for x in text]
    return out


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def local_record(ws: Path, run_id: str) -> dict:
    return json.loads((ws / "runs" / run_id / "run.json").read_text())


def remote_records(remote: Path) -> dict[str, dict]:
    out = {}
    for path in sorted((remote / "runs").glob("*/run.json")):
        out[path.parent.name] = json.loads(path.read_text())
    return out


def pidfiles(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / ".wb" / "pids").glob("*.json"))] if (root / ".wb" / "pids").is_dir() else []


def wait_until(cond, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_hosts_lists_and_checks(remote_ws, wb):
    ws, remote = remote_ws
    proc = wb("hosts", "--json")
    checks = json.loads(proc.stdout)
    assert len(checks) == 1 and checks[0]["host"]["name"] == "loop"
    check = checks[0]
    assert check["reachable"] and check["wb"] and check["torch"], check
    if check["gpus"]:
        assert check["ok"] and proc.returncode == 0
    else:  # this machine has no GPU: the check says so in one line
        assert proc.returncode == 1 and check["problems"] == ["torch sees no GPU (torch.cuda.is_available() is False)"]
    plain = wb("hosts")
    assert "loop" in plain.stdout and ("torch sees no GPU" in plain.stdout or "✓" in plain.stdout)
    listed = wb("hosts", "--no-check")
    assert listed.returncode == 0 and f"127.0.0.1:{check['host']['port']}:{remote}" in listed.stdout


def test_unreachable_host_is_one_clear_line(remote_ws, wb, sshd_server):
    import yaml

    ws, remote = remote_ws
    config = yaml.safe_load((ws / "wb.yaml").read_text())
    from .sshd import free_port

    config["hosts"].append({**config["hosts"][0], "name": "down", "port": free_port()})
    (ws / "wb.yaml").write_text(yaml.safe_dump(config))
    proc = wb("hosts", "down")
    assert proc.returncode == 1
    assert "✗ down" in proc.stdout and "unreachable" in proc.stdout and "Connection refused" in proc.stdout
    run = wb("run", "a", "--host", "down")
    assert run.returncode == 2 and "host down unreachable" in run.stderr and "Traceback" not in run.stderr
    for command in (["ps"], ["kill"]):  # ssh's own line was shown too, before wb's quoting it
        listed = wb(*command, "--host", "down")
        assert listed.returncode == 2 and listed.stderr.strip().count("\n") == 0, listed.stderr
        assert listed.stderr.startswith("wb: error: host down unreachable") and "Connection refused" in listed.stderr
    assert not [p for p in (ws / "runs").glob("*") if p.name[0].isdigit()] if (ws / "runs").exists() else True


def test_remote_run_end_to_end(remote_ws, wb):
    ws, remote = remote_ws
    # What is sent: tracked + untracked-not-ignored; never runs/, .wb/, caches or ignored files.
    (ws / "stages" / "toy" / "notes.txt").write_text("untracked, not ignored\n")
    (ws / "secret.txt").write_text("ignored\n")
    (ws / "runs" / "old").mkdir(parents=True)
    (ws / "runs" / "old" / "junk.txt").write_text("local records stay local\n")
    (ws / "stages" / "toy" / "__pycache__").mkdir(exist_ok=True)  # the copied workspace may have one
    (ws / "stages" / "toy" / "__pycache__" / "x.pyc").write_text("cache")
    with open(ws / "stages" / "toy" / "stage_a.py", "a") as fh:
        fh.write("\n# a local edit, not committed\n")
    from workbench.records.provenance import git_state

    local_git = git_state(ws)
    assert local_git["dirty"]

    proc = wb("run", "a", "--host", "loop", "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    rec = local_record(ws, shown["id"])
    assert rec["verdict"] == "PASS" and rec["host_name"] == "loop"
    assert [c["label"] for c in rec["results"]] == ["toy-random#0", "toy-random#1", "toy-ones"]
    # The LOCAL commit, dirty flag and diff hash of what was sent.
    prov = rec["provenance"]
    assert (prov["commit"], prov["dirty"], prov["diff_hash"]) == (local_git["commit"], True, local_git["diff_hash"])
    assert prov["remote_git"]["commit"] is None  # the remote copy is not a git repository
    assert "stages/toy/stage_a.py" in prov["sources"] and prov["torch"]
    # The remote record kept its own id, noted under "remote"; its folder is the remote's.
    rid = rec["remote"]["id"]
    assert rid and rid in remote_records(remote) and rec["remote"]["host"] == "loop"
    assert remote_records(remote)[rid]["verdict"] == "PASS"
    assert (ws / "runs" / shown["id"] / "report.md").read_text().startswith("# toy/stage-a — PASS")
    assert shown["id"] in (ws / "MEMORY.md").read_text()
    # What went over.
    assert (remote / "stages" / "toy" / "notes.txt").exists()
    assert "a local edit" in (remote / "stages" / "toy" / "stage_a.py").read_text()
    assert not (remote / "secret.txt").exists()
    assert not (remote / "runs" / "old").exists()
    assert not (remote / "stages" / "toy" / "__pycache__" / "x.pyc").exists()
    # `wb runs` lists it with its host, like a local run.
    listed = wb("runs")
    assert shown["id"] in listed.stdout and "loop" in listed.stdout
    as_json = json.loads(wb("runs", "--json").stdout)
    assert as_json[0]["host_name"] == "loop"
    # A file deleted here is deleted there at the next sync; diff-run sees both runs.
    (ws / "stages" / "toy" / "notes.txt").unlink()
    again = wb("run", "a", "--host", "loop", "--json")
    assert again.returncode == 0, again.stderr
    assert not (remote / "stages" / "toy" / "notes.txt").exists()
    second = local_record(ws, json.loads(again.stdout)["id"])
    assert second["timing"]["worker_reused"] is True  # the remote warm worker served it
    diff = wb("diff-run", shown["id"], second["id"])
    assert diff.returncode == 0, diff.stderr


def test_remote_failure_verdicts_come_back(remote_ws, wb):
    ws, remote = remote_ws
    proc = wb("run", "a", "--host", "loop", "-V", "bug=nan", "--fixture", "toy-random", "--seeds", "1", "--json")
    assert proc.returncode == 1
    rec = local_record(ws, json.loads(proc.stdout)["id"])
    assert rec["verdict"] == "FAIL" and rec["host_name"] == "loop"
    assert any("NaN" in r for r in rec["results"][0]["outputs"]["y"]["reasons"])
    bad = wb("run", "a", "--host", "loop", "--fixture", "no-such-fixture")
    assert bad.returncode == 2 and "no-such-fixture" in bad.stderr and "loop" in bad.stderr


def _start_sleeping_remote_run(ws: Path):
    proc = wb_popen("run", "a", "--host", "loop", "-V", "bug=sleep", "--timeout", "120", cwd=ws)
    wait_for_line(proc, "fixture toy-random#0", timeout=90)
    return proc


def test_network_loss_ssh_killed_records_lost(remote_ws, wb):
    ws, remote = remote_ws
    first = wb("run", "a", "--host", "loop", "--json")
    assert first.returncode == 0, first.stderr
    first_id = json.loads(first.stdout)["id"]
    memory_before = (ws / "MEMORY.md").read_text()

    proc = _start_sleeping_remote_run(ws)
    ssh = [p for p in children(proc.pid) if Path(cmdline(p)[0]).name == "ssh"]
    assert len(ssh) == 1, [cmdline(p) for p in children(proc.pid)]
    os.kill(ssh[0], signal.SIGKILL)  # the connection dies mid-run
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "LOST" in out

    lost = [r for r in (json.loads(p.read_text()) for p in (ws / "runs").glob("*/run.json")) if r["verdict"] == "LOST"]
    assert len(lost) == 1
    rec = lost[0]
    assert rec["host_name"] == "loop" and "lost contact with host loop" in rec["error"]["message"]
    assert "fixture toy-random#0" in rec["error"]["message"]  # the last progress seen
    rid = rec["remote"]["id"]
    assert rid and rid in rec["error"]["message"]
    # Nothing local was corrupted: the earlier record and MEMORY.md's hand-written part remain.
    assert local_record(ws, first_id)["verdict"] == "PASS"
    assert memory_before.split("<!--")[0] == (ws / "MEMORY.md").read_text().split("<!--")[0]
    # The remote side noticed: the agent interrupted the run, which killed its worker.
    wait_until(lambda: remote_records(remote).get(rid, {}).get("verdict") == "INTERRUPTED", 40, "the remote INTERRUPTED record")
    wait_until(lambda: not any(p.get("job") for p in pidfiles(remote)), 20, "no busy remote worker")
    # Re-running works.
    again = wb("run", "a", "--host", "loop", "--json")
    assert again.returncode == 0, again.stderr
    assert local_record(ws, json.loads(again.stdout)["id"])["verdict"] == "PASS"


def _stuck_orphan(remote: Path) -> subprocess.Popen:
    """A process on the host with a busy worker's pid file whose wb is gone, that no signal
    from its wb can reach (what a worker stuck in the driver would look like)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    code = (
        "import json, os, sys, time\n"
        "from workbench.run import procs\n"
        "pid = os.getpid()\n"
        f"procs.PidFile({str(remote / '.wb' / 'pids')!r} + f'/stuck-{{pid}}.json', 'warm-worker', "
        f"job={{'run_dir': 'x', 'supervisor': {{'pid': {gone.pid}, 'starttime': 1}}, 'since': time.time()}})\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"
    )
    (remote / ".wb" / "pids").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_remote_child_killed_records_lost_and_its_worker_ends(remote_ws, wb):
    ws, remote = remote_ws
    proc = _start_sleeping_remote_run(ws)
    runs = wait_until(lambda: [p for p in pidfiles(remote) if p["kind"] == "remote-run"], 20, "the remote-run pid file")
    busy = wait_until(lambda: [p for p in pidfiles(remote) if p.get("job")], 20, "the busy remote worker")
    os.kill(runs[0]["pid"], signal.SIGKILL)  # the remote wb dies ...
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "LOST" in out, out
    lost = [r for r in (json.loads(p.read_text()) for p in (ws / "runs").glob("*/run.json")) if r["verdict"] == "LOST"]
    assert len(lost) == 1 and "remote wb exited with code 137" in lost[0]["error"]["message"]
    # ... and its worker ends the job with it instead of sleeping on as an orphan
    worker = busy[0]["pid"]
    wait_until(lambda: not Path(f"/proc/{worker}").exists() or Path(f"/proc/{worker}/stat").read_text().split(")")[1].split()[0] == "Z", 5, "the worker to end")
    assert not [p for p in json.loads(wb("ps", "--host", "loop", "--json").stdout) if p["state"] not in ("gone",)]


def test_a_remote_orphan_is_found_warned_about_and_killed(remote_ws, wb):
    ws, remote = remote_ws
    assert wb("run", "a", "--host", "loop", "--json").returncode == 0  # the remote workspace exists
    stuck = _stuck_orphan(remote)
    try:
        ps = json.loads(wb("ps", "--host", "loop", "--json").stdout)
        orphan = [p for p in ps if p["state"] == "orphan"]
        assert [p["pid"] for p in orphan] == [stuck.pid], ps
        assert "its wb" in orphan[0]["note"] and "gone" in orphan[0]["note"]
        again = wb("run", "a", "--host", "loop", "--json")
        assert again.returncode == 0, again.stderr
        assert "orphaned wb process pid %d" % stuck.pid in again.stderr
        killed = json.loads(wb("kill", "--host", "loop", "--json").stdout)
        assert [k["pid"] for k in killed if k["killed"]] == [stuck.pid]
        stuck.wait(10)
        assert not [p for p in json.loads(wb("ps", "--host", "loop", "--json").stdout) if p["state"] == "orphan"]
    finally:
        if stuck.poll() is None:
            os.killpg(stuck.pid, signal.SIGKILL)
            stuck.wait()


def test_remote_sweep_reuses_the_remote_warm_worker(remote_ws, wb):
    ws, remote = remote_ws
    proc = wb("sweep", "a", "--n", "128,256,384", "--host", "loop", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert [r["verdict"] for r in summary["rows"]] == ["PASS"] * 3
    assert summary["lanes"] == ["loop"]
    records = [local_record(ws, r["run"]) for r in summary["rows"]]
    assert all(r["host_name"] == "loop" and r["sweep"]["id"] == summary["id"] for r in records)
    assert [r["timing"]["worker_reused"] for r in records][1:] == [True, True]
    assert (ws / "runs" / "reports" / "toy-stage-a.sweep.md").exists()


def test_other_commands_over_the_generic_helpers(remote_ws, wb):
    ws, remote = remote_ws
    # wb shapes --host: the same command there, its output streamed here.
    shapes = wb("shapes", "--host", "loop")
    assert shapes.returncode == 0, shapes.stderr
    assert "toy/stage-a" in shapes.stdout and "not a CuTe DSL stage" in shapes.stdout
    # wb bench --host: the record would come back; with no GPU there, the remote's one-line error.
    bench = wb("bench", "a", "--host", "loop")
    if "needs a CUDA GPU" in bench.stderr:
        assert bench.returncode == 2 and "wb: error: host loop: wb bench needs a CUDA GPU" in bench.stderr
        assert "Traceback" not in bench.stderr
    # wb ps --host: no orphan there (the listing itself is no remote-run).
    rows = json.loads(wb("ps", "--host", "loop", "--json").stdout)
    assert not [p for p in rows if p["state"] == "orphan" or p["kind"] == "remote-run"]
