"""A worker's sentinel: a small process each worker starts beside itself, in a session of its
own (so that the worker's process group is gone with the worker), that sweeps up after a worker
that dies without doing so itself.

A worker ends its process group and whatever carries its token (workbench.processes.TOKEN_ENV)
whenever wb or the worker kills it. A worker that the kernel kills (the parent-death SIGKILL
when its wb is killed, the OOM killer) or that crashes leaves that undone: its group's other
processes and a stage's setsid child or daemon would outlive it, holding their GPU memory.
The sentinel waits on the worker's pidfd and, when the worker is gone, signals every process
carrying the token (itself excepted), then what is left of the worker's process group, and
exits. A worker that exits normally kills its sentinel first; wb's kills of a worker end it
with the rest (it carries the token).

Run as a script by the worker (`python -I -S sentinel.py PID TOKEN START`, START the worker's
start time from /proc, so a recycled PID is told apart): it loads
workbench/processes.py alone, not the wb package, so it starts in milliseconds.
"""

import functools
import importlib.util
import os
import select
import signal
import sys
from pathlib import Path


@functools.cache
def _processes():
    """workbench/processes.py loaded alone (standard library only): not the wb package, whose
    imports would cost the sentinel's start."""
    spec = importlib.util.spec_from_file_location("_wb_processes", Path(__file__).resolve().parents[1] / "processes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def started(pid: int) -> int | None:
    """When process ``pid`` started (processes.starttime: clock ticks since boot), None when no
    process of that pid runs."""
    return _processes().starttime(pid)


def sweep_group(pid: int, born: int | None) -> bool:
    """SIGKILL what is left of the process group the worker (``pid``, started at ``born``)
    led, unless ``pid`` now names a process that started at another time: the number was
    recycled, which Linux does only once no process of the worker's group holds it, so a group
    of that id is a stranger's. Whether it signalled."""
    now = started(pid)
    if now is not None and now != born:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    return True


def main(argv: list[str]) -> None:
    pid, token = int(argv[1]), argv[2]
    born = int(argv[3]) if len(argv) > 3 else None  # the worker's start, as it read it itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the terminal is the worker's to handle
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # already gone
        fd = None
    if fd is not None:  # the pidfd pins a process: the worker only if it started when the worker did
        if born is None:
            born = started(pid)
        elif started(pid) != born:
            fd = None  # gone and its pid taken already: nothing of the worker's to wait on
    if fd is not None:
        select.select([fd], [], [])  # readable once the worker has exited
    _processes().kill_token(token)
    sweep_group(pid, born)  # what is left of the group the worker led (a process that dropped the token)


if __name__ == "__main__":
    main(sys.argv)
