"""MoE's view hooks for the diagnosis (workbench.diagnose registry
`matrices_hook`, `mutant_cost_hook`): registered only where that interface exists, so this
file is inert on a tree without it. The plain functions behind them are in evidence.py.
"""

from __future__ import annotations

try:
    from workbench.diagnose.registry import Matrices, matrices_hook, mutant_cost_hook
except ImportError:  # the diagnosis core without view hooks
    Matrices = None

if Matrices is not None:

    @matrices_hook
    def moe_matrices(name, t, params):
        """2-D MoE outputs as one matrix in (128-row, 256-column) tiles: y (tokens, hidden)
        by 128-token tiles, the up-projection (routed rows sorted by expert, I or 2I) by
        128-row tiles of the sorted rows (an expert's m-tiles start at its cu_seqlens entry,
        so they need not align with these: evidence.expert_error_grid has the per-expert
        grid)."""
        if t.dim() != 2 or params is None:
            return None
        try:
            h = params["h"]
        except (KeyError, TypeError):
            return None
        rows, cols = t.shape
        label = "128-token tile" if cols == h else "128 sorted routed rows"
        return Matrices(t.unsqueeze(0), lambda x: x[0], tile=(min(128, rows), min(256, cols)),
                        row_label=label, col_label="256-column tile")

    @mutant_cost_hook
    def moe_mutant_cost(inputs):
        """The MoE mutants materialize fp32 (routed rows, H) tensors (the gathered x, the
        down-projection's output): R·H elements, R = T·k."""
        x = inputs.get("x")
        if x is None:
            return 0
        k = inputs["topk_ids"].shape[-1] if "topk_ids" in inputs else 1
        if "logits" in inputs:
            k = max(k, 8)  # topk is a parameter there: count the largest model's
        return x.shape[0] * k * x.shape[1]
