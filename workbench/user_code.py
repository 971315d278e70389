"""Importing a user's Python file: a fixtures module, a kernel's peers or bench hooks, its
mutants / evidence files, a stage's export op. The file is someone's work in progress, so whatever its import raises, short of
Ctrl-C, is a broken file and one line (a UserError), never a traceback or a way out of wb:
sys.exit() raises SystemExit, and a generator or a module may raise its own BaseException.
os._exit() would end wb's process on the spot (exit 0 for ``os._exit(0)``, nothing said), so
while a file imports, a call of it from the importing thread raises instead."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

from workbench.errors import UserError


class ProcessExitAtImport(BaseException):
    """os._exit(code) called by a user's file during its import."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code

    def __str__(self) -> str:
        return f"it called os._exit({self.code}), which would end wb"


_importing = threading.local()  # .depth: the user files this thread is importing now
_real_exit = os._exit


def _exit_unless_importing(code):
    if getattr(_importing, "depth", 0):
        raise ProcessExitAtImport(code)
    _real_exit(code)


def _guard_process_exit() -> None:
    """Put the guard in place once, for good: swapping os._exit back and forth around each
    import would race with imports on other threads. Other threads, and this one outside an
    import, still exit as they asked."""
    if os._exit is not _exit_unless_importing:
        os._exit = _exit_unless_importing


def import_file(name: str, path: Path, what: str) -> ModuleType:
    """``path`` imported as module ``name`` (registered in sys.modules while it runs, as an
    import would, and removed again when it fails). A UserError it raises passes as it is;
    anything else but KeyboardInterrupt becomes "PATH: WHAT failed to import: Type: message"."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    _guard_process_exit()
    _importing.depth = getattr(_importing, "depth", 0) + 1
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        sys.modules.pop(name, None)
        raise
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{path}: {what} failed to import: {failure_text(exc)}") from None
    finally:
        _importing.depth -= 1
    return module


def failure_text(exc: BaseException) -> str:
    """'Type: message', or the type alone when the message is empty (``sys.exit()``, a bare raise);
    os._exit at import says so."""
    message = str(exc)
    if isinstance(exc, ProcessExitAtImport):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
