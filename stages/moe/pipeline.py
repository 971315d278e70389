"""Stage D's host pipeline: routing, plan, two grouped GEMMs, the combine. Plain torch
around the compiled grouped kernel of stage C (stages/moe/stage_c_grouped: compile_grouped,
run_grouped).

    x (T, H), logits (T, E) | topk_ids + topk_weights (T, k), w1 (E, H, 2I), w2 (E, I, H)
      |  route: top-k of the logits, softmax over the k chosen (fp32, on the GPU)
      |  plan:  stages/moe/plan.make_plan -> rows, cu_seqlens, inverse (no host sync)
      v
    h   (R, I)  = act(x[rows[p]] · W1[e(p)])      grouped kernel, gather on, SwiGLU epilogue
    out (R, H)  = h[p] · W2[e(p)]                 the same kernel, gather off, no epilogue
    y   (T, H)  = Σ_j w[t, j] · out[inverse[t, j]]   j = 0..k-1 in order, fp32, then cast

The combine is a gather and a weighted sum in a fixed order (no atomics, no index_add_):
the same inputs give the same bits. Its cost is one read of out (R·H) and k passes over a
(T, H) fp32 accumulator; folding the weights into the down-projection's epilogue would
leave a plain sum (a later speed step).

Bug variants that live here (stage D's ``bug`` variant; the grouped kernel's own bugs pass
through to both GEMMs): topk_weights_skipped (weights taken as 1), topk_weights_twice (each
output multiplied by its weight twice: w²), combine_overwrite (each j stores instead of
adding: the last choice wins).

``run`` takes the grouped launcher as an argument (``launch_grouped`` by default), so the
host side can be checked on a CPU with a torch double of the kernel (tests only).
torch and cutlass are imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

COMBINE_BUGS = ("topk_weights_skipped", "topk_weights_twice", "combine_overwrite")


@dataclass
class Compiled:
    """Stage D's compiled pieces: the two grouped GEMMs (stage_c_grouped.Compiled each) and
    what the launch needs to know."""

    up: Any  # x (T, H) gathered through rows -> h (R, I): activation in the epilogue
    down: Any  # h (R, I) in row order -> out (R, H): no gather, activation none
    h: int
    i: int
    topk: int
    activation: str
    bug: str = "none"
    combine: Any = None  # compiled stages/moe/combine.MoeCombine (variant combine=cute), else torch
    # up_tile=auto: the up-projection with 64-row tiles, used when experts get few rows (FEW_ROWS)
    up_few_rows: Any = None


# Rows per expert (on average) at or below which 64-row up-projection tiles beat 128-row ones:
# an H200 at T = 8192 measured DeepSeek-V3 (256 rows per expert) 354 -> 399 TFLOP/s for the
# whole FFN, gpt-oss-120b (256) even, Qwen3-30B-A3B (512) 384 -> 366 (docs/perf-notes-moe.md).
FEW_ROWS = 256


def route(logits, topk: int):
    """(topk_ids int32, topk_weights fp32): stages/moe/reference.route (the same function, so
    the stage and its reference route identically)."""
    from stages.moe.reference import route as _route

    return _route(logits, topk)


def launch_grouped(piece, a, w, out, rows, cu_seqlens) -> None:
    """Run one compiled grouped GEMM (stage C's run_grouped): out[p] = act(a[rows[p] or p] · w[e(p)])."""
    from stages.moe.stage_c_grouped import run_grouped

    run_grouped(piece, a, w, out, rows, cu_seqlens)


def combine(y, out, inverse, weights, bug: str = "none") -> None:
    """y[t] = Σ_j w[t, j] · out[inverse[t, j]] in fp32, j in order, cast into y (in place).
    ``bug`` one of COMBINE_BUGS changes it as its name says."""
    import torch

    T, k = inverse.shape
    acc = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
    for j in range(k):
        term = torch.index_select(out, 0, inverse[:, j]).float()
        if bug != "topk_weights_skipped":
            wj = weights[:, j:j + 1].float()
            term.mul_(wj)
            if bug == "topk_weights_twice":
                term.mul_(wj)
        if bug == "combine_overwrite":
            acc = term
        else:
            acc.add_(term)
    y.copy_(acc)


def run(
    compiled: Compiled,
    x,
    w1,
    w2,
    y,
    *,
    logits=None,
    topk_ids=None,
    topk_weights=None,
    grouped: Optional[Callable[..., None]] = None,
) -> None:
    """The whole FFN into y (T, H). Routing from logits (top-k = compiled.topk) or given
    topk_ids / topk_weights. ``grouped``: the launcher of one grouped GEMM (default: the
    compiled CuTe kernel through launch_grouped)."""
    import torch

    from stages.moe.plan import make_plan

    grouped = grouped or launch_grouped
    if logits is not None:
        ids, weights = route(logits, compiled.topk)
    else:
        ids, weights = topk_ids, topk_weights
    T, H = x.shape
    E = w1.shape[0]
    check(compiled, x, w1, w2, y, ids, weights)
    plan = make_plan(ids, E)
    R = plan.num_rows
    h = torch.empty((R, compiled.i), dtype=x.dtype, device=x.device)
    out = torch.empty((R, H), dtype=x.dtype, device=x.device)
    up = compiled.up
    if compiled.up_few_rows is not None and R <= FEW_ROWS * E:
        up = compiled.up_few_rows
    grouped(up, x, w1, h, plan.rows, plan.cu_seqlens)
    grouped(compiled.down, h, w2, out, plan.rows, plan.cu_seqlens)
    if compiled.combine is not None:
        from stages.moe.combine import run_combine

        run_combine(compiled.combine, y, out, plan.inverse, weights)  # its bug is compiled in
    else:
        combine(y, out, plan.inverse, weights, compiled.bug if compiled.bug in COMBINE_BUGS else "none")


def check(compiled: Compiled, x, w1, w2, y, ids, weights) -> None:
    """Refuse tensors the compiled kernels do not handle (they do not check): shapes against
    the compiled (h, i), contiguity, one dtype."""
    T, H = x.shape
    problems = []
    if H != compiled.h:
        problems.append(f"x has H={H}, compiled for h={compiled.h}")
    if w1.dim() != 3 or tuple(w1.shape[1:]) != (compiled.h, 2 * compiled.i):
        problems.append(f"w1 {tuple(w1.shape)} is not (E, {compiled.h}, {2 * compiled.i})")
    if w2.dim() != 3 or tuple(w2.shape) != (w1.shape[0], compiled.i, compiled.h):
        problems.append(f"w2 {tuple(w2.shape)} is not ({w1.shape[0]}, {compiled.i}, {compiled.h})")
    if tuple(y.shape) != (T, H):
        problems.append(f"y {tuple(y.shape)} is not ({T}, {H})")
    if ids.dim() != 2 or ids.shape[0] != T or tuple(weights.shape) != tuple(ids.shape):
        problems.append(f"topk_ids {tuple(ids.shape)} / topk_weights {tuple(weights.shape)} are not (T={T}, k)")
    for name, t in (("x", x), ("w1", w1), ("w2", w2), ("y", y)):
        if not t.is_contiguous():
            problems.append(f"{name} is not contiguous")
    if not (x.dtype == w1.dtype == w2.dtype == y.dtype):
        problems.append(f"dtypes differ: x {x.dtype}, w1 {w1.dtype}, w2 {w2.dtype}, y {y.dtype}")
    if problems:
        raise ValueError("moe stage D launch: " + "; ".join(problems))
