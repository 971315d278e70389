"""Mutant references: small torch functions that reproduce a classic kernel bug.

    from workbench.diagnose import mutant, Pred

    @mutant("kv-tile0", "every KV tile reads K/V tile 0 (TMA tile coordinate stuck at 0)",
            outputs=("o", "lse"), dims=(2, 4))
    def kv_tile0(cx):                 # cx: MutantContext
        ...
        return {"o": tensor, "lse": tensor}   # keyed by the stage's output names

A mutant returns, per output it predicts, a tensor (float; NaN/inf where the buggy kernel
would compute them) or a `Pred` (values plus masks of unwritten / don't-care elements).
Outputs it does not return are taken to be correct (the reference). Returning None, {} or
raising `NotApplicable` means "this bug cannot happen / cannot be told apart here" (e.g. a
KV-tile bug when there is one KV tile).

`outputs` lists the output ROLES the mutant can predict: "s" (logits S), "p"
(probabilities P), "o", "lse", or "*" for any output (generic mutants). Output names map to
roles by name (see ROLE_NAMES). `dims` lists the ranks of q it handles: 2 for (seq, d)
stages, 4 for (batch, seq, heads, d) stages; a generic mutant works on outputs and says
which output ranks it handles.

Generic mutants live in workbench/diagnose/generic.py; a kernel registers its own in
stages/<kernel>/mutants.py (or in any stage module); `mutants_for(kernel_dir)` returns the
generic ones plus those registered from files in that folder.

No torch at import time.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

#: output name (lower-case) -> role
ROLE_NAMES = {
    "s": "s", "scores": "s", "logits": "s", "qk": "s",
    "p": "p", "probs": "p", "probabilities": "p", "softmax": "p",
    "o": "o", "out": "o", "output": "o", "attn": "o",
    "lse": "lse", "logsumexp": "lse", "softmax_lse": "lse",
}


def role_of(output_name: str) -> str | None:
    return ROLE_NAMES.get(output_name.lower())


class NotApplicable(Exception):
    """Raised by a mutant that cannot happen (or cannot be modelled) for these inputs."""


@dataclass
class Pred:
    """One predicted output: `values` (float tensor), `unwritten` (bool mask: elements the
    buggy kernel never stores; they hold the poison pattern), `care` (bool mask: elements
    the model predicts at all; others, e.g. reads past the end of a buffer, are ignored)."""

    values: Any
    unwritten: Any = None
    care: Any = None


@dataclass(frozen=True)
class Mutant:
    name: str
    description: str  # one line, in kernel terms
    fn: Callable[..., Any]
    outputs: tuple[str, ...] = ("*",)
    dims: tuple[int, ...] = (2, 4)
    family: str = ""
    generic: bool = False
    source: str = ""  # file the mutant was registered from

    def predicts(self, role: str | None) -> bool:
        return "*" in self.outputs or (role is not None and role in self.outputs)


_registry: dict[str, Mutant] = {}


def mutant(
    name: str,
    description: str,
    *,
    outputs: tuple[str, ...] = ("*",),
    dims: tuple[int, ...] = (2, 4),
    family: str = "",
):
    """Register a mutant reference under `name` (a later registration of a name replaces it)."""

    def register(fn):
        try:
            source = str(Path(inspect.getfile(fn)).resolve())
        except (TypeError, OSError):
            source = ""
        _registry[name] = Mutant(
            name=name,
            description=" ".join(description.split()),
            fn=fn,
            outputs=tuple(outputs),
            dims=tuple(dims),
            family=family,
            generic=fn.__module__.startswith("workbench.diagnose"),
            source=source,
        )
        return fn

    return register


def all_mutants() -> dict[str, Mutant]:
    _load_generic()
    return dict(_registry)


def _load_generic() -> None:
    from workbench.diagnose import generic  # noqa: F401  (registers on import)


_loaded: dict[str, float] = {}  # module file -> mtime it was loaded at


def load_mutants(path: str | os.PathLike) -> None:
    """Import a mutants file (or every mutants*.py in a folder) so its mutants register.
    Re-imports a file whose modification time changed (the worker process is long-lived)."""
    path = Path(path)
    files = sorted(path.glob("mutants*.py")) if path.is_dir() else [path]
    for file in files:
        file = file.resolve()
        mtime = file.stat().st_mtime
        if _loaded.get(str(file)) == mtime:
            continue
        for name in [n for n, m in _registry.items() if m.source == str(file)]:
            del _registry[name]
        mod_name = "wb_mutants_" + "_".join(file.parts[-3:]).replace(".py", "").replace("-", "_").replace(".", "_")
        spec = importlib.util.spec_from_file_location(mod_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[mod_name]
            raise
        _loaded[str(file)] = mtime


def mutants_for(kernel_dir: str | os.PathLike | None = None) -> dict[str, Mutant]:
    """The generic mutants plus those registered from files in `kernel_dir` (its
    mutants*.py is imported here; mutants a stage module registers count once that module
    has been imported)."""
    _load_generic()
    if kernel_dir is None:
        return {n: m for n, m in _registry.items() if m.generic}
    folder = Path(kernel_dir).resolve()
    load_mutants(folder)
    return {
        n: m
        for n, m in _registry.items()
        if m.generic or (m.source and Path(m.source).parent == folder)
    }


@dataclass
class MutantContext:
    """What a mutant sees: the stage's inputs, the true reference outputs, params, variants.

    `expected` holds the reference outputs (float); `cache` is shared by every mutant of one
    diagnosis (a kernel's mutants keep their calibrated conventions and base tensors there);
    `notes` collects remarks for the diagnosis (e.g. "could not reproduce the reference").
    """

    inputs: Mapping[str, Any]
    expected: Mapping[str, Any]
    params: Mapping[str, Any]
    variants: Mapping[str, str]
    fixture: str = ""
    cache: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def param(self, name: str, default: Any = None) -> Any:
        try:
            return self.params[name]
        except (KeyError, TypeError):
            return default

    def names_for(self, role: str) -> list[str]:
        return [n for n in self.expected if role_of(n) == role]

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
