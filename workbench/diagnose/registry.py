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
stages/<kernel>/mutants.py (or in any stage module); `catalog.mutants_for(kernel_dir)` returns the
generic ones plus those registered from files in that folder.

Evidence hooks: when no mutant explains a failure, the diagnosis states what the evidence
shows (which outputs are right, which other fixtures of the run pass, what the read map
shows). What that implies is kernel knowledge, so the kernel declares it:

    @evidence_hook
    def fmha_evidence(ev):            # ev: EvidenceContext
        if ev.right("lse") and ev.right("o") is False:
            return ["the softmax statistics are right; the error is in P·V ..."]
        return []

in stages/<kernel>/evidence*.py (or mutants*.py); `catalog.hooks_for(kernel_dir)` returns them.

No torch at import time.
"""

from __future__ import annotations

import inspect
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


@dataclass(frozen=True)
class EvidenceHook:
    name: str
    fn: Callable[..., Any]
    source: str = ""


_hooks: dict[tuple[str, str], EvidenceHook] = {}  # (source, name) -> hook


def evidence_hook(fn):
    """Register fn(ev: EvidenceContext) -> list[str]: true statements about what the
    evidence implies for this kernel (see the module docstring)."""
    try:
        source = str(Path(inspect.getfile(fn)).resolve())
    except (TypeError, OSError):
        source = ""
    _hooks[(source, fn.__name__)] = EvidenceHook(fn.__name__, fn, source)
    return fn


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


@dataclass
class EvidenceContext:
    """What an evidence hook sees. `outputs_right`: this fixture's outputs, right or not;
    `fixtures`: the other fixtures of the same run, per output right or not (empty when the
    diagnosis is made before the run is complete); `readmap`: this fixture's ReadMap or
    None."""

    fixture: str
    outputs_right: Mapping[str, bool]
    fixtures: Mapping[str, Mapping[str, bool]] = field(default_factory=dict)
    readmap: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    variants: Mapping[str, str] = field(default_factory=dict)

    def right(self, role: str, fixture: str | None = None) -> bool | None:
        """Is the output of this role right on `fixture` (default: this one)? None when the
        stage has no such output or the fixture did not run (or is not known yet)."""
        outputs = self.outputs_right if fixture in (None, self.fixture) else self.fixtures.get(fixture)
        if outputs is None:
            return None
        found = [ok for name, ok in outputs.items() if role_of(name) == role]
        return all(found) if found else None

    def ran(self, fixture: str) -> bool:
        return fixture == self.fixture or fixture in self.fixtures
