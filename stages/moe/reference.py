"""PyTorch references of the MoE stages (the truth a kernel is compared with).

Every function computes in ``compute_dtype`` the way PyTorch would (matmul in that dtype,
fp32 accumulation inside cuBLAS for 16-bit types) and returns that dtype; wb calls it once
with torch.float32 (the reference) and once with the kernel's dtype (which calibrates the
tolerance, see workbench.compare). W1 is interleaved (stages/moe/layout.py): column 2i is
gate_i, 2i + 1 is up_i.
"""

from __future__ import annotations

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
