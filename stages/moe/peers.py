"""Peers for `wb bench` of the MoE stages: other implementations timed on the same tensors.

make_peer(name, inputs, params) returns a zero-argument callable that runs the peer once, or
None when it is not installed (missing_note(name) then says why). Every peer does the work
of the stage it is compared with, so `wb bench`'s TFLOP/s (the STAGE's flops(p) divided by
the peer's time) is the peer's true rate:

  torch-grouped  stage D's FFN in PyTorch (DESIGN.md's pipeline): route (top-k + softmax) or
                 given top-k, plan (stages/moe/plan.py), gather x rows, torch._grouped_mm
                 up-projection, SwiGLU on the interleaved gate/up columns, torch._grouped_mm
                 down-projection, weighted index_add_ combine (bf16 atomics: fast, not
                 deterministic; it is a speed reference).
  dense          dense bf16 matmuls of the same FLOPs as the stage (for "≥ 75% of dense"):
                 (T·k, H) · (H, 2I) and (T·k, I) · (I, H) for stage D; the up-projection's
                 (T·k or m, H) · (H, 2I) alone for the up-projection stages. Fresh random
                 operands of the stage's dtype, made once here (outside the timing).
  quack          Dao-AILab/quack's gemm_act with varlen + gathered A (stages/moe/peer_quack.py): the FFN for stage D, the up-projection for the others.
"""

from __future__ import annotations

from workbench.kernels.stage import param_value

PEERS = {
    "torch-grouped": "DESIGN.md's torch._grouped_mm pipeline (route, plan, gather, grouped up, SwiGLU, grouped down, index_add_)",
    "dense": "dense matmuls of the stage's FLOPs (the >= 75%-of-dense yardstick)",
    "quack": "Dao-AILab/quack gemm_act varlen + gathered A (FFN for stage D, up-projection otherwise)",
}


def _routing(inputs, params):
    """(topk_ids, topk_weights) of the stage's inputs: given, or routed from the logits."""
    if "topk_ids" in inputs:
        return inputs["topk_ids"], inputs["topk_weights"]
    from stages.moe.reference import route

    return route(inputs["logits"], int(param_value(params, "topk", 1)))


def _b_operand(w):
    """w (E, K, N) for torch._grouped_mm: as it is (row-major) when the backend takes it;
    make_peer retries with a column-major copy (made once, outside the timing)."""
    return w


def torch_grouped_ffn(x, w1, w2, ids, weights, activation: str = "swiglu", *, w1_b=None, w2_b=None):
    """y (T, H) by the torch._grouped_mm pipeline (see the module docstring)."""
    import torch

    from stages.moe.plan import make_plan
    from stages.moe.reference import activate

    E = w1.shape[0]
    plan = make_plan(ids, E)
    offs = plan.cu_seqlens[1:]  # _grouped_mm's offsets: the end row of each group
    xs = x.index_select(0, plan.rows)  # gather: (R, H) sorted by expert
    d = torch._grouped_mm(xs, w1 if w1_b is None else w1_b, offs=offs)  # (R, 2I) in x's dtype
    h = activate(d.float(), activation).to(x.dtype)
    out = torch._grouped_mm(h, w2 if w2_b is None else w2_b, offs=offs)  # (R, H)
    w_sorted = weights.reshape(-1).index_select(0, plan.order).to(torch.float32)
    y = torch.zeros_like(x)
    y.index_add_(0, plan.rows, (out.float() * w_sorted[:, None]).to(x.dtype))
    return y


def _column_major(w):
    return w.transpose(-2, -1).contiguous().transpose(-2, -1)


def make_torch_grouped(inputs, params):
    x, w1, w2 = inputs["x"], inputs["w1"], inputs["w2"]
    ids, weights = _routing(inputs, params)
    act = param_value(params, "activation", "swiglu")
    has_logits = "logits" in inputs
    topk = int(param_value(params, "topk", 1))
    w1_b, w2_b = w1, w2
    try:
        torch_grouped_ffn(x, w1, w2, ids, weights, act)
    except RuntimeError:  # a backend that wants column-major B: copy once, here
        w1_b, w2_b = _column_major(w1), _column_major(w2)
        torch_grouped_ffn(x, w1, w2, ids, weights, act, w1_b=w1_b, w2_b=w2_b)

    def run():
        if has_logits:  # routing is part of the work, as in stage D
            from stages.moe.reference import route

            i, w = route(inputs["logits"], topk)
        else:
            i, w = ids, weights
        return torch_grouped_ffn(x, w1, w2, i, w, act, w1_b=w1_b, w2_b=w2_b)

    return run


def make_dense(inputs, params):
    """Dense matmuls with the stage's FLOPs (see the module docstring)."""
    import torch

    x, w1 = inputs["x"], inputs["w1"]
    H, N = w1.shape[-2], w1.shape[-1]
    rows = x.shape[0] * (int(param_value(params, "topk", 1)) if w1.dim() == 3 else 1)
    g = torch.Generator(device=x.device).manual_seed(0)
    a = torch.randn(rows, H, generator=g, device=x.device).to(x.dtype)
    b1 = torch.randn(H, N, generator=g, device=x.device).to(x.dtype)
    if "w2" in inputs:
        I = inputs["w2"].shape[-2]
        h = torch.randn(rows, I, generator=g, device=x.device).to(x.dtype)
        b2 = torch.randn(I, H, generator=g, device=x.device).to(x.dtype)

        def run():
            return a @ b1, h @ b2
    else:
        def run():
            return a @ b1

    run()
    return run


def make_quack_peer(inputs, params):
    """quack's varlen gemm_act (stages/moe/peer_quack.py): the whole FFN for
    stage D (inputs with w2), the up-projection alone otherwise; None when quack (or that
    module) is missing."""
    from stages.moe import peer_quack

    if "w2" in inputs:
        return peer_quack.make_quack_peer(inputs, params)
    return peer_quack.make_quack_up_peer(inputs, params)


# `wb profile --peers`: the ncu kernel-name filter of each peer's kernels (quack's are CuTe DSL
# kernels, named like ours; the torch pipeline's grouped GEMMs are CUTLASS kernels of torch)
PROFILE_KERNELS = {"quack": "regex:kernel_cutlass", "torch-grouped": "regex:gemm|cutlass", "dense": "regex:gemm|cutlass"}


def make_peer(name: str, inputs, params):
    if name == "torch-grouped":
        if "w2" not in inputs or inputs["w1"].dim() != 3:
            raise ValueError("torch-grouped is stage D's peer (it needs x, w1 (E, H, 2I), w2 and the routing)")
        return make_torch_grouped(inputs, params)
    if name == "dense":
        return make_dense(inputs, params)
    if name == "quack":
        return make_quack_peer(inputs, params)
    raise ValueError(f"unknown peer {name!r} (one of {', '.join(PEERS)})")


def missing_note(name: str) -> str | None:
    if name == "quack":
        from stages.moe import peer_quack

        return peer_quack.missing_note()
    return None
