"""Diagnostics that explain a failure: mutant references, matching, error maps, pictures.

Entry points (see docs/diagnostics.md):

    run_diagnosis(outputs, expected, inputs, params, variants, fixture, kernel_dir,
                  picture_dir, label) -> dict            # the runner: plain data for run.json
    diagnose(stage_outputs, expected, inputs, params, variants, fixture_name, mutants,
             *, label=None, picture_dir=None) -> Diagnosis
    mutants_for(kernel_dir) -> {name: Mutant}          # generic + the kernel's mutants.py
    add_run_evidence(cases, kernel_dir, params)          # the runner, after every fixture ran
    render_diagnosis(diag, full=False)                   # rich renderable (wb run / wb explain)
    diagnosis_markdown(diag, pictures_relpath=".")      # markdown for report.md
    Diagnosis.to_dict() / Diagnosis.from_dict(d)

    @mutant(name, description, outputs=("o", "lse"), dims=(2, 4))   # register a mutant
    @evidence_hook                                       # fn(EvidenceContext) -> [hint]
    @matrices_hook, @read_source_hook, @mutant_cost_hook # view hooks (registry's docstring)
    views_for(kernel_dir) -> Views                       # the kernel's view hooks

Importing this package is cheap (no torch): submodules import torch inside functions.
"""

from __future__ import annotations

from workbench.diagnose.catalog import all_mutants, hooks_for, load_mutants, mutants_for, views_for
from workbench.diagnose.core import diagnose as _diagnose, run_diagnosis as _run
from workbench.diagnose.evidence import add_run_evidence
from workbench.diagnose.registry import (
    EvidenceContext, Matrices, Mutant, MutantContext, NotApplicable, Pred, Views, evidence_hook, matrices_hook, mutant, mutant_cost_hook,
    output_roles, read_source_hook, role_of,
)
from workbench.diagnose.render import diagnosis_markdown as _md, error_grid_markup as _grid, render_diagnosis as _render
from workbench.diagnose.result import Candidate, Diagnosis, ErrorMap, Evidence, Fit, ReadMap, as_diagnosis

__all__ = [
    "Candidate", "Diagnosis", "ErrorMap", "Evidence", "EvidenceContext", "Fit", "Matrices", "Mutant", "MutantContext",
    "NotApplicable", "Pred", "ReadMap", "Views", "add_run_evidence", "all_mutants", "as_diagnosis", "diagnose",
    "diagnosis_markdown", "error_grid_markup", "evidence_hook", "hooks_for", "load_mutants", "matrices_hook", "mutant",
    "mutant_cost_hook", "mutants_for", "output_roles", "read_source_hook", "render_diagnosis", "role_of", "run_diagnosis",
    "views_for",
]


def diagnose(*args, **kwargs):
    return _diagnose(*args, **kwargs)


diagnose.__doc__ = "See workbench.diagnose.core.diagnose."


def run_diagnosis(*args, **kwargs):
    return _run(*args, **kwargs)


run_diagnosis.__doc__ = "See workbench.diagnose.core.run_diagnosis."


def render_diagnosis(diag, full: bool = False):
    return _render(diag, full=full)


def diagnosis_markdown(diag, pictures_relpath: str = "."):
    return _md(diag, pictures_relpath)


def error_grid_markup(error_map, max_rows: int = 16, max_cols: int = 48) -> str:
    return _grid(error_map, max_rows, max_cols)
