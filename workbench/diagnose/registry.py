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

`outputs` lists the output ROLES the mutant can predict (an output's role is its name,
lower-case, or what the kernel declares with `output_roles`, e.g. fmha's "s", "p", "o",
"lse"), or "*" for any output (generic mutants). `dims` lists the ranks of the stage's first
input it handles (e.g. fmha's q: 2 for (seq, d) stages, 4 for (batch, seq, heads, d)); a
generic mutant works on outputs and says which output ranks it handles.

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

View hooks (same files; `catalog.views_for(kernel_dir)` returns them as a `Views`): how the
kernel's tensors read as matrices, for generic mutants, error maps and read maps.

    @matrices_hook      fn(name, t, params) -> Matrices | None
        output `name` (or any tensor of its shape) as G matrices (G, R, C); None: the generic
        view (a 2-D output is one matrix; N-D: the last two axes, the leading ones flattened)
    @read_source_hook   fn(name, inputs, params) -> tensor (G, N, C) | None
        the rows each row of output `name`'s matrices should equal one of (e.g. fmha's V rows
        under one-hot P, grouped like O's matrices): the read map; None: no read map
    @mutant_cost_hook   fn(inputs) -> int
        elements the kernel's own mutants materialize (e.g. fmha's q·kᵀ); above diagnose()'s
        max_cost only the generic mutants are tried

No torch at import time.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

_role_names: dict[str, str] = {}  # output name (lower-case) -> role, from the kernels' output_roles


def output_roles(names: Mapping[str, str]) -> None:
    """Declare output names that stand for a role (e.g. fmha's "out" -> "o"); an output's
    role is otherwise its own name, lower-case."""
    _role_names.update({k.lower(): v for k, v in names.items()})


def role_of(output_name: str) -> str | None:
    return _role_names.get(output_name.lower(), output_name.lower())


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


# keyed by (the file it was registered from, its name): two kernels (or two copies of one
# workspace in one process) may each have a mutant of a name
_registry: dict[tuple[str, str], Mutant] = {}


def mutant(
    name: str,
    description: str,
    *,
    outputs: tuple[str, ...] = ("*",),
    dims: tuple[int, ...] = (2, 4),
    family: str = "",
):
    """Register a mutant reference under `name` (a later registration of a name from the same
    file replaces it)."""

    def register(fn):
        try:
            source = str(Path(inspect.getfile(fn)).resolve())
        except (TypeError, OSError):
            source = ""
        _registry[(source, name)] = Mutant(
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
class Matrices:
    """A tensor seen as G matrices: `values` (G, R, C), `back` maps a (G, R, C) tensor to the
    tensor's own shape; `labels` names each matrix (e.g. fmha's "b0h1"); `tile` is the error
    map's tile (rows, cols) within a matrix (default 64 x C, or 128 x 128 when C > 256), and
    `row_label` / `col_label` name a tile's rows / a column group in summaries."""

    values: Any
    back: Callable[[Any], Any]
    labels: list[str] | None = None
    tile: tuple[int, int] | None = None
    row_label: str = ""
    col_label: str = ""


def generic_matrices(t) -> Matrices | None:
    """A 2-D tensor as one matrix; N-D as matrices over its last two axes; None below 2-D."""
    if t.dim() < 2:
        return None
    shape = tuple(t.shape)
    return Matrices(t.reshape(-1, shape[-2], shape[-1]), lambda x: x.reshape(shape))


_view_hooks: dict[tuple[str, str, str], Callable[..., Any]] = {}  # (kind, source, name) -> fn


def _view_hook(kind: str):
    def register(fn):
        try:
            source = str(Path(inspect.getfile(fn)).resolve())
        except (TypeError, OSError):
            source = ""
        _view_hooks[(kind, source, fn.__name__)] = fn
        return fn

    return register


matrices_hook = _view_hook("matrices")
read_source_hook = _view_hook("read_source")
mutant_cost_hook = _view_hook("mutant_cost")


@dataclass
class Views:
    """A kernel's view hooks (see the module docstring), with the generic fallbacks."""

    matrices: list = field(default_factory=list)
    read_source: list = field(default_factory=list)
    mutant_cost: list = field(default_factory=list)

    def as_matrices(self, name: str, t, params=None) -> Matrices | None:
        for fn in self.matrices:
            found = fn(name, t, params)
            if found is not None:
                return found
        return generic_matrices(t)

    def source_rows(self, name: str, inputs, params=None):
        for fn in self.read_source:
            found = fn(name, inputs, params)
            if found is not None:
                return found
        return None

    def cost(self, inputs) -> int | None:
        costs = [fn(inputs) for fn in self.mutant_cost]
        return max(costs) if costs else None


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
    views: Views = field(default_factory=Views)

    def matrices(self, name: str, t) -> Matrices | None:
        """Output `name`'s tensor `t` as matrices, as the kernel's view hooks see it."""
        return self.views.as_matrices(name, t, self.params)

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
