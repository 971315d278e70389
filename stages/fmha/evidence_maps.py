"""fmha's view hooks for the diagnosis (workbench.diagnose.registry, "View hooks"): how its
tensors read as matrices, which rows a one-hot-P output reads, what its mutants cost.

Layouts: 2-D stages (A-C) have (seq, d) Q/K/V, S and P (m, n), O (m, d), LSE (m,); stage D has
(batch, seq, heads, d) Q/K/V/O and LSE (batch, heads, m), K/V with kv_heads heads (GQA);
varlen=true packs them: (total, heads, d) Q/K/V/O and LSE (heads, total_q), one matrix per head;
page_size > 0 holds K/V in a paged cache, read here through its block table (reference.logical_kv).
"""

from __future__ import annotations

from workbench.diagnose.registry import Matrices, matrices_hook, mutant_cost_hook, read_source_hook, role_of
from workbench.kernels.stage import param_value


@matrices_hook
def attention_matrices(name, t, params):
    """S/P: one matrix in (Q tile x KV tile) tiles; 4-D O: one (seq, d) matrix per (batch, head);
    3-D LSE: one column per (batch, head), (batch, heads, m) or (batch, m, heads)."""
    if _varlen(params) and role_of(name) in ("o", "lse") and t.dim() in (2, 3):
        # packed (total_q, heads, d) O / (heads, total_q) LSE: one matrix per head, the
        # sequences one after another down its rows
        h = t.shape[1] if t.dim() == 3 else t.shape[0]
        if t.dim() == 3:
            return Matrices(t.permute(1, 0, 2), lambda x: x.permute(1, 0, 2), labels=[f"h{j}" for j in range(h)],
                            row_label="packed rows (all sequences)", col_label="head")
        return Matrices(t.unsqueeze(-1), lambda x: x[..., 0], labels=[f"h{j}" for j in range(h)], tile=(64, 1),
                        row_label="packed rows (all sequences)", col_label="head")
    if t.dim() == 2 and role_of(name) in ("s", "p"):
        return Matrices(t.unsqueeze(0), lambda x: x[0], tile=(128, 128), row_label="Q tile (128 rows)", col_label="KV tile (128 cols)")
    if t.dim() == 4:
        b, s, h, d = t.shape
        return Matrices(t.permute(0, 2, 1, 3).reshape(b * h, s, d), lambda x: x.reshape(b, h, s, d).permute(0, 2, 1, 3),
                        labels=[f"b{i}h{j}" for i in range(b) for j in range(h)], col_label="(batch, head)")
    if t.dim() == 3:
        a, x, y = t.shape
        if param_value(params, "m") == x and y != x:  # (batch, m, heads)
            mats = t.permute(0, 2, 1).reshape(a * y, x, 1)
            back = lambda v: v.reshape(a, y, x).permute(0, 2, 1)  # noqa: E731
            labels = [f"b{i}h{j}" for i in range(a) for j in range(y)]
        else:  # (batch, heads, m)
            mats = t.reshape(a * x, y, 1)
            back = lambda v: v.reshape(a, x, y)  # noqa: E731
            labels = [f"b{i}h{j}" for i in range(a) for j in range(x)]
        return Matrices(mats, back, labels=labels, tile=(64, 1), col_label="(batch, head)")
    return None


def _varlen(params) -> bool:
    v = param_value(params, "varlen", False)
    return v.strip().lower() in ("1", "true", "yes", "on") if isinstance(v, str) else bool(v)


@read_source_hook
def v_rows(name, inputs, params):
    """O's rows under one-hot P equal V rows: V grouped like O's matrices (the query head's KV
    head under GQA; a paged cache's V through its block table; packed V one matrix per query
    head, as packed O is)."""
    if role_of(name) != "o" or inputs.get("v") is None:
        return None
    import torch

    from stages.fmha.reference import logical_kv

    v = logical_kv(inputs)[1]
    if v.dim() == 2:
        return v.unsqueeze(0)
    if v.dim() not in (3, 4) or (v.dim() == 3) != _varlen(params):
        return None
    hk = v.shape[-2]
    q = inputs.get("q")
    heads = q.shape[-2] if q is not None and q.dim() == v.dim() else (param_value(params, "heads") or hk)
    group = max(1, heads // max(1, hk))
    kv_index = (torch.arange(heads) // group).clamp(max=hk - 1).to(v.device)
    if v.dim() == 3:  # (total_k, kv_heads, d) -> (heads, total_k, d)
        return v.permute(1, 0, 2)[kv_index]
    b, n, _, d = v.shape
    return v.permute(0, 2, 1, 3)[:, kv_index].reshape(b * heads, n, d)


@mutant_cost_hook
def logits(inputs):
    """The kernel's mutants build S = q·kᵀ: its element count."""
    q, k = inputs.get("q"), inputs.get("k")
    if q is None or k is None or q.dim() != k.dim():
        return 0
    lk = None
    if "cache_seqlens" in inputs:  # paged: each sequence's own key count
        lk = inputs["cache_seqlens"].cpu().long()
    elif "cu_seqlens_k" in inputs:
        lk = inputs["cu_seqlens_k"].cpu().diff().long()
    if "cu_seqlens_q" in inputs and lk is not None and q.dim() == 3:  # varlen: per sequence
        lq = inputs["cu_seqlens_q"].cpu().diff().long()
        return int((lq * lk).sum()) * q.shape[1]
    if lk is not None and q.dim() == 4:  # (batch, m, heads, d) queries over paged keys
        return int(lk.sum()) * q.shape[1] * q.shape[2]
    return q.numel() // q.shape[-1] * k.shape[-3 if k.dim() == 4 else 0]
