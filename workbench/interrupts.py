"""How signals end wb: SIGTERM and SIGHUP as Ctrl-C does (stop_on_termination), and all three
held off while wb writes something that must never be half done (a record and its MEMORY.md
line, an import's moves, a new kernel's files): a signal that comes meanwhile stops wb when
the outermost hold ends."""

from __future__ import annotations

import contextlib
import signal
import threading

_held: list[int] = []  # signals that came while held (the outermost hold raises for them)
_depth = 0


@contextlib.contextmanager
def held_signals():
    """Hold Ctrl-C, SIGTERM and SIGHUP off for the block: one that comes meanwhile is raised as
    KeyboardInterrupt when the outermost hold ends (nothing is lost, and wb still stops).
    Off the main thread it holds nothing."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    if _depth == 0:
        _held.clear()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            before = signal.getsignal(sig)
            if before is signal.SIG_IGN:
                continue  # ignored by whoever started wb: stays ignored
            previous[sig] = before if before is not None else signal.SIG_DFL
            signal.signal(sig, lambda signum, frame: _held.append(signum))
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if _depth == 0 and _held:
        _held.clear()
        raise KeyboardInterrupt


def _stop(signum, frame):
    raise KeyboardInterrupt


def stop_on_termination() -> None:
    """SIGTERM (`timeout`, `kill`, a batch system ending the job) and SIGHUP (the terminal
    closed, the ssh connection dropped) end wb as Ctrl-C does: the worker's process group is
    killed and the run is recorded as INTERRUPTED. A SIGHUP ignored by whoever started wb
    (nohup) stays ignored. Main thread only (signal.signal raises ValueError elsewhere)."""
    signal.signal(signal.SIGTERM, _stop)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _stop)
