"""The supervisor side: start or reuse a worker, send a job, enforce the timeout.

A warm worker serves one workspace (and one Python / CUDA_VISIBLE_DEVICES setting) through
a socket in a short temporary folder; a file lock gives one `wb run` at a time the use of
it, and a run that finds it busy starts a fresh worker of its own. A worker that hangs past
the timeout, or is running when the user presses Ctrl-C, is killed with its whole process
group; the next run starts a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from workbench import processes, settings
from workbench.errors import UserError, path_error
from workbench.files import held_lock
from workbench.run import procs
from workbench.run import protocol
from workbench.workspace import Workspace

#: set while this process ends its own runs (an interrupted wb sweep): a run whose worker dies
#: then is INTERRUPTED, not CRASH
STOPPING = threading.Event()
STOPPED = "interrupted (Ctrl-C or SIGTERM): the sweep ended the worker of this run"
START_TIMEOUT = 120.0  # seconds for a new worker to bind its socket
EXIT_WAIT = 120.0  # seconds a wrapped once-worker gets to exit after its job (the tool's summary)


class WorkerStartError(RuntimeError):
    """The worker process exited, or never bound its socket, before taking a job."""


@dataclass
class Outcome:
    """What happened to one job, seen from the supervisor."""

    status: str  # "result" | "user_error" | "HANG" | "CRASH" | "INTERRUPTED"
    result: dict[str, Any] | None = None
    message: str = ""
    log_tail: str = ""
    worker_pid: int | None = None
    worker_reused: bool = False
    events: list[dict] = field(default_factory=list)


def _socket_dir() -> Path:
    """wb's socket folder, <tmp>/wb-<uid>: a folder of this user that no one else may write.
    /tmp is shared: a folder of that name made first by another user would let them put a
    socket where wb looks for its warm worker, and wb would send it its jobs."""
    path = Path(tempfile.gettempdir()) / f"wb-{os.getuid()}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise path_error("wb's socket folder", path, exc) from None
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise path_error("wb's socket folder", path, exc) from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        what = ("is no folder" if not stat.S_ISDIR(st.st_mode) else f"belongs to uid {st.st_uid}" if st.st_uid != os.getuid()
                else "may be written by other users")
        raise UserError(f"wb's socket folder {path} {what}: remove it (or set TMPDIR to a folder of your own)")
    return path


def warm_tag(ws: Workspace, env: dict[str, str] | None = None) -> str:
    """Workers are shared only between runs with the same workspace, Python, GPU choice and
    the settings a worker reads once, at its start: WB_HOME (where the compile cache is) and
    the DSL's CUTE_DSL_* variables (a warm worker kept the old ones: a cache in the wrong
    place, a compile for the wrong arch).

    `env` overlays os.environ (wb sweep gives each lane its own CUDA_VISIBLE_DEVICES, and
    each Slurm job its own WB_LANE: jobs may share a workspace and see the same device ids)."""
    environ = {**os.environ, **(env or {})}
    dsl = sorted(f"{k}={v}" for k, v in environ.items() if k.startswith("CUTE_DSL_"))
    key = "|".join([str(ws.root), sys.executable, environ.get("CUDA_VISIBLE_DEVICES", ""), environ.get("PYTHONPATH", ""),
                    environ.get("WB_HOME", ""), *dsl])
    if environ.get("WB_LANE"):
        key += "|" + environ["WB_LANE"]
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def pid_dir(ws: Workspace) -> Path:
    return ws.state_dir / "pids"


class Worker:
    def __init__(self, pid: int, socket_path: str, log_path: Path, popen: subprocess.Popen | None, reused: bool):
        self.pidfile: Path | None = None
        self.pidfile_glob: tuple[Path, str] | None = None
        self.pid = pid
        self.socket_path = socket_path
        self.log_path = log_path
        self.popen = popen
        self.reused = reused
        self.token: str | None = None  # processes.TOKEN_ENV in the worker's environment

    @classmethod
    def spawn(
        cls, ws: Workspace, socket_path: str, once: bool, idle: float | None = None, env: dict[str, str] | None = None,
        wrap: list[str] | None = None,
    ) -> "Worker":
        """A new worker; ``wrap`` is a command line the worker's own is appended to (wb run
        --sanitize: compute-sanitizer). It leads the worker's process group either way."""
        logs = ws.ensure_state_dir("logs")
        log_path = logs / f"worker-{Path(socket_path).stem}.log"
        if once:
            _prune_logs(logs, "worker-once-*.log", keep=KEEP_ONCE_LOGS - 1)  # and this one
        _prune_dead_sockets(Path(socket_path).parent)
        log = open(log_path, "ab")
        env = {**os.environ, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        env[processes.TOKEN_ENV] = token = processes.new_token()
        if wrap:
            env[processes.NO_SENTINEL_ENV] = "1"
        pidfile = pid_dir(ws) / f"{Path(socket_path).stem}.json"
        args = [sys.executable, "-m", "workbench.run.worker", "--socket", socket_path, "--idle", str(settings.worker_idle() if idle is None else idle), "--pidfile", str(pidfile)]
        if once:
            args.append("--once")
        # who the worker serves, named here: its own parent may be a wrapping tool, or already
        # dead (and init) by the time it looks
        me = processes.identity(os.getpid())
        args += ["--parent", f"{me['pid']}:{me['starttime']}"]
        args = [*(wrap or []), *args]
        popen = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=ws.root
        )
        log.close()
        worker = cls(popen.pid, socket_path, log_path, popen, reused=False)
        worker.token = token
        worker.pidfile = procs.pidfile_for(pidfile, popen.pid)  # the worker writes <stem>-<pid>.json
        if wrap:  # the worker is the wrapping tool's child: its pid file carries the child's pid
            worker.pidfile_glob = (pidfile.parent, f"{pidfile.stem}-*.json")
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if popen.poll() is not None:
                    raise WorkerStartError(f"worker exited at start (code {popen.returncode}): {worker.log_tail()}")
                if os.path.exists(socket_path):
                    return worker
                time.sleep(0.02)
        except KeyboardInterrupt:  # Ctrl-C while it starts: it would outlive this wb as an orphan
            worker.kill()
            raise
        worker.kill()
        raise WorkerStartError(f"worker did not start within {START_TIMEOUT:.0f} s")

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket_path)
        return sock

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:  # a worker this process spawned for an earlier run: reap it if it has exited
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if os.path.isdir("/proc"):  # a zombie answers kill(0) but runs nothing
            return processes.starttime(self.pid) is not None
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def kill(self) -> None:
        """End the worker, everything in its process group, and whatever it started that left
        the group (a setsid child, a daemon: found by the worker's token in their environment)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        processes.kill_token(self.token)
        if self.popen is not None:
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        else:
            deadline = time.monotonic() + 10
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        stale = sorted(self.pidfile_glob[0].glob(self.pidfile_glob[1])) if self.pidfile_glob else []
        for path in (self.socket_path, self.pidfile, *stale):
            if path is None:
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def wait_exit(self, timeout: float) -> bool:
        """Wait for a once-worker to exit by itself (a wrapping tool writes its summary when
        it does); kill it after ``timeout`` seconds. True when it exited by itself."""
        if self.popen is None:
            return False
        try:
            self.popen.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        except KeyboardInterrupt:
            self.kill()
            raise

    def log_tail(self, since: int = 0, limit: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(since)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return text[-limit:].strip()

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def trim_log(self, limit: int = None, keep: int = None) -> None:
        """Between jobs: a log past ``limit`` bytes keeps its last ``keep`` in <log>.old and
        starts again empty. A warm worker serves many runs and appended to one log for ever (a
        stage printing 20 MB a run grew it by 20 MB each). The worker writes with O_APPEND, so
        its next line lands at the new end."""
        limit = MAX_LOG_BYTES if limit is None else limit
        keep = KEEP_LOG_BYTES if keep is None else keep
        try:
            if self.log_path.stat().st_size <= limit:
                return
            with open(self.log_path, "rb") as fh:
                fh.seek(-keep, os.SEEK_END)
                tail = fh.read()
            self.log_path.with_name(self.log_path.name + ".old").write_bytes(tail)
            os.truncate(self.log_path, 0)
        except OSError:
            pass


KEEP_ONCE_LOGS = 200  # one-run workers' logs kept in .wb/logs (each such worker writes one)
MAX_LOG_BYTES = 16 << 20  # a worker's log is trimmed past this between jobs ...
KEEP_LOG_BYTES = 1 << 20  # ... keeping its last MiB in <log>.old


#: a socket file younger than this may belong to a worker still starting: never pruned
DEAD_SOCKET_AGE_S = 60.0


def _listening_sockets() -> set[str] | None:
    """The paths of the Unix sockets listening on this machine (/proc/net/unix names the path
    a socket was bound to: a worker binds <name>.<pid>.tmp and renames it), or None."""
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return None
    out = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[3] == "00010000":  # __SO_ACCEPTCON: listening
            out.add(re.sub(r"\.\d+\.tmp$", "", fields[7]))
    return out


def _prune_dead_sockets(folder: Path) -> None:
    """Remove the sockets in wb's socket folder that no process listens on any more (a
    worker ended by SIGKILL, its parent-death signal or `wb kill`, cannot remove its own)."""
    listening = _listening_sockets()
    if listening is None:
        return
    now = time.time()
    for path in folder.glob("*.sock"):
        try:
            if str(path) not in listening and now - path.lstat().st_mtime > DEAD_SOCKET_AGE_S:
                path.unlink()
        except OSError:
            pass


def _prune_logs(folder: Path, pattern: str, keep: int) -> None:
    """The oldest of `pattern`'s files beyond the newest `keep` removed (one-run workers left
    one log each, for ever)."""
    try:
        logs = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for old in logs[: max(0, len(logs) - keep)]:
        try:
            old.unlink()
        except OSError:
            pass


def _find_warm(ws: Workspace, socket_path: str) -> Worker | None:
    """A live warm worker answering on `socket_path`, or None."""
    if not os.path.exists(socket_path):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(socket_path)
            protocol.send(sock, {"op": "ping"})
            reply = next(protocol.receive(sock), None)
    except (OSError, ValueError):
        reply = None
    if reply and reply.get("type") == "pong" and (
        reply.get("code") != protocol.wb_code_version() or reply.get("home") != protocol.folder_identity(ws.root)
    ):
        # Started before wb itself was edited (it would run the old code), or for a workspace
        # since deleted and made again at this path (a fresh clone): replace it.
        stale = Worker(int(reply["pid"]), socket_path, Path(os.devnull), None, reused=False)
        stale.token = reply.get("token")
        stale.pidfile = procs.pidfile_for(pid_dir(ws) / f"{Path(socket_path).stem}.json", stale.pid)
        stale.kill()
        return None
    if not reply or reply.get("type") != "pong":
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # a folder there: no worker could bind it either
            raise path_error("wb cannot remove what is at its warm worker's socket path", socket_path, exc) from None
        return None
    log_path = ws.state_dir / "logs" / f"worker-{Path(socket_path).stem}.log"
    worker = Worker(int(reply["pid"]), socket_path, log_path, None, reused=True)
    worker.token = reply.get("token")
    worker.pidfile = procs.pidfile_for(pid_dir(ws) / f"{Path(socket_path).stem}.json", worker.pid)
    return worker


def run_job(
    ws: Workspace,
    job: dict[str, Any],
    timeout: float,
    on_event: Callable[[dict], None] = lambda e: None,
    warm: bool = True,
    env: dict[str, str] | None = None,
    wrap: list[str] | None = None,
) -> Outcome:
    """Run one job in a worker and report what happened; never raises for kernel failures.

    `env` overlays os.environ for the worker (and picks the warm worker of that setting).
    `wrap`: a fresh worker started under this command line (see Worker.spawn), waited for
    until it exits after the job (at most EXIT_WAIT seconds) so the tool finishes its log.
    A Ctrl-C (or SIGTERM) is the outcome INTERRUPTED, whether the worker was busy or still
    starting (Worker.spawn ends a worker it was starting)."""
    lock = None
    worker = None
    if wrap:
        warm = False
    try:
        if warm:
            ws.ensure_state_dir()
            tag = warm_tag(ws, env)
            lock = held_lock(ws.state_dir / f"worker-{tag}.lock", 0)
            if lock is not None:  # else another run holds the warm worker: use a fresh one
                socket_path = str(_socket_dir() / f"{tag}.sock")
                worker = _find_warm(ws, socket_path) or Worker.spawn(ws, socket_path, once=False, env=env)
        if worker is None:
            socket_path = str(_socket_dir() / f"once-{os.getpid()}-{time.monotonic_ns()}.sock")
            worker = Worker.spawn(ws, socket_path, once=True, env=env, wrap=wrap)
        outcome = _drive(worker, job, timeout, on_event)
        if wrap and outcome.status in ("result", "user_error"):
            worker.wait_exit(EXIT_WAIT)
        return outcome
    except KeyboardInterrupt:  # before a worker answered (_drive turns one during the job into INTERRUPTED itself)
        return Outcome(status="INTERRUPTED", message="interrupted (Ctrl-C or SIGTERM) before the worker answered")
    finally:
        if lock is not None:
            lock.release()


def _drive(worker: Worker, job: dict, timeout: float, on_event) -> Outcome:
    worker.trim_log()
    log_start = worker.log_size()
    outcome = Outcome(status="CRASH", worker_pid=worker.pid, worker_reused=worker.reused)
    # Until the worker accepts the job (a new one is still importing torch and the DSL) the
    # start limit applies; the job's own timeout starts when it is accepted.
    deadline = time.monotonic() + START_TIMEOUT + timeout
    accepted = False
    try:
        sock = worker.connect()
    except OSError as exc:
        worker.kill()
        outcome.message = f"could not reach the worker: {exc}"
        return outcome
    try:
        protocol.send(sock, {"op": "run", **job})  # job["op"], when given, wins
        buffer = b""
        while True:
            if STOPPING.is_set():  # this process is ending its runs (an interrupted sweep): this one too
                worker.kill()
                outcome.status, outcome.message = "INTERRUPTED", STOPPED
                outcome.log_tail = worker.log_tail(log_start)
                return outcome
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(min(remaining, 1.0))
            try:
                chunk = sock.recv(1 << 16)
            except socket.timeout:
                if not worker.alive():
                    chunk = b""
                else:
                    continue
            if not chunk:
                killer = procs.killed_by_wb_kill(worker.pidfile, worker.pid)
                if killer is not None and killer != os.getpid():
                    outcome.status = "INTERRUPTED"
                    outcome.message = f"the worker was killed by `wb kill`{f' (pid {killer})' if killer else ''}"
                elif STOPPING.is_set() or killer is not None:  # this wb ended it (an interrupted sweep's kill leaves the marker too)
                    outcome.status, outcome.message = "INTERRUPTED", STOPPED
                else:
                    outcome.status, outcome.message = "CRASH", "the worker process died"
                outcome.log_tail = worker.log_tail(log_start)
                worker.kill()
                return outcome
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.strip():
                    continue
                message = json.loads(line)
                kind = message.get("type")
                if kind == "accepted":
                    if not accepted:
                        accepted = True
                        deadline = time.monotonic() + timeout
                    continue
                if kind == "result":
                    outcome.status = "result"
                    outcome.result = message["result"]
                    outcome.log_tail = worker.log_tail(log_start)
                    return outcome
                if kind == "user_error":
                    outcome.status = "user_error"
                    outcome.message = message["message"]
                    return outcome
                outcome.events.append(message)
                on_event(message)
    except TimeoutError:
        worker.kill()
        outcome.status = "HANG"
        outcome.message = (
            f"no result after {timeout:g} s: the worker's process group was killed"
            if accepted
            else f"the worker did not take the job within {START_TIMEOUT:g} s: its process group was killed"
        )
        outcome.log_tail = worker.log_tail(log_start)
        return outcome
    except KeyboardInterrupt:
        worker.kill()
        outcome.status = "INTERRUPTED"
        outcome.message = "interrupted (Ctrl-C or SIGTERM): the worker's process group was killed"
        return outcome
    finally:
        try:
            sock.close()
        except OSError:
            pass
