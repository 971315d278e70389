"""Compare a kernel's output with its reference: metrics, poison, and the tolerance rule.

Tolerance rule (after FlashAttention's tests): the kernel's max abs error against the
float32 reference must be at most `factor` times the max abs error of PyTorch's own
computation in the kernel's dtype, plus `atol`, plus (when kernel.yaml sets it, default 0)
`rtol` times each element's |reference|: an fp32 output whose reference is itself fp32 (an
LSE) has no calibration error, and at large magnitudes a fixed atol is a handful of fp32
spacings, below what two summation orders of the same dot products differ by. On top of that an output never passes
when it holds unwritten (poison) elements, NaN/Inf where the reference is finite, or is
all-zero / constant while the reference is not (a constant reference: within the
tolerance; a degenerate output can have any cosine).
"""

from __future__ import annotations

from typing import Any

# Poison bit patterns: NaNs with a payload no arithmetic produces (canonical NaNs are
# 0x7fc00000 / 0x7fc0 / 0x7e00), so "unwritten" is told apart from "computed NaN".
POISON_BITS = {"fp32": 0x7FBADBAD, "bf16": 0x7FAD, "fp16": 0x7DAD, "fp64": 0x7FF4BADBADBADBAD}


def _int_view_dtype(torch, dtype):
    return {
        torch.float32: torch.int32,
        torch.bfloat16: torch.int16,
        torch.float16: torch.int16,
        torch.float64: torch.int64,
    }[dtype]


def _poison_bits(torch, dtype) -> int:
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}[dtype]
    bits = POISON_BITS[name]
    width = torch.iinfo(_int_view_dtype(torch, dtype)).bits
    return bits - (1 << width) if bits >= 1 << (width - 1) else bits  # as a signed integer


def poison(tensor) -> None:
    """Fill `tensor` in place with the poison pattern of its dtype."""
    import torch

    if tensor.dtype.is_floating_point:
        tensor.view(_int_view_dtype(torch, tensor.dtype)).fill_(_poison_bits(torch, tensor.dtype))
    else:
        tensor.fill_(torch.iinfo(tensor.dtype).min)


def unwritten_mask(tensor):
    import torch

    if tensor.dtype.is_floating_point:
        return tensor.view(_int_view_dtype(torch, tensor.dtype)) == _poison_bits(torch, tensor.dtype)
    return tensor == torch.iinfo(tensor.dtype).min


def metrics(out, ref, ref_lowp, tolerance: dict[str, float], poisoned: bool = True) -> dict[str, Any]:
    """All metrics of one output tensor and its verdict (PASS/FAIL with reasons). ``poisoned``:
    False when ``out`` was left as allocated (under initcheck): no element counts as unwritten,
    since leftover bytes of the allocation may happen to match the poison."""
    import torch

    unwritten = unwritten_mask(out) if poisoned else torch.zeros(out.shape, dtype=torch.bool, device=out.device)
    o = out.detach().to(torch.float64)
    r = ref.detach().to(torch.float64)
    lp = ref_lowp.detach().to(torch.float64)
    o = torch.where(unwritten, torch.zeros((), dtype=o.dtype, device=o.device), o)
    ref_finite = torch.isfinite(r)
    nan = int((torch.isnan(o) & ~unwritten).sum())
    inf = int((torch.isinf(o) & ref_finite).sum())
    # Where the reference itself is infinite (e.g. LSE of a fully masked row), matching infinities count as exact.
    same_inf = torch.isinf(o) & torch.isinf(r) & (torch.sign(o) == torch.sign(r))
    valid = torch.isfinite(o) & ref_finite
    diff = torch.where(valid, (o - r).abs(), torch.zeros((), dtype=o.dtype, device=o.device))
    diff = torch.where(same_inf, torch.zeros_like(diff), diff)
    bad_elements = ~(valid | same_inf) | unwritten
    # A NaN in the reference, or an infinity the output does not match, is never a pass: left
    # out of the error above, it let an all-NaN reference pass any output.
    ref_nan = int(torch.isnan(r).sum())
    inf_missed = int((torch.isinf(r) & ~same_inf & ~unwritten).sum())
    max_err = float(diff.max()) if diff.numel() else 0.0
    where = _index_of_max(diff) if diff.numel() else []
    lp_valid = torch.isfinite(lp) & ref_finite
    torch_err = float(torch.where(lp_valid, (lp - r).abs(), torch.zeros_like(diff)).max()) if diff.numel() else 0.0
    tol = tolerance["factor"] * torch_err + tolerance["atol"]
    rtol = float(tolerance.get("rtol", 0.0))
    over = None  # (error, reference) of the element furthest over its allowance
    if rtol and diff.numel():
        excess = torch.where(valid, diff - rtol * r.abs(), torch.zeros((), dtype=o.dtype, device=o.device))
        worst = _index_of_max(excess)
        if float(excess[tuple(worst)]) > tol:
            over = (float(diff[tuple(worst)]), float(r[tuple(worst)]))
    elif max_err > tol:
        over = (max_err, None)
    of, rf = torch.where(valid, o, 0).flatten(), torch.where(valid, r, 0).flatten()
    denom = float(of.norm() * rf.norm())
    cos = float((of @ rf) / denom) if denom > 0 else (1.0 if float(of.norm()) == float(rf.norm()) == 0 else 0.0)
    rnorm = float(rf.norm())
    rel_l2 = float((of - rf).norm() / rnorm) if rnorm > 0 else float((of - rf).norm())

    reasons = []
    n_unwritten = int(unwritten.sum())
    if n_unwritten:
        reasons.append(f"{n_unwritten} element(s) never written")
    if nan:
        reasons.append(f"{nan} NaN")
    if inf:
        reasons.append(f"{inf} Inf where the reference is finite")
    if ref_nan:
        reasons.append(f"{ref_nan} NaN in the reference itself (a broken reference, or inputs it cannot take)")
    if inf_missed:
        reasons.append(f"{inf_missed} element(s) where the reference is ±Inf and the output is not that Inf")
    if over and rtol:
        reasons.append(f"error {over[0]:.3g} at a reference of {over[1]:.6g} > tolerance {tol:.3g} + {rtol:.3g}·|ref|")
    elif over:
        reasons.append(f"max error {max_err:.3g} > tolerance {tol:.3g}")
    degenerate = _degenerate(o[~bad_elements], r[~bad_elements], tol)
    if degenerate:
        reasons.append(degenerate)
    return {
        "verdict": "FAIL" if reasons else "PASS",
        "reasons": reasons,
        "shape": list(out.shape),
        "dtype": str(out.dtype).replace("torch.", ""),
        "cos": cos,
        "rel_l2": rel_l2,
        "max_abs_err": max_err,
        "max_err_at": where,
        "out_at_max": float(o[tuple(where)]) if where else None,
        "ref_at_max": float(r[tuple(where)]) if where else None,
        "tolerance": tol,
        "rtol": rtol,
        "torch_lowp_err": torch_err,
        "nan": nan,
        "inf": inf,
        "unwritten": n_unwritten,
        "elements": out.numel(),
    }


def _index_of_max(diff) -> list[int]:
    flat = int(diff.flatten().argmax())
    index = []
    for size in reversed(diff.shape):
        index.append(flat % size)
        flat //= size
    return list(reversed(index))


def _degenerate(o, r, tol: float) -> str | None:
    """Why an output is degenerate (all zero / constant) when the reference is not.

    An all-zero output passes only an all-zero reference. A constant output passes only
    when the reference itself is that constant within the tolerance: the fp32 reference
    of ones-v is 1 +- a few ulp of accumulated rounding (6e-6 at n = 8192), and a kernel
    that writes exactly 1.0 everywhere is right."""
    if o.numel() < 2:
        return None
    if bool((o == 0).all()):
        return None if bool((r == 0).all()) else "output is all zero"
    if bool((o == o.flatten()[0]).all()) and float(r.max() - r.min()) > tol:
        return f"output is constant ({float(o.flatten()[0]):.4g})"
    return None


def fixture_verdict(outputs: dict[str, dict[str, Any]]) -> str:
    return "PASS" if all(m["verdict"] == "PASS" for m in outputs.values()) else "FAIL"


_INT_OF_SIZE = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


def bit_differences(a, b) -> int:
    """Elements of ``a`` and ``b`` (same shape and dtype) whose bits differ (NaN == NaN when
    the bits are the same; -0.0 != 0.0): wb run --exported, and --trace's traced build."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return max(a.numel(), b.numel())
    as_int = getattr(torch, _INT_OF_SIZE[a.element_size()])
    return int((a.contiguous().view(as_int) != b.contiguous().view(as_int)).sum())
