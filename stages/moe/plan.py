"""The routing plan of a MoE layer: which routed row goes where.

A token t routed to its top-k experts makes k *routed rows*, one per (t, k), R = T·k in
all. The grouped GEMMs want those rows sorted by expert, each expert's rows contiguous,
so one launch can treat the experts as a varlen batch:

    flat index  f = t·k + j          (the row of topk_ids.flatten())
    sorted pos  p                    (its row in the grouped GEMMs' A and output)

    order[p]     = f                 the flat (token, k) index sorted by expert; stable, so
                                     within one expert the rows keep token order
    rows[p]      = order[p] // k     the token whose x row the up-projection gathers
    expert[p]    = the expert of row p (non-decreasing)
    cu_seqlens   (E + 1,)            expert e owns sorted rows cu_seqlens[e] : cu_seqlens[e+1];
                                     cu_seqlens[0] = 0, cu_seqlens[E] = R; an expert no token
                                     picked has cu_seqlens[e] == cu_seqlens[e+1]
    inverse[t, j] = p                where (t, j) landed: the combine reads out[inverse[t, j]]

The plan is built with torch only (argsort stable, searchsorted), on whatever device
topk_ids lives, with no host synchronisation: every shape is known from (T, k, E).
torch is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Plan:
    """A routing plan (see the module docstring). All tensors int32, on topk_ids' device."""

    rows: "torch.Tensor"  # (R,) token index per sorted routed row
    cu_seqlens: "torch.Tensor"  # (E + 1,) row offsets per expert
    order: "torch.Tensor"  # (R,) flat (t·k + j) index per sorted row
    inverse: "torch.Tensor"  # (T, k) sorted row of each (token, k)
    expert: "torch.Tensor"  # (R,) expert of each sorted row
    num_experts: int
    topk: int

    @property
    def num_rows(self) -> int:
        return int(self.rows.shape[0])

    def counts(self) -> "torch.Tensor":
        """(E,) rows per expert."""
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]


def make_plan(topk_ids: "torch.Tensor", num_experts: int) -> Plan:
    """The plan of topk_ids (T, k) (any integer dtype; each id in [0, num_experts)).

    Ids are not range-checked here (that would synchronise with the GPU); `check_ids`
    does it where a caller wants it."""
    import torch

    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids must be (tokens, k), got shape {tuple(topk_ids.shape)}")
    T, k = topk_ids.shape
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).to(torch.int64)
    order = torch.argsort(flat, stable=True)
    expert = flat[order]
    bounds = torch.arange(num_experts + 1, device=dev, dtype=torch.int64)
    cu = torch.searchsorted(expert, bounds)  # cu[e] = rows whose expert < e
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=dev, dtype=torch.int64)
    i32 = torch.int32
    return Plan(
        rows=(order // max(k, 1)).to(i32),
        cu_seqlens=cu.to(i32),
        order=order.to(i32),
        inverse=inverse.view(T, k).to(i32),
        expert=expert.to(i32),
        num_experts=int(num_experts),
        topk=int(k),
    )


def check_ids(topk_ids: "torch.Tensor", num_experts: int) -> None:
    """Raise ValueError when an id is outside [0, num_experts) (synchronises on a GPU)."""
    if topk_ids.numel() == 0:
        return
    lo, hi = int(topk_ids.min()), int(topk_ids.max())
    if lo < 0 or hi >= num_experts:
        raise ValueError(f"topk_ids hold expert ids in [{lo}, {hi}], outside [0, {num_experts})")
