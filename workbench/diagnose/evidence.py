"""What a failure shows when no mutant explains it, stated as facts.

    build_evidence(diag, outputs_right, hooks, params, variants)   # one fixture (diagnose)
    add_run_evidence(cases, kernel_dir, params)                     # after every fixture ran

The facts are kernel-agnostic: which outputs of the fixture are right, which outputs of the
run's other fixtures are right, what the read map shows by tile and by column. What they
imply is kernel knowledge: the kernel's evidence hooks (`@evidence_hook` in
stages/<kernel>/evidence*.py) turn them into hints. A hook that raises costs a note, never
the diagnosis.

An output is "right" in a single diagnosis when its fit to the reference scores below
FAIL_MIN (the bar below which the diagnosis names no bug); in add_run_evidence the runner's
own per-output verdict (the tolerance rule) decides, for this fixture and the others.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from workbench.diagnose.catalog import hooks_for
from workbench.diagnose.registry import EvidenceContext
from workbench.diagnose.result import Diagnosis, Evidence, ReadMap, as_diagnosis


def build_evidence(
    diag: Diagnosis,
    outputs_right: Mapping[str, bool],
    hooks: Iterable,
    params: Mapping[str, Any] | None,
    variants: Mapping[str, str] | None,
    fixtures: Mapping[str, Mapping[str, bool]] | None = None,
    fixture_reads: Mapping[str, list[str]] | None = None,
) -> Evidence:

    ev = Evidence(
        outputs_right=dict(outputs_right),
        fixtures={f: dict(o) for f, o in (fixtures or {}).items()},
        reads=read_lines(diag.readmap),
        fixture_reads={f: list(lines) for f, lines in (fixture_reads or {}).items() if lines},
    )
    cx = EvidenceContext(
        fixture=diag.fixture, outputs_right=ev.outputs_right, fixtures=ev.fixtures, readmap=diag.readmap,
        params=params or {}, variants=variants or {},
    )
    for hook in hooks:
        try:
            lines = hook.fn(cx) or []
        except Exception as exc:  # a kernel's hook must not break the diagnosis
            note = f"evidence hook {hook.name} failed: {type(exc).__name__}: {exc}"
            if note not in diag.notes:
                diag.notes.append(note)
            continue
        ev.hints.extend(str(line) for line in lines if str(line) not in ev.hints)
    return ev


def read_lines(readmap: ReadMap | None) -> list[str]:
    if readmap is None:
        return []
    return [line for line in (readmap.tile_summary, readmap.column_summary) if line]


def add_run_evidence(cases: list[dict], kernel_dir=None, params: Mapping[str, Any] | None = None) -> None:
    """After every fixture of a run ran: give each failing case's diagnosis (the dict under
    case["diagnosis"], changed in place) the other fixtures' per-output verdicts and read
    maps, with the kernel's hints rebuilt from them. `cases` are the run's fixture results
    (each with "fixture", "verdict", "outputs": {name: {"verdict": ...}}, "diagnosis").
    Never raises: a failure becomes a note in the diagnosis it concerns."""
    try:

        hooks = hooks_for(kernel_dir)
    except Exception as exc:
        hooks, problem = [], f"evidence hooks not loaded: {type(exc).__name__}: {exc}"
    else:
        problem = None
    verdicts = fixture_outputs(cases)
    diagnosed = [(case, diag) for case in cases if (diag := _diagnosis(case)) is not None]
    reads = {}
    for case, diag in diagnosed:
        if diag.evidence is not None and diag.evidence.reads:
            reads.setdefault(case.get("fixture"), diag.evidence.reads)
    for case, diag in diagnosed:
        if diag.status == "ok":
            continue
        try:
            own = case.get("fixture")
            right = _outputs_right(case) or (diag.evidence.outputs_right if diag.evidence else {})
            others = {f: o for f, o in verdicts.items() if f != own}
            other_reads = {f: r for f, r in reads.items() if f != own}
            diag.evidence = build_evidence(diag, right, hooks, params, case.get("variants"), others, other_reads)
            if problem and problem not in diag.notes:
                diag.notes.append(problem)
        except Exception as exc:
            diag.notes.append(f"run evidence failed: {type(exc).__name__}: {exc}")
        case["diagnosis"] = diag.to_dict()


def fixture_outputs(cases: list[dict]) -> dict[str, dict[str, bool]]:
    """{fixture: {output: right}}: an output is right when the runner passed it on every
    seed of the fixture."""
    table: dict[str, dict[str, bool]] = {}
    for case in cases:
        fixture = case.get("fixture")
        right = _outputs_right(case)
        if not isinstance(fixture, str) or not right:
            continue
        seen = table.setdefault(fixture, {})
        for name, ok in right.items():
            seen[name] = seen.get(name, True) and ok
    return table


def _outputs_right(case: dict) -> dict[str, bool]:
    outputs = case.get("outputs")
    if not isinstance(outputs, dict):
        return {}
    return {str(n): m.get("verdict") == "PASS" for n, m in outputs.items() if isinstance(m, dict)}


def _diagnosis(case: dict) -> Diagnosis | None:

    try:
        return as_diagnosis(case.get("diagnosis"))
    except Exception:  # a diagnosis dict that is not one (e.g. {"error": ...})
        return None
