"""The remote end of `wb ... --host`: runs one wb command for an ssh session, and stops it
when the session goes away.

    python -m workbench.remote.agent -- run fmha/stage-c -p n=256 --json

Started by ssh in the remote workspace. It runs `python -m workbench ARGS` as a child in its
own process group, with WB_EVENTS=stderr (progress as `wb-event {json}` lines on stderr),
passes the child's stdout and stderr through, and watches its own stdin: ssh closes it when
the local wb ends the session or the connection dies. Then the child gets SIGINT (a `wb run`
kills its worker and records INTERRUPTED), and SIGKILL after a grace period.

Its first stderr line is `wb-agent {"pid": CHILD, "agent": PID, "cwd": ...}`. While the child
runs, a pid file of kind "remote-run" in .wb/pids/ lets `wb ps` / `wb kill` find it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from workbench import processes, settings
from workbench.errors import UserError
from workbench.run import procs

GPU_COMMANDS = {"run", "bench", "sweep"}  # the commands whose processes get a pid file


def _pump(src, dst) -> None:
    try:
        for line in iter(src.readline, b""):
            try:
                dst.write(line)
                dst.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the session is gone: keep draining so the child never blocks
    finally:
        src.close()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        print("usage: python -m workbench.remote.agent -- WB-ARGS...", file=sys.stderr)
        return 2
    try:
        grace = settings.agent_grace()  # before the child starts: nothing to stop yet
    except UserError as exc:
        print(f"wb: error: {exc}", file=sys.stderr)
        return 2
    env = dict(os.environ, WB_EVENTS="stderr", PYTHONUNBUFFERED="1")
    child = subprocess.Popen(
        [sys.executable, "-m", "workbench", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )
    pidfile = None
    try:
        if args[0] not in GPU_COMMANDS:
            raise LookupError  # `wb ps`, `wb hosts`, ...: nothing to clean up after

        folder = Path(".wb") / "pids"
        folder.mkdir(parents=True, exist_ok=True)
        pidfile = procs.PidFile(folder / f"remote-run-{child.pid}.json", "remote-run")
        pidfile.update(
            pid=child.pid, pgid=child.pid, starttime=processes.starttime(child.pid),
            argv=[sys.executable, "-m", "workbench", *args],
            agent={"pid": os.getpid(), "starttime": processes.starttime(os.getpid())},
        )
    except Exception:
        pidfile = None
    out = sys.stdout.buffer
    err = sys.stderr.buffer
    try:
        err.write(b"wb-agent " + json.dumps({"pid": child.pid, "agent": os.getpid(), "cwd": os.getcwd()}).encode() + b"\n")
        err.flush()
    except OSError:
        pass
    pumps = [
        threading.Thread(target=_pump, args=(child.stdout, out), daemon=True),
        threading.Thread(target=_pump, args=(child.stderr, err), daemon=True),
    ]
    for t in pumps:
        t.start()

    stop = threading.Event()

    def watch_stdin() -> None:
        try:  # raw reads: a buffered reader's lock would block interpreter shutdown
            while os.read(0, 1 << 12):
                pass
        except OSError:
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    stopped_at = None
    while child.poll() is None:
        if stop.is_set():
            if stopped_at is None:
                stopped_at = time.monotonic()
                _signal(child.pid, signal.SIGINT)
            elif time.monotonic() - stopped_at > grace:
                _signal(child.pid, signal.SIGKILL)
        time.sleep(0.1)
    for t in pumps:
        t.join(timeout=5)
    if pidfile is not None:
        pidfile.remove()
    code = child.returncode
    return 128 - code if code < 0 else code


def _exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)  # without waiting for the stdin watcher (a daemon thread blocked in read)


def _signal(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    _exit(main())
