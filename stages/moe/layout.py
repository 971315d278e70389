"""W1's column layout: gate and up interleaved per column (the layout every MoE stage uses).

W1[e] is (H, 2I), row-major. Column 2i holds gate_i and column 2i+1 holds up_i, so the
up-projection's accumulator gives one thread gate_i and up_i in two adjacent registers (the
Hopper WGMMA accumulator hands each thread pairs of adjacent columns) and SwiGLU needs no
data exchange. Checkpoints (HF Mixtral/Qwen/DeepSeek) store the two halves concatenated,
[gate | up] (gate in columns 0..I-1, up in I..2I-1); gpt-oss already stores them interleaved.

    interleave_gate_up(w_cat)  [gate | up] -> interleaved   (..., 2I) last dim
    split_gate_up(w1)          interleaved -> (gate, up)     each (..., I)

Both work on the last dimension, on any leading shape ((H, 2I), (E, H, 2I), or a (T, 2I)
accumulator), and return contiguous tensors.
"""

from __future__ import annotations


def interleave_gate_up(w_cat):
    """[gate | up] concatenated along the last dim -> interleaved: out[..., 2i] = gate_i,
    out[..., 2i + 1] = up_i."""
    two_i = w_cat.shape[-1]
    if two_i % 2:
        raise ValueError(f"last dim {two_i} is odd: it must hold gate and up of equal width")
    gate, up = w_cat[..., : two_i // 2], w_cat[..., two_i // 2 :]
    return interleave(gate, up)


def interleave(gate, up):
    """(gate, up), each (..., I) -> (..., 2I) with column 2i = gate_i, 2i + 1 = up_i."""
    import torch

    if gate.shape != up.shape:
        raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} differ in shape")
    return torch.stack((gate, up), dim=-1).flatten(-2).contiguous()


def split_gate_up(w1):
    """Interleaved (..., 2I) -> (gate, up), each (..., I) and contiguous."""
    if w1.shape[-1] % 2:
        raise ValueError(f"last dim {w1.shape[-1]} is odd: it must interleave gate and up")
    return w1[..., 0::2].contiguous(), w1[..., 1::2].contiguous()


def concat_gate_up(w1):
    """Interleaved (..., 2I) -> [gate | up] concatenated (the inverse of interleave_gate_up)."""
    import torch

    gate, up = split_gate_up(w1)
    return torch.cat((gate, up), dim=-1)
