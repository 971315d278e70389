"""PyTorch references of the MoE stages (the truth a kernel is compared with).

Every function computes in ``compute_dtype`` the way PyTorch would (matmul in that dtype,
fp32 accumulation inside cuBLAS for 16-bit types) and returns that dtype; wb calls it once
with torch.float32 (the reference) and once with the kernel's dtype (which calibrates the
tolerance, see workbench.compare). W1 is interleaved (stages/moe/layout.py): column 2i is
gate_i, 2i + 1 is up_i.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

#: gpt-oss's SwiGLU constants (gate clamp, up clamp, sigmoid slope)
GPTOSS_LIMIT = 7.0
GPTOSS_ALPHA = 1.702

ACTIVATIONS = ("swiglu", "identity", "gptoss")


def gemm(x, w, dtype):
    """x (M, K) @ w (K, N) computed in ``dtype``."""
    return x.to(dtype) @ w.to(dtype)


def swiglu(gate, up):
    """silu(gate) * up = gate * sigmoid(gate) * up."""
    import torch

    return torch.nn.functional.silu(gate) * up


def gptoss_swiglu(gate, up, limit: float = GPTOSS_LIMIT, alpha: float = GPTOSS_ALPHA):
    """gpt-oss: g = min(gate, limit), u = clamp(up, -limit, limit); g * sigmoid(alpha g) * (u + 1)."""
    import torch

    g = gate.clamp(max=limit)
    u = up.clamp(min=-limit, max=limit)
    return g * torch.sigmoid(alpha * g) * (u + 1)


def activate(d, activation: str):
    """The epilogue on an interleaved (M, 2I) product: swiglu / gptoss -> (M, I); identity -> d."""
    if activation == "identity":
        return d
    gate, up = d[..., 0::2], d[..., 1::2]
    if activation == "swiglu":
        return swiglu(gate, up)
    if activation == "gptoss":
        return gptoss_swiglu(gate, up)
    raise ValueError(f"unknown activation {activation!r} (one of {', '.join(ACTIVATIONS)})")


def up_projection(x, w1, activation: str, dtype):
    """One expert's up-projection with its activation: act(x @ w1) in ``dtype``.

    The product is taken in ``dtype`` (what a 16-bit PyTorch pipeline stores between the
    GEMM and the activation) and the activation runs in fp32 on it, as the kernel does on
    its fp32 accumulator; the result is returned in ``dtype``."""
    import torch

    d = gemm(x, w1, dtype)
    return activate(d.to(torch.float32), activation).to(dtype)


# ======================================================================================
# Routing, grouped GEMM, combine and the full FFN (stage D; the plan is stages/moe/plan.py)
#
# Precision. ``compute_dtype`` float32 (or float64): the true reference, every step in that
# dtype from the upcast inputs. The kernel's dtype (bf16 / fp16): PyTorch rounding exactly
# where the kernels round, so the tolerance (compare.py: factor x this error) is calibrated
# on the kernels' own rounding points:
#   up-projection   fp32 accumulate of dtype inputs, activation in fp32 on the accumulator,
#                   h stored in dtype (R, I)                       <- rounding 1
#   down-projection fp32 accumulate of h·W2[e], stored in dtype (R, H) <- rounding 2
#                   (the grouped kernel writes its output in the kernel dtype; the combine
#                   reads it back)
#   combine         y[t] = Σ_j w[t, j] · out[pos(t, j)] in fp32 over j = 0..k-1 in order,
#                   cast to dtype                                   <- rounding 3
# Routing weights stay fp32 in both. Deterministic: fixed loop orders, no atomics; TF32 off.
# ======================================================================================
@contextlib.contextmanager
def _no_tf32():
    import torch

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def route(logits: "torch.Tensor", topk: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """Router: (topk_ids (T, k) int32, topk_weights (T, k) float32).

    The k largest logits per token (torch.topk, descending; ties go to the lower expert
    index as torch.topk orders them on that device), then a softmax over those k logits
    only, in fp32. This is Mixtral's router and Qwen3-MoE's with norm_topk_prob (softmax
    over all E, top-k, renormalise: the same numbers), and gpt-oss's. DeepSeek-V3's
    sigmoid + group-limited routing is not modelled: give its top-k with routing=given."""
    import torch

    vals, ids = torch.topk(logits.float(), topk, dim=-1)
    return ids.to(torch.int32), torch.softmax(vals, dim=-1)


def grouped_mm(
    a: "torch.Tensor",
    w: "torch.Tensor",
    cu_seqlens: "torch.Tensor",
    compute_dtype: "torch.dtype",
    *,
    rows: Optional["torch.Tensor"] = None,
    activation: str = "none",
) -> "torch.Tensor":
    """out[p] = act(a[rows[p]] · w[e]) for every sorted row p of expert e
    (cu_seqlens[e] <= p < cu_seqlens[e + 1]); rows None: a's rows are already sorted.

    a (T or R, K), w (E, K, N), out (R, N or N/2) in compute_dtype: accumulated in fp32 (or
    float64 when compute_dtype is), activation on the accumulator, then rounded to
    compute_dtype (see the precision notes above). Rows of no expert (none: cu_seqlens ends
    at R) do not exist. Empty experts cost nothing."""
    import torch

    acc = torch.float64 if compute_dtype == torch.float64 else torch.float32
    cu = [int(c) for c in cu_seqlens.tolist()]
    R = cu[-1]
    if activation == "none":  # the down-projection: no epilogue
        activation = "identity"
    N = w.shape[-1] // (2 if activation in ("swiglu", "gptoss") else 1)
    out = torch.empty((R, N), dtype=compute_dtype, device=a.device)
    a = a.to(compute_dtype)
    with _no_tf32():
        for e in range(w.shape[0]):
            lo, hi = cu[e], cu[e + 1]
            if hi == lo:
                continue
            ae = a[rows[lo:hi].long()] if rows is not None else a[lo:hi]
            we = w[e].to(compute_dtype)
            d = ae.to(acc) @ we.to(acc)
            out[lo:hi] = activate(d, activation).to(compute_dtype)
    return out


def combine(
    out: "torch.Tensor",
    inverse: "torch.Tensor",
    topk_weights: Optional["torch.Tensor"],
    compute_dtype: "torch.dtype",
) -> "torch.Tensor":
    """y[t] = Σ_j w[t, j] · out[inverse[t, j]] summed over j = 0..k-1 in that order, in fp32
    (float64 for a float64 compute dtype), cast to compute_dtype. topk_weights None: the
    weights are 1 (the sum of the k expert outputs)."""
    import torch

    acc = torch.float64 if compute_dtype == torch.float64 else torch.float32
    T, k = inverse.shape
    y = torch.zeros((T, out.shape[-1]), dtype=acc, device=out.device)
    for j in range(k):
        rowj = out[inverse[:, j].long()].to(acc)
        y += rowj if topk_weights is None else topk_weights[:, j : j + 1].to(acc) * rowj
    return y.to(compute_dtype)


def moe_ffn(
    x: "torch.Tensor",
    w1: "torch.Tensor",
    w2: "torch.Tensor",
    topk_ids: "torch.Tensor",
    topk_weights: "torch.Tensor",
    compute_dtype: "torch.dtype",
    *,
    activation: str = "swiglu",
) -> "torch.Tensor":
    """y (T, H) = Σ_j w[t, j] · W2[e_tj]ᵀ · act(W1[e_tj]ᵀ · x_t), in compute_dtype with the
    rounding points above. x (T, H), w1 (E, H, 2I) interleaved, w2 (E, I, H), topk_ids
    (T, k), topk_weights (T, k). activation: swiglu | gptoss."""
    from stages.moe.plan import make_plan

    if activation not in ("swiglu", "gptoss"):
        raise ValueError(f"the FFN's activation must be swiglu or gptoss, not {activation!r}")
    plan = make_plan(topk_ids, w1.shape[0])
    h = grouped_mm(x, w1, plan.cu_seqlens, compute_dtype, rows=plan.rows, activation=activation)
    out = grouped_mm(h, w2, plan.cu_seqlens, compute_dtype)
    return combine(out, plan.inverse, topk_weights, compute_dtype)


def moe_ffn_routed(
    x: "torch.Tensor",
    logits: "torch.Tensor",
    w1: "torch.Tensor",
    w2: "torch.Tensor",
    topk: int,
    compute_dtype: "torch.dtype",
    *,
    activation: str = "swiglu",
) -> "torch.Tensor":
    """moe_ffn with the router of ``route`` (the same top-k in both precisions: routing is
    fp32 from the logits, so both references route identically)."""
    ids, weights = route(logits, topk)
    return moe_ffn(x, w1, w2, ids, weights, compute_dtype, activation=activation)
