"""diagnose(): score mutant references against a kernel's actual output.

Every candidate (the true reference, each applicable mutant) is compared with the kernel's
output element class by element class:

  class 0: an ordinary number; class 1: NaN/Inf; class 2: never written (poison pattern,
  see workbench.compare.unwritten_mask).

  mismatch = fraction of elements whose class differs
  cos      = cosine similarity over elements of class 0 in both (float64)
  rel      = ||actual - candidate|| / max(||actual||, ||candidate||) over the same elements
  score    = sqrt(rel² + mismatch)  per output; a candidate's score is its worst output.

Thresholds (module constants, recorded in every Diagnosis):

  FAIL_MIN  = max(0.01, 4·eps(dtype))   The reference must fit worse than this before any
              bug is named. Correct bf16 kernels score ~0.002-0.006 (a few ulps of 2^-8);
              4·eps = 0.0156 for bf16, 0.0039 -> 0.01 for fp16 and fp32. Each output is
              held to its own dtype's (an fp32 LSE off by 1.4% fails beside a bf16 O).
  FIT_MAX   = 0.05   A mutant explains only if it fits this well: ~10x the bf16 noise, so a
              buggy bf16 kernel still matches its model, while two different bugs rarely do.
  RATIO     = 0.25   ... and at least 4x better than the true reference.
  DISTINCT  = 0.02   A mutant whose prediction is closer than this to the reference cannot
              be seen by the fixture ("unseen"; for an fp16 or fp32 output, scaled like
              FAIL_MIN: 0.0128, distinct_for); two mutants closer than this to each other
              are "the same" on this fixture and are reported together.
  TIE       = 1.5·best + 0.003: explaining mutants with a different prediction scoring
              within this of the best are reported as "also fits".

Evidence rule: a mutant is named only on outputs where its prediction differs from the
reference (by DISTINCT or more): where it equals the reference, a match is no evidence for
it (every mutant shares the correct outputs with the reference). Where both the kernel and
a mutant hold numbers on only part of an output ("it matches X where both hold numbers, plus
a second bug"), that part must cover MASKED_SHARE of the output and the mutant must differ
from the reference there. When no mutant explains the failure, the diagnosis states the
evidence instead (workbench/diagnose/evidence.py).
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from workbench.compare import unwritten_mask
from workbench.diagnose.catalog import hooks_for, mutants_for, views_for
from workbench.diagnose import pictures
from workbench.diagnose.errormap import error_map
from workbench.diagnose.evidence import build_evidence
from workbench.diagnose.readmap import read_map
from workbench.diagnose.registry import Mutant, MutantContext, NotApplicable, Pred, Views, role_of
from workbench.diagnose.result import Candidate, Diagnosis, Fit

FIT_MAX = 0.05
RATIO = 0.25
DISTINCT = 0.02
FAIL_FLOOR = 0.01
TIE_FACTOR, TIE_SLACK = 1.5, 0.003
NEAR = 2 * FIT_MAX  # a non-explaining mutant is named as "closest" only when it fits this well
MASKED_SHARE = 0.1
TOP = 8

EPS = {"bfloat16": 2.0**-8, "float16": 2.0**-10, "float32": 2.0**-23, "float64": 2.0**-52}


def eps_of(t) -> float:
    return EPS.get(str(t.dtype).replace("torch.", ""), 2.0**-23)


def fail_min(eps: float) -> float:
    return max(FAIL_FLOOR, 4 * eps)


def distinct_for(t) -> float:
    """DISTINCT for an output of ``t``'s dtype: bf16's 0.02, scaled with the failure threshold
    for a finer dtype (fp16, fp32: 0.0128), so a bug that fails an fp32 output is not called
    unseen because its error is below bf16's."""
    return DISTINCT * fail_min(eps_of(t)) / fail_min(2.0**-8)


# --------------------------------------------------------------------------------------
# element classes and fits
# --------------------------------------------------------------------------------------
def classify_actual(t, poisoned: bool = True):
    """(float64 values with specials zeroed, int8 classes) of a kernel output. ``poisoned``:
    False when the output was left as allocated (under initcheck): no element is classed as
    unwritten, since leftover bytes may happen to match the poison (compare.metrics too)."""

    unwritten = None
    if poisoned and t.dtype.is_floating_point:
        try:
            unwritten = unwritten_mask(t)
        except Exception:  # the dtype has no poison pattern
            unwritten = None
    return classify(t, unwritten)


def classify(values, unwritten=None):
    import torch

    v = values.detach().to(torch.float64, copy=True)
    cls = torch.zeros(v.shape, dtype=torch.int8, device=v.device)
    # isfinite is slow on the CPU; a finite float64 sum means every element is finite (a sum
    # of bf16/fp16/fp32 values cannot overflow float64; an overflowing one takes the slow path)
    if not math.isfinite(float(v.sum())):
        cls[~torch.isfinite(v)] = 1
    if unwritten is not None:
        cls[unwritten.to(v.device)] = 2
    if _any_special(cls):
        v = torch.where(cls == 0, v, torch.zeros_like(v))
    return v, cls


def fit(a_vals, a_cls, c_vals, c_cls, care=None, chunk: int = 1 << 22) -> Fit:
    """Fit of candidate c to actual a (both as from classify); see the module docstring."""
    import torch

    a_vals, a_cls, c_vals, c_cls = (x.reshape(-1) for x in (a_vals, a_cls, c_vals, c_cls))
    care = None if care is None else care.reshape(-1)
    zero = torch.zeros((), dtype=torch.float64, device=a_vals.device)
    dot = na = nc = nd = 0.0
    mism = total = 0
    for s in range(0, a_vals.numel(), chunk):
        sl = slice(s, s + chunk)
        ac, cc = a_cls[sl], c_cls[sl]
        k = None if care is None else care[sl]
        a_special, c_special = _any_special(ac), _any_special(cc)
        total += ac.numel() if k is None else int(k.sum())
        if a_special or c_special or k is not None:
            diff = ac != cc
            mism += int((diff if k is None else diff & k).sum())
        # classify zeroed each side where its own class is not 0: mask it only where the
        # other side's is not (or care is off)
        a, c = a_vals[sl], c_vals[sl].to(torch.float64)
        if c_special or k is not None:
            a = torch.where(_ordinary(cc, k), a, zero)
        if a_special or k is not None:
            c = torch.where(_ordinary(ac, k), c, zero)
        dot += float(a @ c)
        na += float(a @ a)
        nc += float(c @ c)
        d = a - c
        nd += float(d @ d)
    na, nc, nd = math.sqrt(na), math.sqrt(nc), math.sqrt(nd)
    denom = max(na, nc)
    rel = nd / denom if denom > 0 else 0.0
    if na > 0 and nc > 0:
        cos = max(-1.0, min(1.0, dot / (na * nc)))
    else:
        cos = 1.0 if na == nc else 0.0
    mismatch = mism / total if total else 0.0
    return Fit(cos=cos, rel=rel, mismatch=mismatch, score=math.sqrt(rel * rel + mismatch))


def _any_special(cls) -> bool:
    """Whether any element is of class 1 or 2 (max() is much cheaper than any() on int8)."""
    return cls.numel() > 0 and int(cls.max()) > 0


def _ordinary(cls, care=None):
    """Mask of the elements of class 0 (and in care)."""
    return cls == 0 if care is None else (cls == 0) & care


def _as_pred(x) -> Pred:
    return x if isinstance(x, Pred) else Pred(values=x)


def _pred_classes(pred: Pred, shape, device):

    values = pred.values
    if tuple(values.shape) != tuple(shape):
        raise ValueError(f"predicted shape {tuple(values.shape)} != output shape {tuple(shape)}")
    unw = pred.unwritten
    if unw is not None:
        unw = unw.to(device).expand(shape)
    v, cls = classify(values.to(device), unw)
    care = None if pred.care is None else pred.care.to(device).expand(shape)
    return v, cls, care


# --------------------------------------------------------------------------------------
# diagnose
# --------------------------------------------------------------------------------------
def _resolve_mutants(mutants) -> list[Mutant]:

    if mutants is None:
        mutants = mutants_for(None)
    if isinstance(mutants, Mapping):
        mutants = list(mutants.values())
    return sorted(mutants, key=lambda m: (m.generic, m.name))


def _fmt_fit(f: Fit) -> str:
    return f"cos {f.cos:.5f}, rel {f.rel:.3g}" + (f", {f.mismatch:.1%} NaN/unwritten mismatch" if f.mismatch else "")


def diagnose(
    stage_outputs: Mapping[str, Any],
    expected: Mapping[str, Any],
    inputs: Mapping[str, Any],
    params: Mapping[str, Any],
    variants: Mapping[str, str],
    fixture_name: str,
    mutants: Mapping[str, Mutant] | Iterable[Mutant] | None = None,
    *,
    label: str | None = None,
    picture_dir: str | Path | None = None,
    time_budget_s: float = 30.0,
    max_cost: int = 1 << 28,
    prediction_cache: dict | None = None,
    force: bool = False,
    hooks: Iterable | None = None,
    views: Views | None = None,
    poisoned: bool = True,
) -> Diagnosis:
    """Explain a kernel's outputs: rank mutant references by how well they reproduce them.

    stage_outputs: the kernel's outputs (poison where unwritten; ``poisoned=False``: left
    as allocated, so nothing reads as unwritten -- the worker under initcheck); expected: the true
    reference (same names); mutants: a registry (e.g. mutants_for(kernel_dir)) or None for
    the generic ones. picture_dir: write PNG error maps (and the read map) there; the
    Diagnosis lists them relative to picture_dir. label names the case in file names
    (default: the fixture name). Mutants stop being tried after time_budget_s, and the
    kernel's own are skipped when its mutant_cost hook says they would materialize more than
    max_cost elements (e.g. fmha's q·kᵀ). prediction_cache: a
    dict reused across calls WITH THE SAME inputs and expected outputs (sweeps, tests):
    mutant predictions are computed once. force: try the mutants even when the output
    matches the reference (explanations still need RATIO and FIT_MAX). hooks, views: the
    kernel's evidence hooks and view hooks (default: those of the folders the given mutants
    come from).
    """

    t0 = time.perf_counter()
    mlist = _resolve_mutants(mutants)
    views = _views_of(mlist) if views is None else views
    label = label or fixture_name
    names = [n for n in stage_outputs if n in expected]
    diag = Diagnosis(fixture=fixture_name, label=label, status="ok", headline="")
    pdir = Path(picture_dir) if picture_dir is not None else None
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in label)

    actual, refc, eps = {}, {}, 0.0
    own_fail_min = {}  # each output against its own dtype's threshold (an fp32 LSE is not judged by bf16 O's)
    for n in names:
        a = stage_outputs[n]
        actual[n] = classify_actual(a, poisoned)
        r = expected[n]
        refc[n] = classify(r.to(a.device))
        eps = max(eps, eps_of(a))
        own_fail_min[n] = fail_min(eps_of(a))
    fmins = {n: 0.0 if force else f for n, f in own_fail_min.items()}
    fmin = 0.0 if force else fail_min(eps)
    diag.thresholds = {"fail_min": fmin, "fit_max": FIT_MAX, "ratio": RATIO, "distinct": DISTINCT}
    if len(set(fmins.values())) > 1:
        diag.thresholds["fail_min_by_output"] = fmins

    for n in names:
        diag.reference[n] = fit(*actual[n], *refc[n])
    diag.reference_score = max((f.score for f in diag.reference.values()), default=0.0)
    fails = [n for n in names if diag.reference[n].score >= fmins[n]]

    # error maps and pictures
    if pdir is not None and not pictures.available():
        diag.notes.append(f"no pictures: {pictures.INSTALL} draws them")
    for n in names:
        emap, drawing = error_map(n, actual[n][0], actual[n][1], refc[n][0], refc[n][1], eps_of(stage_outputs[n]), params, views)
        if pdir is not None and pictures.available():
            try:
                path = pictures.draw_error_map(
                    pdir / f"{stem}-{n}-error.png", drawing, title=f"{n}: {emap.summary}", row_label=emap.row_label,
                    col_label=emap.col_label, col_names=emap.col_names,
                )
                emap.picture = path.name
                diag.pictures.append(path.name)
            except Exception as exc:  # a picture must never break the diagnosis
                diag.notes.append(f"error picture of {n} failed: {type(exc).__name__}: {exc}")
        diag.error_maps.append(emap)

    # read map (the kernel's read_source hook: e.g. fmha's one-hot P, which V row each query read)
    for n in names:
        try:
            source = views.source_rows(n, inputs, params)
            if source is None:
                continue
            got, want = views.as_matrices(n, stage_outputs[n], params), views.as_matrices(n, expected[n], params)
            pic = pdir / f"{stem}-{n}-readmap.png" if pdir is not None else None
            rm = read_map(n, got.values, want.values, source, got.labels, picture=pic)
            if rm is not None:
                diag.readmap = rm
                if rm.picture:
                    diag.pictures.append(rm.picture)
        except Exception as exc:
            diag.notes.append(f"read map failed: {type(exc).__name__}: {exc}")
        break

    if not fails:
        diag.status = "ok"
        worst = max(names, key=lambda k: diag.reference[k].score) if names else None
        diag.headline = (
            f"output matches the reference ({_fmt_fit(diag.reference[worst])}): no bug to explain"
            if worst else "no outputs to compare"
        )
        if any(f.mismatch for f in diag.reference.values()):
            diag.headline += "; but some elements are NaN/Inf/unwritten (see the error map)"
        diag.seconds = time.perf_counter() - t0
        return diag

    # mutants
    first = next((t for t in inputs.values() if hasattr(t, "dim")), None)
    rank = first.dim() if first is not None else max((stage_outputs[n].dim() for n in names), default=2)
    cost = views.cost(inputs)
    too_big = cost is not None and cost > max_cost
    exp_f = {n: expected[n].to(stage_outputs[n].device).float() for n in names}
    cx = MutantContext(inputs=inputs, expected=exp_f, params=params, variants=variants, fixture=fixture_name, views=views)
    preds_kept: dict[str, dict] = {}
    masked_support: dict[str, list[str]] = {}
    cands: list[Candidate] = []
    generic = {m.name: m.generic for m in mlist}
    for m in mlist:
        if rank not in m.dims or not any(m.predicts(role_of(n)) or "*" in m.outputs for n in names):
            diag.not_applicable.append(m.name)
            continue
        if too_big and not m.generic:
            diag.not_applicable.append(m.name)
            continue
        if time.perf_counter() - t0 > time_budget_s:
            diag.notes.append(f"time budget ({time_budget_s:.0f} s) spent: mutant {m.name} and later ones not tried")
            break
        entry = prediction_cache.get(m.name) if prediction_cache is not None else None
        if entry is None:
            entry = _predict(m, cx, names, stage_outputs, refc, diag.notes)
            if prediction_cache is not None:
                prediction_cache[m.name] = entry
        kind, preds, dist, out_dist = entry
        if kind == "failed":
            continue
        if kind == "n/a":
            diag.not_applicable.append(m.name)
            continue
        if kind == "unseen":
            diag.unseen.append(m.name)
            continue
        per = {}
        for n in names:
            if n in preds:
                v, c, care = preds[n]
                per[n] = fit(*actual[n], v, c, care=care)
            else:
                per[n] = diag.reference[n]
        worst = max(per.values(), key=lambda f: f.score)
        cand = Candidate(
            name=m.name, description=m.description, score=worst.score, cos=min(f.cos for f in per.values()),
            rel=max(f.rel for f in per.values()), mismatch=max(f.mismatch for f in per.values()),
            outputs=per, distance_to_reference=dist,
            evidence=[n for n in names if out_dist.get(n, 0.0) >= distinct_for(stage_outputs[n])],
        )
        cands.append(cand)
        if cand.score <= FIT_MAX or any(f.score <= FIT_MAX for f in per.values()):
            preds_kept[m.name] = preds
        if cand.mismatch > 0 and cand.rel <= FIT_MAX:
            support = _masked_support(actual, preds, refc, names, stage_outputs)
            if support:
                masked_support[m.name] = support
    if prediction_cache is not None:
        saved = prediction_cache.setdefault("__notes__", [])
        saved.extend(n for n in cx.notes if n not in saved)
        cx.notes[:] = saved
    if too_big:
        diag.notes.append(f"the kernel's mutants would materialize {cost} elements (more than {max_cost}): only generic mutants were tried; rerun smaller for a full diagnosis")
    diag.notes.extend(cx.notes)

    cands.sort(key=lambda c: (c.score, c.name))
    ref_score = diag.reference_score
    for c in cands:
        c.explains = c.score <= FIT_MAX and c.score <= RATIO * ref_score and bool(c.evidence)
    expl = [c for c in cands if c.explains]
    if expl:
        best = expl[0]
        for c in expl[1:]:
            d = _pred_distance(preds_kept.get(best.name, {}), preds_kept.get(c.name, {}), refc, names)
            if d < DISTINCT:
                best.same_as.append(c.name)
            elif c.score <= TIE_FACTOR * best.score + TIE_SLACK:
                best.also_fits.append(c.name)
        # twins (same prediction here): lead with a kernel-specific one, it says more
        group = [best] + [c for c in expl if c.name in best.same_as]
        group.sort(key=lambda c: (generic.get(c.name, True), c.score, c.name))
        lead = group[0]
        for c in group:
            c.same_as = [g.name for g in group if g is not c]
        lead.also_fits, best.also_fits = best.also_fits, ([] if lead is not best else best.also_fits)
        expl = group + [c for c in expl if c not in group]
    diag.explanations = expl
    diag.candidates = cands[:TOP]

    if expl:
        diag.status = "explained"
        best = expl[0]
        outs = ", ".join(best.evidence)
        worst_ref = max(names, key=lambda k: diag.reference[k].score)
        diag.headline = (
            f"{outs} match{'es' if ',' not in outs else ''} '{best.name}': {best.description} "
            f"(cos {best.cos:.5f}, rel {best.rel:.2g}); the true reference gives cos "
            f"{diag.reference[worst_ref].cos:.4g} (rel {diag.reference[worst_ref].rel:.2g}"
            + (f", {diag.reference[worst_ref].mismatch:.0%} NaN/unwritten mismatch" if diag.reference[worst_ref].mismatch else "")
            + ")"
        )
        if best.same_as:
            diag.headline += f"; indistinguishable here from {', '.join(repr(s) for s in best.same_as)}"
        if best.also_fits:
            diag.headline += f"; also fits: {', '.join(repr(s) for s in best.also_fits)}"
    else:
        diag.status = "unexplained"
        # per output: a mutant that explains that output alone
        for n in names:
            rf = diag.reference[n]
            if n not in fails:
                continue
            good = [c for c in cands if n in c.evidence and n in preds_kept.get(c.name, {})
                    and c.outputs[n].score <= FIT_MAX and c.outputs[n].score <= RATIO * rf.score]
            good.sort(key=lambda c: c.outputs[n].score)
            if good:
                diag.partial[n] = good[:3]
        worst_ref = max(names, key=lambda k: diag.reference[k].score)
        head = f"no known bug explains it (reference: {_fmt_fit(diag.reference[worst_ref])} on {worst_ref})"
        if diag.partial:
            head += "; but " + "; ".join(
                f"{n} alone matches '{v[0].name}' (cos {v[0].outputs[n].cos:.5f})" for n, v in diag.partial.items()
            )
        masked = [c for c in cands if c.name in masked_support]
        near = [c for c in cands if c.evidence and c.score <= NEAR and c.score <= RATIO * ref_score]
        if masked:
            c = masked[0]
            diag.masked_match = c.name
            head += (
                f"; where both hold numbers {', '.join(masked_support[c.name])} match '{c.name}' (cos {c.cos:.5f}, "
                f"rel {c.rel:.2g}) but {c.mismatch:.1%} of the elements are NaN/unwritten in one and not the other: "
                f"'{c.name}' plus a second bug (see the error map)"
            )
        elif not diag.partial and near:
            c = near[0]
            head += f"; closest: '{c.name}' (score {c.score:.2g}: cos {c.cos:.4f}, rel {c.rel:.2g}" + (
                f", {c.mismatch:.1%} NaN/unwritten mismatch" if c.mismatch else "") + ")"
        bad_maps = [e for e in diag.error_maps if e.output == worst_ref]
        if bad_maps:
            head += f"; {bad_maps[0].output}: {bad_maps[0].summary}"
        diag.headline = head
    right = {n: diag.reference[n].score < own_fail_min[n] for n in names}
    diag.evidence = build_evidence(diag, right, _hooks_of(mlist) if hooks is None else hooks, params, variants)
    diag.seconds = time.perf_counter() - t0
    return diag


def _folders(mutants: list[Mutant]) -> list[str]:
    return sorted({_folder_of(m.source) for m in mutants if m.source and not m.generic})


@functools.lru_cache(maxsize=None)
def _folder_of(source: str) -> str:
    return str(Path(source).parent)  # Path parsing, for every mutant of every diagnosis, adds up


def _hooks_of(mutants: list[Mutant]) -> list:
    return [h for folder in _folders(mutants) for h in hooks_for(folder)]


def _views_of(mutants: list[Mutant]) -> Views:
    views = Views()
    for folder in _folders(mutants):
        found = views_for(folder)
        for kind in ("matrices", "read_source", "mutant_cost"):
            getattr(views, kind).extend(getattr(found, kind))
    return views


def _masked_support(actual, preds, refc, names, stage_outputs) -> list[str]:
    """Outputs on which a mutant, where it and the kernel both hold numbers, matches the
    kernel AND differs from the reference; [] when any output contradicts it there."""
    support = []
    for n in names:
        if n not in preds:
            continue
        v, c, care = preds[n]
        av, ac = actual[n]
        both = (ac == 0) & (c == 0)
        if care is not None:
            both &= care
        if int(both.sum()) < MASKED_SHARE * both.numel():
            continue
        to_kernel = fit(av, ac, v, c, care=both)
        if to_kernel.rel > FIT_MAX:
            return []
        to_reference = fit(v, c, *refc[n], care=both)
        kernel_to_reference = fit(av, ac, *refc[n], care=both)
        if to_reference.rel >= distinct_for(stage_outputs[n]) and to_kernel.rel <= RATIO * kernel_to_reference.rel:
            support.append(n)
    return support


def _predict(m: Mutant, cx, names, stage_outputs, refc, notes):
    """("ok" | "n/a" | "unseen" | "failed", {name: (values, classes, care)}, distance to ref)."""
    try:
        res = m.fn(cx)
    except NotApplicable:
        return ("n/a", {}, None, {})
    except Exception as exc:
        notes.append(f"mutant {m.name} failed: {type(exc).__name__}: {exc}")
        return ("failed", {}, None, {})
    preds = {}
    for n in names:
        if res and n in res and res[n] is not None and (m.predicts(role_of(n)) or "*" in m.outputs):
            try:
                preds[n] = _pred_classes(_as_pred(res[n]), stage_outputs[n].shape, stage_outputs[n].device)
            except ValueError as exc:
                notes.append(f"mutant {m.name}: {n}: {exc}")
    if not preds:
        return ("n/a", {}, None, {})
    out_dist = {n: fit(v, c, *refc[n], care=care).score for n, (v, c, care) in preds.items()}
    dist = max(out_dist.values())
    seen = any(d >= distinct_for(stage_outputs[n]) for n, d in out_dist.items())
    return ("ok" if seen else "unseen", preds, dist, out_dist)


def _pred_distance(pa: dict, pb: dict, refc: dict, names) -> float:
    """Worst per-output score between two mutants' predictions (missing outputs = reference)."""
    worst = 0.0
    for n in names:
        a = pa.get(n)
        b = pb.get(n)
        if a is None and b is None:
            continue
        av, ac, acare = a if a is not None else (*refc[n], None)
        bv, bc, bcare = b if b is not None else (*refc[n], None)
        care = acare if bcare is None else (bcare if acare is None else acare & bcare)
        worst = max(worst, fit(av, ac, bv, bc, care=care).score)
    return worst


def run_diagnosis(
    outputs,
    expected,
    inputs,
    params,
    variants,
    fixture: str,
    kernel_dir=None,
    picture_dir=None,
    label: str | None = None,
    **kwargs,
) -> dict:
    """The runner's entry point: load the kernel's mutants, diagnose, return the plain dict
    for run.json (pictures go to picture_dir/pictures/, named relative to picture_dir)."""

    mutants = mutants_for(kernel_dir)
    kwargs.setdefault("hooks", hooks_for(kernel_dir))
    kwargs.setdefault("views", views_for(kernel_dir))
    pdir = Path(picture_dir) / "pictures" if picture_dir is not None else None
    diag = diagnose(outputs, expected, inputs, params, variants, fixture, mutants, label=label, picture_dir=pdir, **kwargs)
    if pdir is not None:
        diag.pictures = [f"pictures/{p}" for p in diag.pictures]
        for e in diag.error_maps:
            if e.picture:
                e.picture = f"pictures/{e.picture}"
        if diag.readmap and diag.readmap.picture:
            diag.readmap.picture = f"pictures/{diag.readmap.picture}"
    return diag.to_dict()
