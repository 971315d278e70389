"""Importing a user's Python file: a fixtures module, a kernel's peers or bench hooks, its
mutants / evidence files, a stage's export op. The file is someone's work in progress, so whatever its import raises, short of
Ctrl-C, is a broken file and one line (a UserError), never a traceback or a way out of wb:
sys.exit() raises SystemExit, and a generator or a module may raise its own BaseException."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from workbench.errors import UserError


def import_file(name: str, path: Path, what: str) -> ModuleType:
    """``path`` imported as module ``name`` (registered in sys.modules while it runs, as an
    import would, and removed again when it fails). A UserError it raises passes as it is;
    anything else but KeyboardInterrupt becomes "PATH: WHAT failed to import: Type: message"."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
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
    return module


def failure_text(exc: BaseException) -> str:
    """'Type: message', or the type alone when the message is empty (``sys.exit()``, a bare raise)."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
