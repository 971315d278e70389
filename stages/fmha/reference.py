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

Masks (``attention``'s ``causal``, ``align``, ``window_left``, ``window_right``; stage D's
parameters of the same names, stages/fmha/mask.py): with offset = 0 (align "top_left", the
default: torch SDPA's is_causal, the kernels') or n - m ("bottom_right": FlashAttention's),
query i sees key j < n iff j >= i + offset - window_left (when window_left >= 0) and
j <= i + offset + window_right (when window_right >= 0; ``causal`` is window_right = 0).
A row that sees no key gets O = 0 and LSE = -inf.

Softcap (Gemma 2; flash-attn's ``softcap``): with ``softcap`` = c > 0 the logits
s = scale * (q . k) become c * tanh(s / c) before the mask and the softmax (``capped``);
c = 0 leaves them alone. LSE is the logsumexp of the capped logits.

torch is imported lazily (inside functions) so that importing this module is cheap.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch


def default_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)


def _cast(x: "torch.Tensor", compute_dtype: "torch.dtype") -> "torch.Tensor":
    return x.to(compute_dtype)


def check_softcap(softcap: float) -> float:
    """``softcap`` as a float; ValueError unless it is >= 0 (0 = off)."""
    softcap = float(softcap)
    if not softcap >= 0.0:  # also rejects NaN
        raise ValueError(f"softcap must be >= 0 (0 = off), not {softcap!r}")
    return softcap


def capped(s: "torch.Tensor", softcap: float) -> "torch.Tensor":
    """c * tanh(s / c) of the scaled logits s, in place (c = ``softcap``; c = 0: s itself)."""
    if softcap:
        s.div_(softcap).tanh_().mul_(softcap)
    return s


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
#: stage D's spelling of the two alignments (kernel.yaml's ``align``), same order
ALIGNS = ("top_left", "bottom_right")


def causal_offset(m: int, n: int, align: str) -> int:
    """Key j is visible to query i iff j <= i + causal_offset(m, n, align) (causal).

    top-left / top_left (torch's is_causal, the stages' default): 0. bottom-right /
    bottom_right (FlashAttention's when m != n): n - m."""
    if align not in CAUSAL_ALIGNS + ALIGNS:
        raise ValueError(
            f"causal_align (align) must be one of {', '.join(ALIGNS)} (or {', '.join(CAUSAL_ALIGNS)}), not {align!r}"
        )
    return 0 if align in ("top-left", "top_left") else n - m


class Window:
    """The mask of one (m, n) problem: key j visible to query i iff 0 <= j < n and
    lo_i <= j <= hi_i, lo_i = i + offset - left (left >= 0, else 0), hi_i = i + offset +
    right (right >= 0, else n - 1). ``None`` stands for no mask at all."""

    def __init__(self, offset: int, left: int, right: int):
        self.offset, self.left, self.right = offset, left, right

    @classmethod
    def make(cls, m: int, n: int, causal: bool, align: str, window_left: int = -1, window_right: int = -1):
        """The Window of these parameters (``None`` when every row sees every key)."""
        offset = causal_offset(m, n, align)  # checks align even when nothing is masked
        if window_left < -1 or window_right < -1:
            raise ValueError(f"window_left and window_right must be >= -1 (-1: unbounded), not {window_left}, {window_right}")
        right = 0 if causal else window_right
        if window_left < 0 and right < 0:
            return None
        return cls(offset, window_left, right)

    def lo(self, i: int) -> int:
        """First key row i may see (may be < 0 or >= n)."""
        return i + self.offset - self.left if self.left >= 0 else 0

    def hi(self, i: int, n: int) -> int:
        """Last key row i may see, at most n - 1 (may be < 0)."""
        return min(n - 1, i + self.offset + self.right) if self.right >= 0 else n - 1

    def hidden(self, i0, i1, j0, j1, device):
        """(i1 - i0, j1 - j0) bool: True where key j is outside query i's window."""
        import torch

        i = torch.arange(i0, i1, device=device)[:, None]
        j = torch.arange(j0, j1, device=device)[None, :]
        out = torch.zeros(i1 - i0, j1 - j0, dtype=torch.bool, device=device)
        if self.right >= 0:
            out |= j > i + self.offset + self.right
        if self.left >= 0:
            out |= j < i + self.offset - self.left
        return out


def visible_pairs(m: int, n: int, *, align: str = "top_left", window_left: int = -1, window_right: int = -1) -> int:
    """How many (query, key) pairs the mask lets through (causal: window_right = 0)."""
    w = Window.make(m, n, False, align, window_left, window_right)
    if w is None:
        return m * n
    return sum(max(0, w.hi(i, n) - max(0, w.lo(i)) + 1) for i in range(m))


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
    align: Optional[str] = None,
    window_left: int = -1,
    window_right: int = -1,
    scale: Optional[float] = None,
    softcap: float = 0.0,
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

    Mask (the module docstring): ``align`` (top_left | bottom_right; ``causal_align``,
    top-left | bottom-right, is its older name, used when ``align`` is None), ``causal``
    (window_right = 0), ``window_left``, ``window_right`` (-1: unbounded). A row that sees
    no key (bottom-right with m > n, a window outside [0, n)) gets O = 0 and LSE = -inf.
    Low precision with a window or a non-top-left causal mask: SDPA per block of Q rows on the
    keys that block can see, with an explicit boolean mask (never an m x n mask).

    ``softcap`` = c > 0: every logit s = Q K^T scale becomes c tanh(s / c) (before the mask;
    identity: O = capped(S) V). SDPA has no softcap, so the bf16/fp16 calibration of O is
    then flash attention's arithmetic in torch: capped logits and softmax in fp32, the
    unnormalised P rounded to the dtype before P V (fp32 accumulation), O rounded to the
    dtype (what SDPA's flash backend does without a softcap).
    ``block``: (Q rows, K rows) of one S block; default ``block_shape``.
    """
    import torch

    if softmax not in ("exp", "identity"):
        raise ValueError(f"softmax must be 'exp' or 'identity', not {softmax!r}")
    softcap = check_softcap(softcap)
    m, n = q.shape[-2], k.shape[-2]
    window = Window.make(m, n, causal, causal_align if align is None else align, window_left, window_right)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    lowp = compute_dtype in (torch.bfloat16, torch.float16)
    acc_dtype = torch.float32 if lowp else compute_dtype
    with _no_tf32():
        if softmax == "identity":
            o = _identity_stream(q, k, v, compute_dtype, acc_dtype, scale, window, block, softcap)
            return o.to(compute_dtype), torch.zeros(o.shape[:-1], dtype=torch.float32, device=o.device)
        if lowp and softcap:
            o, lse = _online_softmax(q, k, v, torch.float32, scale, window, block, softcap, p_dtype=compute_dtype)
            return o.to(compute_dtype), lse
        if lowp:
            _, lse = _online_softmax(q, k, None, torch.float32, scale, window, block)
            return _sdpa(q, k, v, compute_dtype, scale, window), lse
        return _online_softmax(q, k, v, compute_dtype, scale, window, block, softcap)


def attention_bshd(
    q: "torch.Tensor",
    k: "torch.Tensor",
    v: "torch.Tensor",
    compute_dtype: "torch.dtype",
    *,
    softmax: str = "exp",
    causal: bool = False,
    causal_align: str = "top-left",
    align: Optional[str] = None,
    window_left: int = -1,
    window_right: int = -1,
    softcap: float = 0.0,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """``attention`` for flash-attn-layout inputs: q (batch, m, heads, d), k and v (batch, n,
    kv_heads, d) -> (O (batch, m, heads, d), LSE (batch, heads, m)).

    GQA by repeating each kv head heads/kv_heads times (q head h <- kv head h // group, as
    repeat_interleave and flash-attn do). Precision, memory, the mask (``causal``,
    ``align``, ``window_left``, ``window_right``) and ``softcap`` as ``attention``.
    """
    heads, kv_heads = q.shape[2], k.shape[2]
    group = heads // kv_heads
    qt = q.transpose(1, 2)  # (b, h, m, d)
    kt, vt = k.transpose(1, 2), v.transpose(1, 2)
    if group > 1:
        kt, vt = kt.repeat_interleave(group, dim=1), vt.repeat_interleave(group, dim=1)
    o, lse = attention(qt, kt, vt, compute_dtype, softmax=softmax, causal=causal, causal_align=causal_align,
                       align=align, window_left=window_left, window_right=window_right, softcap=softcap)
    return o.transpose(1, 2), lse


def _heads(x: "torch.Tensor", dtype: "torch.dtype") -> "torch.Tensor":
    """x (..., rows, cols) as a contiguous (b·h, rows, cols) tensor in ``dtype``."""
    import torch

    return x.to(dtype, memory_format=torch.contiguous_format).reshape(-1, *x.shape[-2:])


def _first_row(m, n, window):
    """The first row that sees a key when rows before it see none (bottom-right, m > n);
    rows that see none elsewhere are handled by the blocks themselves."""
    if window is None or window.right < 0:
        return 0
    return min(m, max(0, -(window.offset + window.right)))


def _blocks(m, n, dv, elem_bytes, batch, window, block):
    """(i0, i1, [(j0, j1, masked)]) for each Q block: KV blocks no row of the block sees
    are left out, those an edge of the window crosses are ``masked``; leading rows that see
    no key at all (``_first_row``) are in no block, and a block whose rows see nothing has
    no KV block."""
    bm, bn = block or block_shape(batch, m, n, dv, elem_bytes)
    for i0 in range(_first_row(m, n, window), m, bm):
        i1 = min(m, i0 + bm)
        if window is None:
            yield i0, i1, [(j0, min(n, j0 + bn), False) for j0 in range(0, n, bn)]
            continue
        start, end = max(0, window.lo(i0)), window.hi(i1 - 1, n) + 1
        kv = []
        for j0 in range(start, end, bn):
            j1 = min(end, j0 + bn)
            masked = (window.right >= 0 and j1 - 1 > window.hi(i0, n)) or (window.left >= 0 and j0 < window.lo(i1 - 1))
            kv.append((j0, j1, masked))
        yield i0, i1, kv


def _scores(q, k, scale):
    """scale * (q k^T), the scale applied to the fp32 product as it leaves the matmul
    (one rounding, as (q @ k^T) * scale, without a second pass over S)."""
    import torch

    return torch.baddbmm(q.new_zeros(()), q, k.mT, beta=0, alpha=scale)


def _online_softmax(q, k, v, dtype, scale, window, block, softcap=0.0, p_dtype=None):
    """(O, LSE) in ``dtype`` (O is None when ``v`` is None: LSE only), one S block at a time.
    ``p_dtype``: the unnormalised P is rounded to it before P V (a kernel's PV operand)."""
    import torch

    lead, m = q.shape[:-2], q.shape[-2]
    q3, k3 = _heads(q, dtype), _heads(k, dtype)
    v3 = None if v is None else _heads(v, dtype)
    batch, dv = q3.shape[0], (k3 if v3 is None else v3).shape[-1]
    o = None if v3 is None else torch.zeros(batch, m, dv, dtype=dtype, device=q.device)
    lse = torch.full((batch, m), float("-inf"), dtype=dtype, device=q.device)
    for i0, i1, kv in _blocks(m, k3.shape[1], dv, q3.element_size(), batch, window, block):
        row_max = torch.full((batch, i1 - i0), float("-inf"), dtype=dtype, device=q.device)
        row_sum = torch.zeros_like(row_max)
        acc = None if v3 is None else torch.zeros(batch, i1 - i0, dv, dtype=dtype, device=q.device)
        for j0, j1, masked in kv:
            s = capped(_scores(q3[:, i0:i1], k3[:, j0:j1], scale), softcap)
            if masked:
                s.masked_fill_(window.hidden(i0, i1, j0, j1, q.device), float("-inf"))
                # a row may see nothing in this block (nor before it): subtract 0, not -inf,
                # so that it gets p = 0 and alpha = exp(-inf) = 0 instead of NaN
                new_max = torch.maximum(row_max, s.amax(dim=-1))
                safe = torch.where(new_max == float("-inf"), torch.zeros_like(new_max), new_max)
            else:
                # a block without mask: every row sees each of its keys, row_max is finite
                new_max = safe = torch.maximum(row_max, s.amax(dim=-1))
            alpha = (row_max - safe).exp_()
            p = s.sub_(safe[..., None]).exp_()
            row_sum.mul_(alpha).add_(p.sum(dim=-1))
            if acc is not None:
                pv = p if p_dtype is None else p.to(p_dtype).to(dtype)
                acc.mul_(alpha[..., None]).baddbmm_(pv, v3[:, j0:j1])
            row_max = new_max
        lse[:, i0:i1] = row_max + row_sum.log()  # a row that saw no key: -inf + log 0 = -inf
        if o is not None:
            if window is not None:
                row_sum = torch.where(row_sum == 0, torch.ones_like(row_sum), row_sum)  # O = 0 / 1, not 0 / 0
            o[:, i0:i1] = acc.div_(row_sum[..., None])
    lse = lse.reshape(*lead, m)
    return (None if o is None else o.reshape(*lead, m, dv)), lse


def _identity_stream(q, k, v, dtype, acc_dtype, scale, window, block, softcap=0.0):
    """O = capped(Q K^T scale) V with S in ``dtype`` and the PV sums in ``acc_dtype``."""
    import torch

    lead, m = q.shape[:-2], q.shape[-2]
    q3, k3, v3 = _heads(q, dtype), _heads(k, dtype), _heads(v, acc_dtype)
    batch, dv = q3.shape[0], v3.shape[-1]
    o = torch.zeros(batch, m, dv, dtype=acc_dtype, device=q.device)
    for i0, i1, kv in _blocks(m, k3.shape[1], dv, q3.element_size(), batch, window, block):
        acc = o[:, i0:i1]
        for j0, j1, masked in kv:
            s = capped(_scores(q3[:, i0:i1], k3[:, j0:j1], scale), softcap)
            if masked:
                s.masked_fill_(window.hidden(i0, i1, j0, j1, q.device), 0.0)
            acc.baddbmm_(s.to(acc_dtype), v3[:, j0:j1])
    return o.reshape(*lead, m, dv)


#: Q rows per SDPA call of the windowed low-precision reference
SDPA_WINDOW_ROWS = 512


def _sdpa(q, k, v, dtype, scale, window):
    """O of torch's fused low-precision attention (4-D so that CUDA picks a fused backend,
    as a user's bf16 call would; 2-D inputs would fall back to the unfused math path).
    Rows that see no key are left out of the call and get O = 0."""
    import torch
    import torch.nn.functional as F

    m, n = q.shape[-2], k.shape[-2]
    if window is not None and (window.left >= 0 or window.right != 0):
        return _sdpa_window(q, k, v, dtype, scale, window)
    offset = None if window is None else window.offset
    first = _first_row(m, n, window)
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


def _sdpa_window(q, k, v, dtype, scale, window):
    """``_sdpa`` for a windowed mask: per block of SDPA_WINDOW_ROWS query rows, SDPA on the
    keys that block can see with an explicit boolean mask; rows that see no key get O = 0."""
    import torch
    import torch.nn.functional as F

    m, n = q.shape[-2], k.shape[-2]
    o = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=dtype, device=q.device)
    for i0 in range(0, m, SDPA_WINDOW_ROWS):
        i1 = min(m, i0 + SDPA_WINDOW_ROWS)
        start, end = max(0, window.lo(i0)), window.hi(i1 - 1, n) + 1
        if start >= end:
            continue
        hidden = window.hidden(i0, i1, start, end, q.device)
        seen = ~hidden.all(dim=1)  # rows that see some key of the block's range
        if not bool(seen.any()):
            continue
        rows = torch.arange(i0, i1, device=q.device)[seen]
        q4, k4, v4 = (_as_4d(x.to(dtype)) for x in (q[..., rows, :], k[..., start:end, :], v[..., start:end, :]))
        out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=~hidden[seen], scale=scale)
        o[..., rows, :] = out.reshape(*q.shape[:-2], len(rows), v.shape[-1])
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
    # ASCII digits only: int() also reads '１２８', '1_000' and '٣', which the record would keep
    # as text beside the lengths that ran (the registry's integer parameters refuse them too)
    if not all(re.fullmatch(r"[+-]?[0-9]+", x) for x in parts):
        raise UserError(f"fmha/stage-d: {name}={spec!r} must be lengths separated by ':' (e.g. 1:17:1000:0:4096)")
    lens = [int(x) for x in parts]
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
    **mask_and_cap,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """``attention_bshd`` per packed sequence: q (total_q, heads, d), k and v (total_k,
    kv_heads, d), sequence b = rows cu_seqlens[b] .. cu_seqlens[b + 1] - 1 of each ->
    (O (total_q, heads, d), LSE (heads, total_q)). Causal per sequence (its own m, n).
    A sequence with no keys gets O = 0 and LSE = -inf (the logsumexp of nothing; identity:
    LSE = 0); a sequence with no queries gets nothing. ``mask_and_cap``: ``attention_bshd``'s
    align, window_left, window_right and softcap, applied per sequence."""
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
            causal_align=causal_align, **mask_and_cap,
        )
        o[q0:q1] = ob[0].to(o.dtype)
        lse[:, q0:q1] = lb[0].to(lse.dtype)
    return o, lse


def attention_paged(
    q: "torch.Tensor",
    k_cache: "torch.Tensor",
    v_cache: "torch.Tensor",
    block_table: "torch.Tensor",
    cache_seqlens: "torch.Tensor",
    compute_dtype: "torch.dtype",
    **kw,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """Paged KV: ``attention_bshd`` over the logical K/V of each sequence, sequence b's
    first cache_seqlens[b] keys through the block table -> (O (batch, m, heads, dv), LSE
    (batch, heads, m)). ``kw``: its causal, softmax, align, window and softcap."""
    lens = [int(x) for x in cache_seqlens.cpu()]
    k, v = gather_pages(k_cache, v_cache, block_table, max(lens, default=0))
    return attention_lengths(q, k, v, lens, compute_dtype, **kw)


def attention_paged_varlen(
    q: "torch.Tensor",
    k_cache: "torch.Tensor",
    v_cache: "torch.Tensor",
    block_table: "torch.Tensor",
    cache_seqlens: "torch.Tensor",
    cu_seqlens_q: "torch.Tensor",
    compute_dtype: "torch.dtype",
    **kw,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """Packed queries (total_q, heads, d) with cu_seqlens_q over a paged cache: each
    sequence's first cache_seqlens[b] keys through the block table, packed, then
    ``attention_varlen`` -> (O (total_q, heads, dv), LSE (heads, total_q))."""
    lens = [int(x) for x in cache_seqlens.cpu()]
    k, v = gather_pages(k_cache, v_cache, block_table, max(lens, default=0))
    kp, vp, cu_k = packed_keys(k, v, lens)
    return attention_varlen(q, kp, vp, cu_seqlens_q, cu_k, compute_dtype, **kw)


def packed_keys(k: "torch.Tensor", v: "torch.Tensor", lens: "list[int]"):
    """(k, v packed (sum(lens), kv_heads, d), cu_seqlens_k int32) of sequence b's first
    lens[b] rows of k, v (batch, n, kv_heads, d)."""
    import torch

    keep = torch.arange(k.shape[1], device=k.device)[None, :] < torch.tensor(lens, device=k.device)[:, None]
    return k[keep], v[keep], torch.tensor([0] + list(lens), dtype=torch.int32).cumsum(0).to(torch.int32)


def attention_lengths(
    q: "torch.Tensor", k: "torch.Tensor", v: "torch.Tensor", lens: "list[int]", compute_dtype: "torch.dtype", **kw,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """``attention_bshd`` where sequence b sees only its first lens[b] keys of k, v (batch,
    n, kv_heads, d), n >= every length: one batched call when every length is n, else
    ``attention_varlen`` over the sequences packed (a sequence with no keys: O = 0, LSE =
    -inf)."""
    import torch

    batch, m, heads = q.shape[0], q.shape[1], q.shape[2]
    if k.shape[1] > 0 and all(x == k.shape[1] for x in lens):  # (no keys at all: attention_varlen's empty sequences)
        return attention_bshd(q, k, v, compute_dtype, **kw)
    kp, vp, cu_k = packed_keys(k, v, lens)
    cu_q = torch.arange(batch + 1, dtype=torch.int32) * m
    o, lse = attention_varlen(q.reshape(batch * m, heads, q.shape[-1]), kp, vp, cu_q, cu_k, compute_dtype, **kw)
    return o.view(batch, m, heads, o.shape[-1]), lse.view(heads, batch, m).transpose(0, 1).contiguous()


def logical_kv(inputs: dict) -> tuple["torch.Tensor", "torch.Tensor | None"]:
    """The K and V the queries read: k, v as given, or a paged cache's through its block table
    ((batch, longest length, kv_heads, d), rows past a sequence's length as the cache holds
    them; packed (total_k, kv_heads, d) beside packed queries)."""
    k, v = inputs["k"], inputs.get("v")
    if "block_table" not in inputs or v is None:
        return k, v
    lens = [int(x) for x in inputs["cache_seqlens"].cpu()]
    k, v = gather_pages(k, v, inputs["block_table"], max(lens, default=0))
    if inputs["q"].dim() == 3:
        k, v, _ = packed_keys(k, v, lens)
    return k, v


def gather_pages(
    k_cache: "torch.Tensor", v_cache: "torch.Tensor", block_table: "torch.Tensor", n: int
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Paged KV: the logical (batch, n, kv_heads, d) K and V of caches (num_pages, page_size,
    kv_heads, d) through ``block_table`` (batch, max_pages_per_seq): key r of sequence b is
    row r % page_size of page block_table[b, r // page_size] (one advanced index, no loop)."""
    import torch

    page_size = k_cache.shape[1]
    r = torch.arange(n, device=block_table.device)
    pages = block_table.long()[:, r // page_size]  # (batch, n)
    rows = (r % page_size).expand_as(pages)
    return k_cache[pages, rows], v_cache[pages, rows]
