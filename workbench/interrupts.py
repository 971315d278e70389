"""Ctrl-C, SIGTERM and SIGHUP held off while wb writes something that must never be half done (a
record and its MEMORY.md line, an import's moves, a new kernel's files): a signal that comes
meanwhile stops wb when the outermost hold ends."""

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
