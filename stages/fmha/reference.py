"""Torch references of the FMHA stages (A: S, B: P, C/D: O and LSE).

Every function takes the stage's inputs and a ``compute_dtype``:

* ``torch.float32`` (or float64): the true reference; inputs are upcast first and every
  operation runs in that dtype.
* the kernel's own dtype (bfloat16 / float16): PyTorch in low precision, used by
  workbench.compare to calibrate the tolerance (max err <= factor * err(low) + atol).

Shapes: q (m, d), k (n, d), v (n, dv), all row-major; leading batch/head dimensions are
allowed (everything works on the last two dims). ``scale`` defaults to 1/sqrt(d).

``scores`` and ``softmax_probs`` return the whole m x n matrix (it is stages A's and B's
output). ``attention`` (stage C; stage D through ``attention_bshd``, its flash-attn layout
and GQA) streams over blocks of Q and KV: its extra memory is O(b·h·m·d), never b·h·m·n.

Causal masks are aligned top-left by default (torch SDPA's is_causal, the kernels'): query
i sees keys j <= i. ``causal_align="bottom-right"`` (FlashAttention's when m != n) is the
explicit other choice.

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



# --------------------------------------------------------------------------------------
# O and LSE (stages C and D): streamed over (Q block, KV block) pairs
# --------------------------------------------------------------------------------------
# One S block holds every (batch, head) of a (Q block, KV block) pair: the only temporary
# that grows with m·n. It is at most as large as O itself (so the extra memory stays
# O(b·h·m·d)), never above MAX_BLOCK_BYTES, and not below MIN_BLOCK_BYTES (smaller blocks
# would only add Python iterations).
MAX_BLOCK_BYTES = 256 << 20
MIN_BLOCK_BYTES = 1 << 20
MIN_BLOCK_ROWS = 64

CAUSAL_ALIGNS = ("top-left", "bottom-right")


def causal_offset(m: int, n: int, align: str) -> int:
    """Key j is visible to query i iff j <= i + causal_offset(m, n, align).

    top-left (torch's is_causal, the stages'): 0. bottom-right (FlashAttention's when
    m != n): n - m."""
    if align not in CAUSAL_ALIGNS:
        raise ValueError(f"causal_align must be one of {', '.join(CAUSAL_ALIGNS)}, not {align!r}")
    return 0 if align == "top-left" else n - m


def block_shape(batch: int, m: int, n: int, dv: int, elem_bytes: int) -> tuple[int, int]:
    """(rows of Q, rows of K) of one S block for ``batch`` (b·h) heads: the block bound above."""
    budget = min(MAX_BLOCK_BYTES, max(MIN_BLOCK_BYTES, batch * m * dv * elem_bytes))
    per_head = max(1, budget // (batch * elem_bytes))
    if m * n <= per_head:
        return m, n
    bm = min(m, max(MIN_BLOCK_ROWS, 1 << (math.isqrt(per_head).bit_length() - 1)))
    bn = min(n, max(MIN_BLOCK_ROWS, per_head // bm))
    return bm, bn


def attention(
    q: "torch.Tensor",
    k: "torch.Tensor",
    v: "torch.Tensor",
    compute_dtype: "torch.dtype",
    *,
    softmax: str = "exp",
    causal: bool = False,
    causal_align: str = "top-left",
    scale: Optional[float] = None,
    block: Optional[tuple[int, int]] = None,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """(O, LSE): O = softmax(Q K^T * scale) V and LSE = logsumexp(Q K^T * scale) per row.

    q (..., m, d), k (..., n, d), v (..., n, dv) with the same leading dims.

    float32/float64: the true reference, streamed over KV blocks (online softmax: running
    max, running sum, rescaled O, all in that dtype, TF32 off); equal to the dense formula
    within rounding. bf16/fp16 (calibration): torch's own low-precision attention,
    F.scaled_dot_product_attention on the kernel-dtype tensors, O in the dtype; LSE from
    fp32 scores of those inputs (the kernel keeps LSE in fp32), streamed too.
    ``softmax="identity"``: O = (Q K^T scale) V (S in compute_dtype, PV accumulated in
    fp32 or wider), LSE = 0 in fp32.

    ``causal``: key j visible to query i iff j <= i + causal_offset(m, n, causal_align).
    A row that sees no key (bottom-right with m > n) gets O = 0 and LSE = -inf.
    ``block``: (Q rows, K rows) of one S block; default ``block_shape``.
    """
    import torch

    if softmax not in ("exp", "identity"):
        raise ValueError(f"softmax must be 'exp' or 'identity', not {softmax!r}")
    m, n = q.shape[-2], k.shape[-2]
    offset = causal_offset(m, n, causal_align)  # checks causal_align even when not causal
    offset = offset if causal else None
    scale = default_scale(q.shape[-1]) if scale is None else scale
    lowp = compute_dtype in (torch.bfloat16, torch.float16)
    acc_dtype = torch.float32 if lowp else compute_dtype
    with _no_tf32():
        if softmax == "identity":
            o = _identity_stream(q, k, v, compute_dtype, acc_dtype, scale, offset, block)
            return o.to(compute_dtype), torch.zeros(o.shape[:-1], dtype=torch.float32, device=o.device)
        if lowp:
            _, lse = _online_softmax(q, k, None, torch.float32, scale, offset, block)
            return _sdpa(q, k, v, compute_dtype, scale, offset), lse
        return _online_softmax(q, k, v, compute_dtype, scale, offset, block)


def attention_bshd(
    q: "torch.Tensor",
    k: "torch.Tensor",
    v: "torch.Tensor",
    compute_dtype: "torch.dtype",
    *,
    softmax: str = "exp",
    causal: bool = False,
    causal_align: str = "top-left",
) -> "tuple[torch.Tensor, torch.Tensor]":
    """``attention`` for flash-attn-layout inputs: q (batch, m, heads, d), k and v (batch, n,
    kv_heads, d) -> (O (batch, m, heads, d), LSE (batch, heads, m)).

    GQA by repeating each kv head heads/kv_heads times (q head h <- kv head h // group, as
    repeat_interleave and flash-attn do). Precision, memory and ``causal`` as ``attention``.
    """
    heads, kv_heads = q.shape[2], k.shape[2]
    group = heads // kv_heads
    qt = q.transpose(1, 2)  # (b, h, m, d)
    kt, vt = k.transpose(1, 2), v.transpose(1, 2)
    if group > 1:
        kt, vt = kt.repeat_interleave(group, dim=1), vt.repeat_interleave(group, dim=1)
    o, lse = attention(qt, kt, vt, compute_dtype, softmax=softmax, causal=causal, causal_align=causal_align)
    return o.transpose(1, 2), lse


def _heads(x: "torch.Tensor", dtype: "torch.dtype") -> "torch.Tensor":
    """x (..., rows, cols) as a contiguous (b·h, rows, cols) tensor in ``dtype``."""
    import torch

    return x.to(dtype, memory_format=torch.contiguous_format).reshape(-1, *x.shape[-2:])


def _blocks(m, n, dv, elem_bytes, batch, offset, block):
    """(i0, i1, [(j0, j1, masked)]) for each Q block: KV blocks entirely above the causal
    diagonal are left out, those crossing it are ``masked``; rows that see no key at all
    (i + offset < 0) are in no block."""
    bm, bn = block or block_shape(batch, m, n, dv, elem_bytes)
    first = 0 if offset is None else min(m, max(0, -offset))
    for i0 in range(first, m, bm):
        i1 = min(m, i0 + bm)
        end = n if offset is None else min(n, i1 + offset)
        kv = [(j0, min(end, j0 + bn), offset is not None and min(end, j0 + bn) - 1 > i0 + offset)
              for j0 in range(0, end, bn)]
        yield i0, i1, kv


def _hidden(i0, i1, j0, j1, offset, device):
    """(i1 - i0, j1 - j0) bool: True where key j is after query i's causal limit."""
    import torch

    i = torch.arange(i0, i1, device=device)[:, None]
    j = torch.arange(j0, j1, device=device)[None, :]
    return j > i + offset


def _scores(q, k, scale):
    """scale * (q k^T), the scale applied to the fp32 product as it leaves the matmul
    (one rounding, as (q @ k^T) * scale, without a second pass over S)."""
    import torch

    return torch.baddbmm(q.new_zeros(()), q, k.mT, beta=0, alpha=scale)


def _online_softmax(q, k, v, dtype, scale, offset, block):
    """(O, LSE) in ``dtype`` (O is None when ``v`` is None: LSE only), one S block at a time."""
    import torch

    lead, m = q.shape[:-2], q.shape[-2]
    q3, k3 = _heads(q, dtype), _heads(k, dtype)
    v3 = None if v is None else _heads(v, dtype)
    batch, dv = q3.shape[0], (k3 if v3 is None else v3).shape[-1]
    o = None if v3 is None else torch.zeros(batch, m, dv, dtype=dtype, device=q.device)
    lse = torch.full((batch, m), float("-inf"), dtype=dtype, device=q.device)
    for i0, i1, kv in _blocks(m, k3.shape[1], dv, q3.element_size(), batch, offset, block):
        row_max = torch.full((batch, i1 - i0), float("-inf"), dtype=dtype, device=q.device)
        row_sum = torch.zeros_like(row_max)
        acc = None if v3 is None else torch.zeros(batch, i1 - i0, dv, dtype=dtype, device=q.device)
        for j0, j1, masked in kv:
            s = _scores(q3[:, i0:i1], k3[:, j0:j1], scale)
            if masked:
                s.masked_fill_(_hidden(i0, i1, j0, j1, offset, q.device), float("-inf"))
            # the first KV block holds key 0, which every row in a block sees: row_max is
            # finite from then on, so no exp(-inf - -inf)
            new_max = torch.maximum(row_max, s.amax(dim=-1))
            alpha = (row_max - new_max).exp_()
            p = s.sub_(new_max[..., None]).exp_()
            row_sum.mul_(alpha).add_(p.sum(dim=-1))
            if acc is not None:
                acc.mul_(alpha[..., None]).baddbmm_(p, v3[:, j0:j1])
            row_max = new_max
        lse[:, i0:i1] = row_max + row_sum.log()
        if o is not None:
            o[:, i0:i1] = acc.div_(row_sum[..., None])
    lse = lse.reshape(*lead, m)
    return (None if o is None else o.reshape(*lead, m, dv)), lse


def _identity_stream(q, k, v, dtype, acc_dtype, scale, offset, block):
    """O = (Q K^T scale) V with S in ``dtype`` and the PV sums in ``acc_dtype``."""
    import torch

    lead, m = q.shape[:-2], q.shape[-2]
    q3, k3, v3 = _heads(q, dtype), _heads(k, dtype), _heads(v, acc_dtype)
    batch, dv = q3.shape[0], v3.shape[-1]
    o = torch.zeros(batch, m, dv, dtype=acc_dtype, device=q.device)
    for i0, i1, kv in _blocks(m, k3.shape[1], dv, q3.element_size(), batch, offset, block):
        acc = o[:, i0:i1]
        for j0, j1, masked in kv:
            s = _scores(q3[:, i0:i1], k3[:, j0:j1], scale)
            if masked:
                s.masked_fill_(_hidden(i0, i1, j0, j1, offset, q.device), 0.0)
            acc.baddbmm_(s.to(acc_dtype), v3[:, j0:j1])
    return o.reshape(*lead, m, dv)


def _sdpa(q, k, v, dtype, scale, offset):
    """O of torch's fused low-precision attention (4-D so that CUDA picks a fused backend,
    as a user's bf16 call would; 2-D inputs would fall back to the unfused math path).
    Rows that see no key are left out of the call and get O = 0."""
    import torch
    import torch.nn.functional as F

    m, n = q.shape[-2], k.shape[-2]
    first = 0 if offset is None else min(m, max(0, -offset))
    q4, k4, v4 = (_as_4d(x.to(dtype)) for x in (q[..., first:, :], k, v))
    mask, is_causal = None, False
    if offset is not None:
        if offset + first == 0:
            is_causal = True  # torch's is_causal is top-left
        else:
            from torch.nn.attention.bias import causal_lower_right

            mask = causal_lower_right(m - first, n)
    o = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=dtype, device=q.device)
    if first < m:
        o[..., first:, :] = F.scaled_dot_product_attention(
            q4, k4, v4, attn_mask=mask, is_causal=is_causal, scale=scale
        ).reshape(*q.shape[:-2], m - first, v.shape[-1])
    return o


def _as_4d(x: "torch.Tensor") -> "torch.Tensor":
    lead = x.dim() - 2
    return x.reshape((1,) * (2 - lead) + tuple(x.shape)) if lead < 2 else x


class _no_tf32:
    """Plain fp32 matmuls inside (TF32 would round the true reference's products)."""

    def __enter__(self):
        import torch

        self.saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = self.saved


# --------------------------------------------------------------------------------------
# varlen (stage D, varlen=true): packed sequences, flash-attn's varlen layout
# --------------------------------------------------------------------------------------
def parse_seqlens(spec: str, name: str = "seqlens") -> list[int]:
    """'1:17:1000:0:4096' (or comma-separated) -> [1, 17, 1000, 0, 4096]: one length >= 0 per
    sequence. A malformed spec is a UserError (the user's mistake, one line)."""
    from workbench.errors import UserError

    parts = [x.strip() for x in str(spec).replace(",", ":").split(":")]
    try:
        lens = [int(x) for x in parts]
    except ValueError:
        raise UserError(f"fmha/stage-d: {name}={spec!r} must be lengths separated by ':' (e.g. 1:17:1000:0:4096)") from None
    if not lens or any(n < 0 for n in lens):
        raise UserError(f"fmha/stage-d: {name}={spec!r}: every length must be >= 0")
    return lens


def attention_varlen(
    q: "torch.Tensor",
    k: "torch.Tensor",
    v: "torch.Tensor",
    cu_seqlens_q: "torch.Tensor",
    cu_seqlens_k: "torch.Tensor",
    compute_dtype: "torch.dtype",
    *,
    softmax: str = "exp",
    causal: bool = False,
    causal_align: str = "top-left",
) -> "tuple[torch.Tensor, torch.Tensor]":
    """``attention_bshd`` per packed sequence: q (total_q, heads, d), k and v (total_k,
    kv_heads, d), sequence b = rows cu_seqlens[b] .. cu_seqlens[b + 1] - 1 of each ->
    (O (total_q, heads, d), LSE (heads, total_q)). Causal per sequence (its own m, n).
    A sequence with no keys gets O = 0 and LSE = -inf (the logsumexp of nothing; identity:
    LSE = 0); a sequence with no queries gets nothing."""
    import torch

    cq = [int(x) for x in cu_seqlens_q.cpu()]
    ck = [int(x) for x in cu_seqlens_k.cpu()]
    if len(cq) != len(ck):
        raise ValueError(f"cu_seqlens_q has {len(cq)} entries, cu_seqlens_k {len(ck)}")
    heads = q.shape[1]
    lowp = compute_dtype in (torch.bfloat16, torch.float16)
    o = torch.zeros(q.shape[0], heads, v.shape[-1], dtype=compute_dtype, device=q.device)
    lse_fill = 0.0 if softmax == "identity" else float("-inf")
    lse = torch.full((heads, q.shape[0]), lse_fill, dtype=torch.float32 if lowp else compute_dtype, device=q.device)
    for b in range(len(cq) - 1):
        q0, q1, k0, k1 = cq[b], cq[b + 1], ck[b], ck[b + 1]
        if q1 <= q0 or k1 <= k0:
            continue
        ob, lb = attention_bshd(
            q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], compute_dtype, softmax=softmax, causal=causal,
            causal_align=causal_align,
        )
        o[q0:q1] = ob[0].to(o.dtype)
        lse[:, q0:q1] = lb[0].to(lse.dtype)
    return o, lse
