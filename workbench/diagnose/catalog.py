"""Which mutants, evidence hooks and view hooks apply to a kernel: the generic ones (generic.py, registered
when this module is imported) plus those its folder's mutants*.py / evidence*.py register."""

from __future__ import annotations

import os
from pathlib import Path

from workbench.diagnose import generic  # noqa: F401  (registers the generic mutants on import)
from workbench.diagnose.registry import EvidenceHook, Mutant, Views, _hooks, _registry, _view_hooks
from workbench.user_code import import_file


def all_mutants() -> dict[str, Mutant]:
    """Every registered mutant by name (where two kernels share a name, the later loaded)."""
    return {m.name: m for m in _registry.values()}


def hooks_for(kernel_dir: str | os.PathLike | None) -> list[EvidenceHook]:
    """The evidence hooks registered from files in kernel_dir (loading its files first)."""
    if kernel_dir is None:
        return []
    folder = Path(kernel_dir).resolve()
    load_mutants(folder)
    return [h for h in _hooks.values() if h.source and Path(h.source).parent == folder]


def views_for(kernel_dir: str | os.PathLike | None) -> Views:
    """The view hooks registered from files in kernel_dir (loading its files first)."""
    if kernel_dir is None:
        return Views()
    folder = Path(kernel_dir).resolve()
    load_mutants(folder)
    views = Views()
    for (kind, source, _), fn in sorted(_view_hooks.items(), key=lambda item: item[0]):
        if source and Path(source).parent == folder:
            getattr(views, kind).append(fn)
    return views


HOOK_FILES = ("mutants*.py", "evidence*.py")
_loaded: dict[str, float] = {}  # module file -> mtime it was loaded at


def load_mutants(path: str | os.PathLike) -> None:
    """Import a mutants file (or every mutants*.py and evidence*.py in a folder) so its
    mutants and evidence hooks register. Re-imports a file whose modification time changed
    (the worker process is long-lived)."""
    path = Path(path)
    files = sorted(f for pattern in HOOK_FILES for f in path.glob(pattern)) if path.is_dir() else [path]
    for file in files:
        file = file.resolve()
        mtime = file.stat().st_mtime
        if _loaded.get(str(file)) == mtime:
            continue
        for key in [k for k, m in _registry.items() if m.source == str(file)]:
            del _registry[key]
        for key in [k for k in _hooks if k[0] == str(file)]:
            del _hooks[key]
        for key in [k for k in _view_hooks if k[1] == str(file)]:
            del _view_hooks[key]
        mod_name = "wb_mutants_" + "_".join(file.parts[-3:]).replace(".py", "").replace("-", "_").replace(".", "_")
        # a UserError for any failure (sys.exit() too): the diagnosis and the run's evidence
        # catch it as a note, and the run's verdict stands
        import_file(mod_name, file, "the kernel's diagnosis hooks file")
        _loaded[str(file)] = mtime


def mutants_for(kernel_dir: str | os.PathLike | None = None) -> dict[str, Mutant]:
    """The generic mutants plus those registered from files in `kernel_dir` (its
    mutants*.py is imported here; mutants a stage module registers count once that module
    has been imported)."""
    generic = {m.name: m for m in _registry.values() if m.generic}
    if kernel_dir is None:
        return generic
    folder = Path(kernel_dir).resolve()
    load_mutants(folder)
    own = {m.name: m for m in _registry.values() if not m.generic and m.source and Path(m.source).parent == folder}
    return {**generic, **own}  # a kernel's mutant of a generic one's name is the kernel's
