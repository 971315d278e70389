"""A small terminal wrapper: one console, errors as one line, tables, JSON output."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

from workbench.text import cut_middle, fmt, strict_json  # noqa: F401  (fmt re-exported for the CLI)


_CLOSED_BY_CALLER: set[str] = set()


def _give_closed_streams_devnull() -> None:
    """A standard stream the caller closed (`wb list >&-`) is None in Python and its file
    descriptor is free: the next file wb opened would take it (and a worker would print into
    it). Each such descriptor gets /dev/null, and sys's stream a file on it; the stream's
    name is kept, so that a write to it still fails as the shell's closed descriptor would."""
    for fd, name, flags in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY), (2, "stderr", os.O_WRONLY)):
        if getattr(sys, name) is not None:
            continue
        _CLOSED_BY_CALLER.add(name)
        try:
            os.fstat(fd)
        except OSError:
            devnull = os.open(os.devnull, flags)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
        setattr(sys, name, open(fd, "r" if flags == os.O_RDONLY else "w", closefd=False))


_give_closed_streams_devnull()
# COLUMNS=0 (or junk) is no width: rich drew every table and line in 0 columns, i.e. printed nothing
if "COLUMNS" in os.environ and not (os.environ["COLUMNS"].strip().isdigit() and int(os.environ["COLUMNS"]) > 0):
    del os.environ["COLUMNS"]
# Off a terminal (pipes, CI logs) rich would wrap at 80 columns; tables read better wider.
_width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(highlight=False, soft_wrap=False, width=_width)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

VERDICT_STYLE = {
    "PASS": "bold green",
    "FAIL": "bold red",
    "COMPILE_ERROR": "bold magenta",
    "CRASH": "bold red",
    "HANG": "bold yellow",
    "INTERRUPTED": "yellow",
    "LOST": "yellow",
    "SKIP": "dim",
    None: "dim",
}


class _ReaderMayLeave:
    """stdout/stderr for a command whose reader may leave (`wb run a | head -1`, quitting
    less): a write to the closed pipe raised BrokenPipeError in the middle of a run, which
    then ended without its record. The stream goes to /dev/null instead and wb carries on.
    Any other failed write (a full disk, `> /dev/full`) does the same, and ``failed`` keeps
    the reason: the command finishes, then says in one line that its output was lost."""

    def __init__(self, stream, closed_by_caller: bool = False):
        self._stream = stream
        self.reader_left = False
        self.failed: str | None = None
        self._closed_by_caller = closed_by_caller

    def write(self, text):
        if self._closed_by_caller and text and not self.reader_left:
            self._gone(OSError(errno.EBADF, os.strerror(errno.EBADF)))
        if not self.reader_left:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._gone(exc)
        return len(text)

    def flush(self):
        if not self.reader_left:
            try:
                self._stream.flush()
            except OSError as exc:
                self._gone(exc)

    def _gone(self, exc: OSError) -> None:
        self.reader_left = True
        if not isinstance(exc, BrokenPipeError):
            self.failed = exc.strerror or str(exc)
        try:  # the interpreter's last flush at exit goes there too (no "Exception ignored" line)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def readers_may_leave():
    """sys.stdout and sys.stderr wrapped for the block (see _ReaderMayLeave); yields the
    stdout wrapper (its ``failed``: why the output could not be written, or None)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (_ReaderMayLeave(getattr(sys, name), name in _CLOSED_BY_CALLER) for name in ("stdout", "stderr"))
    try:
        yield sys.stdout
    finally:
        sys.stdout, sys.stderr = saved


def interactive() -> bool:
    return console.is_terminal


def verdict(text: str | None) -> str:
    style = VERDICT_STYLE.get(text, "bold")
    return f"[{style}]{text or '-'}[/]"


def error(message: str) -> None:
    """One line on stderr, never wrapped (scripts grep it); nothing when stderr cannot be written."""
    with contextlib.suppress(OSError):
        err_console.print(f"[bold red]wb: error:[/] {_escape(_one_line(message))}", soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]wb: warning:[/] {_escape(_one_line(message))}", soft_wrap=True)


#: an error or warning echoes what it was given: a 100k-character argument is cut in the middle
ONE_LINE_MAX = 2000


def _one_line(text: str) -> str:
    return cut_middle(" ".join(printable(text).split()), ONE_LINE_MAX, sep=" ")


def info(message: str) -> None:
    console.print(message)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# C0 controls but tab and newline, DEL and C1: text from a record or a file must not move the
# cursor, retitle the window or clear the screen (an imported record can carry anything)
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]}


def printable(text: Any) -> str:
    """str(text) with terminal control characters shown as \\xNN instead of acted on."""
    return str(text).translate(_CONTROLS)


def escape(text: Any) -> str:
    """Text for rich markup: markup escaped, control characters made visible."""
    return _escape(printable(text))


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]], **kwargs: Any) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold", **kwargs)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*(c if hasattr(c, "__rich_console__") else printable(c) for c in row))
    return t


def print_json(data: Any) -> None:
    """``data`` as strict JSON (what every parser takes): NaN and infinities become null.
    Under the remote agent (WB_EVENTS=stderr: a wb reading another wb's record) they stay, so
    an imported record keeps its NaN metrics."""
    if os.environ.get("WB_EVENTS") == "stderr":
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    sys.stdout.write(json.dumps(strict_json(data), indent=2, default=str, allow_nan=False) + "\n")
