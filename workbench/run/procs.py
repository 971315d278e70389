"""Stale-process hygiene: pid files of the processes wb starts, `wb ps`, `wb kill`.

Every long-lived child wb starts writes a pid file under <workspace>/.wb/pids/ (one per
process, named <stem>-<pid>.json) and removes it when it exits:

    {"pid", "pgid", "kind", "host", "boot_id", "starttime", "started", "argv", "socket",
     "idle", "cuda_visible_devices", "parent": {"pid", "starttime"},
     "job": {"run_dir", "supervisor": {"pid", "starttime"}, "since"} | null,
     "last_active": <unix time>}

kind is "warm-worker" (serves many runs, exits after `idle` seconds without one),
"once-worker" (one run) or "remote-run" (a `wb run` started by `wb run --host` through
workbench.remote.agent; "agent" names the agent process).

`starttime` is field 22 of /proc/<pid>/stat (clock ticks after boot) and `boot_id` the
kernel's boot id: a pid file matches a live process only when both are equal, so a pid the
kernel has since handed to another program is never signalled. wb kills by pid, never by
name, and only processes whose pid file matches.

A process is an *orphan* when it still runs but nothing will end it or use it: a worker busy
with a run whose `wb` process is gone (a hung kernel outliving a killed wb), a once-worker
whose wb is gone, a warm worker whose socket is gone (no run can reach it again) or that is
still alive well past its idle timeout, a remote run whose ssh session (agent) is gone.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import UserError
from workbench.files import atomic_write_text
from workbench.processes import boot_id, identity, kill_token, process_age, same_process, starttime
from workbench.workspace import Workspace

IDLE_GRACE = 120.0  # seconds past its idle timeout before a live idle warm worker is an orphan
STALE_TMP_S = 60.0  # a pid file's temporary older than this belongs to no write still going
KILL_GRACE = 5.0


#: a pid file is a few hundred bytes; anything larger, or not a regular file, is not one of wb's
PIDFILE_MAX = 64 * 1024


def read_pidfile(path: Path) -> dict[str, Any]:
    """A pid file's data; ValueError when it is not a small regular file holding a JSON object
    (a FIFO would block the read, a link to /dev/zero would never end)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size > PIDFILE_MAX:
        raise ValueError(f"{path.name} is not a pid file of wb")
    try:
        data = json.loads(path.read_text())
    except RecursionError:  # '[[[[...': 64 KiB of it nests past the decoder's limit
        raise ValueError(f"{path.name} is nested too deeply for a pid file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} holds no JSON object")
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_time(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _identity_problem(v: Any, key: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        return f"{key} is not a mapping"
    if v.get("pid") is not None and not _is_int(v["pid"]):
        return f"{key}.pid is not a process id"
    if v.get("starttime") is not None and not _is_int(v["starttime"]):
        return f"{key}.starttime is not a whole number"
    return None


#: what each field of a pid file must be when it is there (None is "not there")
_FIELDS: dict[str, tuple[Any, str]] = {
    "pgid": (_is_int, "a process group id"),
    "starttime": (_is_int, "a whole number"),
    **{k: (_is_time, "a finite number") for k in ("started", "last_active", "idle")},
    **{k: (lambda v: isinstance(v, str), "text") for k in ("kind", "host", "boot_id", "socket", "cuda_visible_devices", "path")},
    "argv": (lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v), "a list of text"),
}


def pidfile_problem(data: dict[str, Any]) -> str | None:
    """What makes `data` no pid file wb can act on (a field of the wrong type: a hand edit,
    another program), or None. ps, kill and the orphan warning use only checked fields."""
    pid = data.get("pid")
    if not _is_int(pid) or pid <= 1:
        return "pid is not a process id"
    for key, (ok, what) in _FIELDS.items():
        if data.get(key) is not None and not ok(data[key]):
            return f"{key} is not {what}"
    problem = _identity_problem(data.get("parent"), "parent") or _identity_problem(data.get("agent"), "agent")
    if problem:
        return problem
    job = data.get("job")
    if job is None:
        return None
    if not isinstance(job, dict):
        return "job is not a mapping"
    if job.get("run_dir") is not None and not isinstance(job["run_dir"], str):
        return "job.run_dir is not text"
    if job.get("since") is not None and not _is_time(job["since"]):
        return "job.since is not a finite number"
    return _identity_problem(job.get("supervisor"), "job.supervisor")


# ----------------------------------------------------------------------------- pid files


def pid_dir(ws: Workspace) -> Path:
    return ws.state_dir / "pids"


def pidfile_for(path: str | os.PathLike, pid: int) -> Path:
    """The per-process pid file for a requested path: .wb/pids/<stem>.json -> <stem>-<pid>.json."""
    path = Path(path)
    return path.with_name(f"{path.stem}-{pid}{path.suffix or '.json'}")


def _atomic_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, default=str) + "\n")


class PidFile:
    """The pid file of the current process: written at start, updated, removed at exit."""

    def __init__(self, path: str | os.PathLike, kind: str, **extra: Any):
        self.path = Path(path)
        pid = os.getpid()
        self.data: dict[str, Any] = {
            "pid": pid,
            "pgid": os.getpgid(0),
            "kind": kind,
            "host": socket.gethostname(),
            "boot_id": boot_id(),
            "starttime": starttime(pid),
            "started": time.time(),
            "last_active": time.time(),
            "argv": [sys.executable, *sys.argv],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "path": os.path.realpath(self.path),  # where it was written: a copied workspace carries it along
            "job": None,
            **extra,
        }
        self.write()

    def write(self) -> None:
        try:
            _atomic_json(self.path, self.data)
        except (OSError, UserError):
            pass  # a pid file is a courtesy: never fail a run for it

    def update(self, **changes: Any) -> None:
        self.data.update(changes)
        self.write()

    def job_started(self, run_dir: str | None, supervisor_pid: int | None) -> None:
        supervisor = {"pid": supervisor_pid, "starttime": starttime(supervisor_pid)} if supervisor_pid else None
        self.update(job={"run_dir": run_dir, "supervisor": supervisor, "since": time.time()}, last_active=time.time())

    def job_done(self) -> None:
        self.update(job=None, last_active=time.time())

    def remove(self) -> None:
        try:
            data = read_pidfile(self.path)
            if data.get("pid") != self.data["pid"]:
                return  # not ours (any more)
            self.path.unlink()
        except (OSError, ValueError):
            pass


def parent_identity() -> dict[str, Any] | None:
    ppid = os.getppid()
    return {"pid": ppid, "starttime": starttime(ppid)} if ppid > 1 else None


def peer_pid(conn: socket.socket) -> int | None:
    """The pid of the process at the other end of a Unix socket (Linux), or None."""
    try:
        import struct

        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        return pid or None
    except (OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------- ps


@dataclass
class ProcInfo:
    path: Path
    data: dict[str, Any]
    state: str  # idle | busy | running | starting | orphan | dying | untracked | exiting | gone | reused | unverified | foreign | unreadable
    note: str = ""
    gpu_mib: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        pid = self.data.get("pid")
        return pid if _is_int(pid) else 0

    @property
    def alive(self) -> bool:
        return self.state in ("idle", "busy", "running", "starting", "orphan", "dying", "untracked", "exiting")

    @property
    def orphan(self) -> bool:
        return self.state == "orphan"

    def as_dict(self) -> dict[str, Any]:
        d = self.data
        job = d.get("job") or {}
        return {
            # pid None: a pid file whose pid is no number (not a made-up 0)
            "pid": self.pid or None, "pgid": d.get("pgid"), "kind": d.get("kind", "worker"), "state": self.state, "note": self.note,
            "host": d.get("host"), "age_s": (time.time() - d["started"]) if d.get("started") else None,
            "cuda_visible_devices": d.get("cuda_visible_devices"), "gpu_mib": self.gpu_mib,
            "run": Path(job["run_dir"]).name if job.get("run_dir") else None,
            "busy_s": (time.time() - job["since"]) if job.get("since") else None,
            "pidfile": str(self.path), "argv": d.get("argv"),
        }


def _gpu_memory() -> dict[int, int]:
    """pid -> MiB of GPU memory, from nvidia-smi when it is there."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out = {}
    for line in done.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdecimal():
            out[int(parts[0])] = int(parts[1]) if parts[1].isdecimal() else 0
    return out


def _argv(pid: int) -> list[str]:
    """The command line of `pid` from /proc (OSError when it cannot be read)."""
    return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def _not_wb(pid: int) -> str | None:
    """The program `pid` runs when its command line is no wb process's (a worker, `wb` or
    `python -m workbench`, also under a wrapping tool such as compute-sanitizer); None when it
    is wb's or /proc cannot tell."""
    try:
        argv = _argv(pid)
    except OSError:
        return None
    if not argv or any("workbench" in a or os.path.basename(a) == "wb" for a in argv):
        return None
    return " ".join(argv)


def _classify(path: Path, data: dict[str, Any] | None, now: float) -> ProcInfo:
    """What the pid file at `path` says (`data`: None when it could not be read). A file wb
    cannot read or whose fields have the wrong types is "unreadable": listed, never acted on
    (never signalled, never removed: wb cannot tell whose it is)."""
    problem = "not a JSON object" if data is None else pidfile_problem(data)
    if problem:
        pid = (data or {}).get("pid")
        return ProcInfo(path, {"pid": pid} if _is_int(pid) else {}, "unreadable",
                        "unreadable pid file" + (f" ({problem})" if data else ""))
    pid = data["pid"]
    if data.get("host") and data["host"] != socket.gethostname():
        return ProcInfo(path, data, "foreign", f"written on host {data['host']}")
    if data.get("path") and data["path"] != os.path.realpath(path):
        # a workspace copied (cp -r) with .wb/: its process is the other workspace's, never this one's to kill
        return ProcInfo(path, data, "foreign", f"written as {data['path']}: a pid file copied with its workspace")
    live_start = starttime(pid)
    if live_start is None:  # a zombie too: it has exited and holds no memory, GPU memory included
        return ProcInfo(path, data, "gone", "the process has exited")
    if data.get("starttime") is None:
        return ProcInfo(path, data, "unverified", "old pid file without a start time: cannot prove it is wb's")
    if (data.get("boot_id") and boot_id() and data["boot_id"] != boot_id()) or live_start != data["starttime"]:
        return ProcInfo(path, data, "reused", f"pid {pid} now belongs to another process")
    program = _not_wb(pid)
    if program is not None:  # a pid file naming another program (written by hand, or forged): never signalled
        return ProcInfo(path, data, "unverified", f"pid {pid} runs {program[:60]!r}, not wb: cannot prove the pid file is wb's")
    kind = data.get("kind", "warm-worker")
    job = data.get("job")
    if data.get("dying"):
        return ProcInfo(path, data, "dying", str(data["dying"]))
    if kind == "remote-run":
        agent = data.get("agent") or {}
        if agent and not same_process(agent.get("pid"), agent.get("starttime")):
            return ProcInfo(path, data, "orphan", "remote run whose ssh session (agent) is gone")
        return ProcInfo(path, data, "running", "remote run (wb run --host)")
    if job:
        sup = job.get("supervisor") or {}
        run = Path(job["run_dir"]).name if job.get("run_dir") else "?"
        busy = now - (job["since"] if job.get("since") is not None else now)
        if sup.get("pid") and not same_process(sup.get("pid"), sup.get("starttime")):
            return ProcInfo(path, data, "orphan", f"busy {busy:.0f} s with run {run}, but its wb (pid {sup['pid']}) is gone")
        return ProcInfo(path, data, "busy", f"run {run} for wb pid {sup.get('pid', '?')}, {busy:.0f} s")
    parent = data.get("parent") or {}
    if kind == "once-worker":
        if parent.get("pid") and not same_process(parent.get("pid"), parent.get("starttime")):
            return ProcInfo(path, data, "orphan", f"one-run worker whose wb (pid {parent['pid']}) is gone")
        return ProcInfo(path, data, "starting", "one-run worker")
    sock = data.get("socket")
    if sock and not os.path.exists(sock):
        return ProcInfo(path, data, "orphan", "warm worker whose socket is gone: no run can reach it")
    idle = float(data.get("idle") or 0)
    idle_for = now - float(data.get("last_active") or data.get("started") or now)
    if idle > 0 and idle_for > idle + IDLE_GRACE:
        return ProcInfo(path, data, "orphan", f"idle {idle_for:.0f} s, past its idle timeout of {idle:.0f} s")
    limit = f"exits after {idle:.0f} s" if idle > 0 else "no idle limit"  # WB_WORKER_IDLE=0
    return ProcInfo(path, data, "idle", f"warm worker, idle {idle_for:.0f} s ({limit})")


def scan(ws: Workspace, clean: bool = True, gpu: bool = False) -> list[ProcInfo]:
    """Every pid file of the workspace, classified, and the workspace's workers that have
    none. `clean` removes files of exited processes."""
    folder = pid_dir(ws)
    now = time.time()
    out = []
    if clean and folder.is_dir():  # a pid file's atomic write cut off by SIGKILL (its .tmp stays), a kill marker no run read
        for tmp in [*folder.glob(".*.tmp"), *folder.glob("*.killed")]:
            try:
                if now - tmp.lstat().st_mtime > STALE_TMP_S:
                    tmp.unlink()
            except OSError:
                pass
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = read_pidfile(path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            data = None
        info = _classify(path, data, now)
        if info.state in ("gone", "reused") and clean:
            # Re-check before removing: the file may have been rewritten meanwhile.
            try:
                if read_pidfile(path) == data:
                    path.unlink()
            except (OSError, ValueError):
                pass
        out.append(info)
    if os.path.isdir("/proc"):
        out += _untracked(ws, {p.pid for p in out if p.alive})
    if gpu and any(p.alive for p in out):
        mem = _gpu_memory()
        for p in out:
            p.gpu_mib = mem.get(p.pid)
    return out


#: a worker without socket or pid file younger than this is starting, older is exiting
STARTING_S = 3.0


def _untracked(ws: Workspace, known: set[int]) -> list[ProcInfo]:
    """Workers of this workspace that run without a pid file (it was deleted, or never
    written): `python -m workbench.run.worker` whose working folder is the workspace."""
    root = str(ws.root.resolve())
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid in known or pid == os.getpid():
            continue
        try:
            argv = _argv(pid)
            if "workbench.run.worker" not in argv or os.readlink(entry / "cwd") != root:
                continue
            pgid = os.getpgid(pid)
        except OSError:
            continue
        start = starttime(pid)
        if start is None:
            continue
        data = {"pid": pid, "pgid": pgid, "kind": "worker", "starttime": start, "boot_id": boot_id(),
                "argv": argv, "host": socket.gethostname()}
        if not _socket_gone(data["argv"], root):
            state, note = "untracked", "a wb worker of this workspace without a pid file"
        elif (process_age(start) or 0.0) < STARTING_S:
            # it binds its socket, then writes its pid file, a fraction of a second after exec
            state, note = "starting", "a wb worker of this workspace starting (no socket or pid file yet)"
        else:
            # a worker removes its pid file and then its socket on the way out; the interpreter's
            # teardown (torch's, the DSL's) takes a moment after that
            state, note = "exiting", "a wb worker of this workspace shutting down (its socket and pid file are gone)"
        out.append(ProcInfo(Path(os.devnull), data, state, note))
    return out


def _socket_gone(argv: list[str], root: str) -> bool:
    """True when the worker's --socket path (relative to its working folder) no longer exists."""
    try:
        path = argv[argv.index("--socket") + 1]
    except (ValueError, IndexError):
        return False
    return not os.path.lexists(os.path.join(root, path))


def orphans(ws: Workspace) -> list[ProcInfo]:
    return [p for p in scan(ws) if p.orphan]


def orphan_warning(ws: Workspace) -> str | None:
    """One line for `wb run` when an orphan of an earlier run may still hold the GPU."""
    try:
        found = orphans(ws)
    except Exception:  # hygiene must never stop a run
        return None
    if not found:
        return None
    first = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    gpu = f" on CUDA_VISIBLE_DEVICES={first.data['cuda_visible_devices']}" if first.data.get("cuda_visible_devices") else ""
    return (
        f"orphaned wb process pid {first.pid}{gpu} still running: {first.note}{more}; "
        "it may hold the GPU: `wb ps` shows it, `wb kill` ends it"
    )


# ----------------------------------------------------------------------------- kill


@dataclass
class KillResult:
    pid: int
    killed: bool
    message: str


def _signal_group(info: ProcInfo, sig: int) -> bool:
    """Signal the process (its group when it leads one) after proving it is the recorded one.

    A pidfd pins the process while its identity is checked, so a pid reused between the check
    and the signal cannot be hit."""
    pid = info.pid
    data = info.data
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        if not same_process(pid, data.get("starttime"), data.get("boot_id")):
            return False
        pgid = data.get("pgid")
        try:
            if pgid == pid and os.getpgid(pid) == pid:
                os.killpg(pid, sig)  # the group cannot be recycled while its leader (pinned) lives
            elif fd is not None:
                signal.pidfd_send_signal(fd, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return False
        # a worker's descendants that left its group (setsid, daemons) carry its token
        kill_token(data.get("token") if isinstance(data.get("token"), str) else None, sig)
        return True
    finally:
        if fd is not None:
            os.close(fd)


def _wait_gone(info: ProcInfo, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not same_process(info.pid, info.data.get("starttime"), info.data.get("boot_id")):
            return True
        time.sleep(0.05)
    return not same_process(info.pid, info.data.get("starttime"), info.data.get("boot_id"))


def _killed_marker(folder: Path, pid: int) -> Path:
    return folder / f"{pid}.killed"  # not *.json: scan reads those as pid files


def _mark_killed(folder: Path, pid: int) -> None:
    try:
        atomic_write_text(_killed_marker(folder, pid), json.dumps({"by": os.getpid(), "time": time.time()}) + "\n")
    except UserError:
        pass  # a hint only: the run then says the worker died


def killed_by_wb_kill(pidfile: Path | None, pid: int) -> int | None:
    """The pid of the `wb kill` that ended worker `pid` while it was busy (its marker beside
    the worker's pid file, taken away here), or None."""
    if pidfile is None:
        return None
    marker = _killed_marker(pidfile.parent, pid)
    try:
        data = json.loads(marker.read_text()) if marker.is_file() and marker.stat().st_size < 4096 else None
        marker.unlink()
    except (OSError, ValueError, RecursionError):
        return None
    return data.get("by") if isinstance(data, dict) and isinstance(data.get("by"), int) else 0


def kill_proc(info: ProcInfo, grace: float = KILL_GRACE) -> KillResult:
    """End one of wb's processes: a polite signal, then SIGKILL; remove its pid file."""
    pid = info.pid
    if not info.alive:
        return KillResult(pid, False, f"pid {pid}: not killed: {info.note or info.state}")
    # A remote run is a `wb run`: SIGINT lets it kill its worker and record INTERRUPTED.
    first = signal.SIGINT if info.data.get("kind") == "remote-run" else signal.SIGTERM
    if info.state == "busy":  # the wb waiting on it records INTERRUPTED by this, not a CRASH
        _mark_killed(info.path.parent, pid)
    if not _signal_group(info, first):
        return KillResult(pid, False, f"pid {pid}: already gone")
    if not _wait_gone(info, grace):
        _signal_group(info, signal.SIGKILL)
        _wait_gone(info, 5.0)
    try:
        if read_pidfile(info.path).get("pid") == pid:
            info.path.unlink()
    except (OSError, ValueError):
        pass
    what = info.data.get("kind", "worker")
    return KillResult(pid, True, f"killed pid {pid} ({what}{': ' + info.note if info.note else ''})")


def kill(ws: Workspace, pids: list[int] | None = None, everything: bool = False) -> list[KillResult]:
    """Kill the given pids (each must match a live pid file), else every orphan (or every
    process with `everything`)."""
    procs = scan(ws)
    if pids:
        results = []
        for pid in pids:
            info = next((p for p in procs if p.pid == pid and p.alive), None)
            if info is None:
                known = next((p for p in procs if p.pid == pid), None)
                why = known.note if known else f"no pid file in {pid_dir(ws)} names it"
                results.append(KillResult(pid, False, f"pid {pid}: not wb's to kill ({why})"))
                continue
            results.append(kill_proc(info))
        return results
    chosen = [p for p in procs if (p.alive if everything else p.orphan)]
    return [kill_proc(p) for p in chosen]
