"""The plain-data result of a diagnosis (stored in run.json through to_dict / from_dict).

Every number is a finite float or None (JSON has no inf/NaN); every container is a list
or a dict of plain values, so `json.dumps(diag.to_dict())` always works.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def clean(x: Any) -> Any:
    """Make a value JSON-safe: non-finite floats -> None, tuples -> lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


@dataclass
class Fit:
    """How well a candidate (the reference or a mutant) fits the kernel's output.

    cos: cosine similarity over elements that are ordinary numbers in both;
    rel: ||actual - candidate|| / max(||actual||, ||candidate||) over those elements;
    mismatch: fraction of elements whose class differs (number / NaN-Inf / unwritten);
    score: sqrt(rel² + mismatch), the single number candidates are ranked by (0 = exact).
    """

    cos: float | None = None
    rel: float | None = None
    mismatch: float = 0.0
    score: float | None = None


@dataclass
class Candidate:
    name: str
    description: str
    score: float | None
    cos: float | None
    rel: float | None
    mismatch: float = 0.0
    outputs: dict[str, Fit] = field(default_factory=dict)  # per output it was scored on
    distance_to_reference: float | None = None  # its prediction vs the true reference
    explains: bool = False
    same_as: list[str] = field(default_factory=list)  # mutants with the same prediction here
    also_fits: list[str] = field(default_factory=list)  # different prediction, fits as well
    # outputs where its prediction differs from the reference: the only ones that can be
    # evidence for it (where it equals the reference, a match says nothing about it)
    evidence: list[str] = field(default_factory=list)


@dataclass
class ErrorMap:
    """Per-tile error of one output: tiles of `tile` = (rows, cols) elements. For 4-D
    outputs the columns of the grid are (batch, head) pairs (`col_names`)."""

    output: str
    shape: list[int]
    tile: list[int]
    row_label: str
    col_label: str
    grid: list[list[float | None]]  # max |actual - ref| over ordinary elements of the tile
    bad: list[list[int]]  # elements per tile that are NaN/Inf/unwritten where ref is finite
    ref_max: float
    max_err: float | None
    ok_level: float  # |err| / ref_max at or below this counts as rounding noise
    worst_tile: list[int] = field(default_factory=list)
    col_names: list[str] | None = None
    summary: str = ""
    picture: str | None = None


@dataclass
class ReadMap:
    """For one-hot P: which V row each output row equals, against the row it should be."""

    output: str
    queries: int
    correct: int
    wrong_row: int  # right KV tile, wrong row within it
    wrong_tile: int
    unmatched: int  # equal to no V row (a mixture, NaN, unwritten)
    per_tile: list[dict] = field(default_factory=list)  # per 128-query tile
    confusion: list[list[int]] = field(default_factory=list)  # [expected tile, read tile (-1 none), count]
    examples: list[dict] = field(default_factory=list)
    summary: str = ""
    picture: str | None = None
    kv_tiles: int = 0
    tile_pairs: list[list[int]] = field(default_factory=list)  # [intended KV tile, tile most of its queries read (-1 none)]
    tile_summary: str = ""  # the pairs as a rule, when they are not the identity
    column_map: list[int] | None = None  # O column c holds V column column_map[c] (rows otherwise right)
    column_summary: str = ""


@dataclass
class Evidence:
    """What a failure shows, stated as facts (rendered when no mutant explains it).

    outputs_right: per output of this fixture, whether it matches the reference;
    fixtures: the other fixtures of the same run, per output right or not (empty until the
    whole run is known: see workbench.diagnose.evidence.add_run_evidence);
    reads: what this fixture's read map shows by tile or column; fixture_reads: the same
    for the other fixtures of the run; hints: the kernel's reading of all this (the
    evidence hooks of its folder)."""

    outputs_right: dict[str, bool] = field(default_factory=dict)
    fixtures: dict[str, dict[str, bool]] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)
    fixture_reads: dict[str, list[str]] = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [_right_wrong(self.outputs_right)] if self.outputs_right else []
        if self.fixtures:
            out.append("other fixtures of this run: " + "; ".join(
                f"{name} ({_right_wrong(outs)})" for name, outs in sorted(self.fixtures.items())))
        out += self.reads
        out += [f"{name}: {line}" for name, lines in sorted(self.fixture_reads.items()) for line in lines]
        return out + self.hints


def _right_wrong(outputs: dict[str, bool]) -> str:
    right = [n for n, ok in outputs.items() if ok]
    wrong = [n for n, ok in outputs.items() if not ok]
    if not wrong:
        return "every output right"
    return ", ".join(part for part in (
        f"{', '.join(right)} right" if right else "",
        f"{', '.join(wrong)} wrong",
    ) if part)


@dataclass
class Diagnosis:
    fixture: str
    label: str
    status: str  # "ok" (matches the reference) | "explained" | "unexplained"
    headline: str
    reference: dict[str, Fit] = field(default_factory=dict)
    reference_score: float | None = None
    explanations: list[Candidate] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)  # best few by score
    partial: dict[str, list[Candidate]] = field(default_factory=dict)  # per output, when none explains all
    masked_match: str | None = None  # fits where both hold numbers, but NaN/unwritten differ (two bugs)
    unseen: list[str] = field(default_factory=list)  # mutants this fixture cannot tell from correct
    not_applicable: list[str] = field(default_factory=list)
    error_maps: list[ErrorMap] = field(default_factory=list)
    readmap: ReadMap | None = None
    evidence: Evidence | None = None
    pictures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def best(self) -> Candidate | None:
        return self.explanations[0] if self.explanations else None

    def to_dict(self) -> dict[str, Any]:
        d = clean(asdict(self))
        d["kind"] = "wb.diagnosis/1"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Diagnosis":
        def fit(x):
            return Fit(**_known(Fit, x)) if isinstance(x, dict) else Fit()

        def cand(x):
            c = Candidate(**_known(Candidate, x))
            c.outputs = {k: fit(v) for k, v in (x.get("outputs") or {}).items()}
            return c

        kw = _known(cls, d)
        kw["reference"] = {k: fit(v) for k, v in (d.get("reference") or {}).items()}
        kw["explanations"] = [cand(c) for c in d.get("explanations") or []]
        kw["candidates"] = [cand(c) for c in d.get("candidates") or []]
        kw["partial"] = {k: [cand(c) for c in v] for k, v in (d.get("partial") or {}).items()}
        kw["error_maps"] = [ErrorMap(**_known(ErrorMap, e)) for e in d.get("error_maps") or []]
        rm = d.get("readmap")
        kw["readmap"] = ReadMap(**_known(ReadMap, rm)) if rm else None
        ev = d.get("evidence")
        kw["evidence"] = Evidence(**_known(Evidence, ev)) if ev else None
        return cls(**kw)


def _known(cls, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def as_diagnosis(x: Any) -> Diagnosis | None:
    """A Diagnosis from a Diagnosis or its dict (None for anything else)."""
    if isinstance(x, Diagnosis):
        return x
    if isinstance(x, dict) and "status" in x and "headline" in x:
        return Diagnosis.from_dict(x)
    return None
