"""Torch references shared by every FMHA stage (A: S, B: P, C/D: O and LSE).

Every function takes the stage's inputs and a ``compute_dtype``:

* ``torch.float32`` (or float64): the true reference; inputs are upcast first and every
  operation runs in that dtype.
* the kernel's own dtype (bfloat16 / float16): plain PyTorch in low precision, used by
  workbench.compare to calibrate the tolerance (max err <= factor * err(low) + atol).

Shapes: q (m, d), k (n, d), v (n, dv), all row-major; an optional leading batch/head
dimensions are allowed (everything works on the last two dims). ``scale`` defaults to
1/sqrt(d). Outputs are returned in ``compute_dtype``; callers cast if they need to.

torch is imported lazily (inside functions) so that importing this module is cheap.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch


def default_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)


def _cast(x: "torch.Tensor", compute_dtype: "torch.dtype") -> "torch.Tensor":
    return x.to(compute_dtype)


def scores(
    q: "torch.Tensor",
    k: "torch.Tensor",
    compute_dtype: "torch.dtype",
    scale: Optional[float] = None,
) -> "torch.Tensor":
    """S = Q K^T * scale, computed in ``compute_dtype`` (stage A's output)."""
    scale = default_scale(q.shape[-1]) if scale is None else scale
    s = _cast(q, compute_dtype) @ _cast(k, compute_dtype).transpose(-1, -2)
    return s * scale


def softmax_probs(
    q: "torch.Tensor",
    k: "torch.Tensor",
    compute_dtype: "torch.dtype",
    scale: Optional[float] = None,
    softmax: str = "exp",
) -> "torch.Tensor":
    """P = softmax(Q K^T * scale) row-wise (stage B's output), in ``compute_dtype``.

    ``softmax="identity"``: P = Q K^T * scale, no softmax (the identity-softmax variant,
    which isolates data movement from the softmax arithmetic).
    """
    s = scores(q, k, compute_dtype, scale)
    if softmax == "identity":
        return s
    if softmax != "exp":
        raise ValueError(f"softmax must be 'exp' or 'identity', not {softmax!r}")
    return _softmax_lastdim(s)


def _softmax_lastdim(s: "torch.Tensor") -> "torch.Tensor":
    """Numerically stable softmax over the last dim, every step in s.dtype (no implicit
    upcast, so the low-precision run really is low precision)."""
    mx = s.amax(dim=-1, keepdim=True)
    e = (s - mx).exp()
    return e / e.sum(dim=-1, keepdim=True)


def attention(
    q: "torch.Tensor",
    k: "torch.Tensor",
    v: "torch.Tensor",
    compute_dtype: "torch.dtype",
    scale: Optional[float] = None,
    softmax: str = "exp",
    causal: bool = False,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """O = softmax(Q K^T * scale) V and LSE = logsumexp(Q K^T * scale) per row.

    ``causal``: query row i sees keys j <= i + (n - m) (bottom-right aligned, as
    FlashAttention does when m != n). ``softmax="identity"``: O = (Q K^T * scale) V and LSE
    is returned as zeros (undefined for the identity variant). Returns (O, LSE) in
    ``compute_dtype``; LSE has the shape of O without its last dim.
    """
    import torch

    s = scores(q, k, compute_dtype, scale)
    if causal:
        m, n = s.shape[-2], s.shape[-1]
        i = torch.arange(m, device=s.device)[:, None]
        j = torch.arange(n, device=s.device)[None, :]
        s = s.masked_fill(j > i + (n - m), float("-inf"))
    vv = _cast(v, compute_dtype)
    if softmax == "identity":
        if causal:
            s = s.masked_fill(torch.isinf(s), 0.0)
        return s @ vv, torch.zeros(s.shape[:-1], dtype=compute_dtype, device=s.device)
    lse = torch.logsumexp(s, dim=-1)
    p = _softmax_lastdim(s)
    return p @ vv, lse
