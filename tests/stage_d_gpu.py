"""Helpers of stage D's GPU tests (tests/test_split_kv_gpu.py, tests/test_short_tile_gpu.py):
random (batch, seq, heads, d) inputs on the GPU and a launch into outputs that start as NaN,
so a row the kernel never writes shows."""

from __future__ import annotations

import torch


def random_inputs(p, seed: int = 0) -> dict:
    """q, k, v of parameters ``p`` (m, n, batch, heads, kv_heads, d, dtype), normal, on the GPU."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    dt = torch.bfloat16 if p.dtype == "bf16" else torch.float16
    return {
        "q": torch.randn(p.batch, p.m, p.heads, p.d, generator=g).to(dt).cuda(),
        "k": torch.randn(p.batch, p.n, p.kv_heads, p.d, generator=g).to(dt).cuda(),
        "v": torch.randn(p.batch, p.n, p.kv_heads, p.d, generator=g).to(dt).cuda(),
    }


def nan_outputs(st, p) -> dict:
    """Stage ``st``'s outputs for ``p``, every element NaN."""
    return {name: torch.full(spec.shape, float("nan"), dtype=spec.torch_dtype(), device="cuda")
            for name, spec in st.outputs(p).items()}


def launch(st, compiled, p, inputs) -> dict:
    """One launch of ``compiled`` into NaN-filled outputs, synchronized."""
    outs = nan_outputs(st, p)
    st.launch(compiled, inputs, outs)
    torch.cuda.synchronize()
    return outs
