"""Peers for `wb bench`: other attention kernels timed on the same tensors as our stage.

make_peer(name, inputs, params) returns a zero-argument callable that runs the peer once,
or None when it is not installed. Stage D's tensors are (batch, seqlen, heads, d) as in
flash-attn; torch SDPA takes (batch, heads, seqlen, d), so it gets transposed views.
`cutlass-example` is CUTLASS's CuTe DSL Hopper FMHA example, loaded from the user's CUTLASS
checkout (WB_CUTLASS_EXAMPLES; see peer_cutlass.py).
"""

from __future__ import annotations

import math


def _as_bhsd(t):
    """(b, s, h, d) -> (b, h, s, d) view; a 2-D (s, d) stage-C tensor -> (1, 1, s, d)."""
    if t.dim() == 2:
        return t.unsqueeze(0).unsqueeze(0)
    return t.transpose(1, 2)


def _as_bshd(t):
    return t.unsqueeze(0).unsqueeze(2) if t.dim() == 2 else t


# name -> one line of help (`wb bench` checks --peers against these and lists them)
PEERS = {
    "sdpa-flash": "torch SDPA, FlashAttention backend",
    "sdpa-cudnn": "torch SDPA, cuDNN backend",
    "sdpa-efficient": "torch SDPA, memory-efficient backend",
    "sdpa-math": "torch SDPA, math backend",
    "fa4": "FlashAttention-4 (flash_attn.cute)",
    "cutlass-example": "CUTLASS's CuTe DSL Hopper FMHA example (set WB_CUTLASS_EXAMPLES to a checkout's examples/python/CuTeDSL)",
}
# settings the peers read in the worker: sent with each job (a warm worker may predate them)
PEER_ENV = ("WB_CUTLASS_EXAMPLES",)
# `wb profile --peers`: the ncu kernel-name filter of each peer's attention kernel (FA4 and the
# CUTLASS example are CuTe DSL kernels, named like ours; SDPA's by its backend)
PROFILE_KERNELS = {
    "fa4": "regex:kernel_cutlass",
    "cutlass-example": "regex:kernel_cutlass",
    "sdpa-cudnn": "regex:cudnn",
    "sdpa-flash": "regex:flash",
    "sdpa-efficient": "regex:fmha|efficient|mem_eff",
}

SDPA_BACKENDS = {
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
    "sdpa-math": "MATH",
}


def _mask(params, m: int, n: int):
    """(align, window_left, window_right) of stage D's mask parameters (stages/fmha/mask.py);
    window_right is 0 for causal. ``plain``: a mask SDPA's is_causal expresses (no window,
    top-left, or bottom-right with m == n)."""
    align = str(params.get("align") or "top_left")
    wl = int(params.get("window_left", -1) if params.get("window_left") is not None else -1)
    wr = int(params.get("window_right", -1) if params.get("window_right") is not None else -1)
    if bool(params.get("causal", False)):
        wr = 0
    plain = wl < 0 and wr in (-1, 0) and (align == "top_left" or m == n or wr < 0)
    return align, wl, wr, plain


def _varlen_peer(name: str, inputs, causal: bool, scale: float):
    """varlen=true (packed q/k/v, cu_seqlens): FA4's varlen path (None when not installed);
    the other peers take no packed batch (a ValueError: the bench row says so). FA4 aligns
    causal bottom-right: the same as stage D's top-left where a sequence's q and k lengths
    are equal."""
    if name != "fa4":
        raise ValueError(f"{name} takes no packed variable-length batch (varlen=true)")
    try:
        from flash_attn.cute import flash_attn_varlen_func
    except ImportError:
        return None
    cu_q = inputs["cu_seqlens_q"]
    if "block_table" in inputs:  # over a paged cache: flash-attn's page_table and seqused_k
        keys = {"page_table": inputs["block_table"], "seqused_k": inputs["cache_seqlens"]}
        max_k = int(inputs["cache_seqlens"].max())
    else:
        keys = {"cu_seqlens_k": inputs["cu_seqlens_k"]}
        max_k = int(inputs["cu_seqlens_k"].diff().max())  # once, outside the timing
    max_q = int(cu_q.diff().max())

    def run():
        return flash_attn_varlen_func(
            inputs["q"], inputs["k"], inputs["v"], cu_seqlens_q=cu_q, **keys,
            max_seqlen_q=max_q, max_seqlen_k=max_k, softmax_scale=scale, causal=causal,
        )

    run()  # the first call compiles: keep it out of the timing
    return run


def make_peer(name: str, inputs, params):
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    causal = bool(params.get("causal", False))
    scale = 1.0 / math.sqrt(q.shape[-1])
    softcap = float(params.get("softcap", 0.0) or 0.0)
    if softcap and name != "fa4":
        raise ValueError(f"peer {name} has no softcap (softcap={softcap}): only fa4 takes one")
    if "cu_seqlens_q" in inputs:
        return _varlen_peer(name, inputs, causal, scale)
    paged = "block_table" in inputs
    if paged and name != "fa4":
        raise ValueError(f"{name} reads no paged KV cache (page_size={params.get('page_size')}): only fa4 takes a block table")
    m = q.shape[-3] if q.dim() == 4 else q.shape[-2]
    n = int(inputs["cache_seqlens"].max()) if paged else (k.shape[-3] if k.dim() == 4 else k.shape[-2])
    align, wl, wr, plain = _mask(params, m, n)
    if not plain and name != "fa4":
        # timing a peer on another (full or top-left) mask would compare unequal work
        raise ValueError(f"{name} has no sliding window / bottom-right mask (align={align}, window=({wl}, {wr}))")
    if name in SDPA_BACKENDS:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, SDPA_BACKENDS[name])
        qt, kt, vt = _as_bhsd(q), _as_bhsd(k), _as_bhsd(v)
        gqa = qt.shape[1] != kt.shape[1]

        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale, enable_gqa=gqa)

        with torch.no_grad():
            run()  # fails here (not inside the timing) when the backend does not take these inputs
        return run
    if name == "fa4":
        ns = sorted(set(inputs["cache_seqlens"].tolist())) if paged else [n]  # paged: each sequence's own n
        if (wl >= 0 or wr >= 0) and align == "top_left" and ns != [m]:  # (wr is 0 for causal)
            raise ValueError("fa4 aligns causal and windows bottom-right: align=top_left with m != n is another mask")
        try:
            from flash_attn.cute import flash_attn_func
        except ImportError:
            return None
        qb, kb, vb = _as_bshd(q), _as_bshd(k), _as_bshd(v)
        # FA4's window_size: None is unbounded; causal keeps its own right edge (0)
        window = {} if plain else {"window_size": (wl if wl >= 0 else None, None if causal or wr < 0 else wr)}

        extra = {"softcap": softcap} if softcap else {}  # flash-attn's softcap: c tanh(s / c), s scaled

        if paged:  # k, v are FA4's paged caches too: (num_pages, page_size, kv_heads, d)
            from flash_attn.cute import flash_attn_varlen_func

            table, used = inputs["block_table"], inputs["cache_seqlens"]

            def run():
                return flash_attn_varlen_func(qb, k, v, page_table=table, seqused_k=used, softmax_scale=scale,
                                              causal=causal, **window, **extra)
        else:
            def run():
                return flash_attn_func(qb, kb, vb, softmax_scale=scale, causal=causal, **window, **extra)

        run()  # the first call compiles (1-2 s): keep it out of the timing
        return run
    if name == "cutlass-example":
        from stages.fmha import peer_cutlass

        return peer_cutlass.make_cutlass_peer(_as_bshd(q), _as_bshd(k), _as_bshd(v), causal, scale)
    raise ValueError(f"unknown peer {name!r}")


def missing_note(name: str) -> str | None:
    """Why make_peer(name) returned None, when there is more to say than 'not installed'."""
    if name == "cutlass-example":
        from stages.fmha import peer_cutlass

        return peer_cutlass.missing_note()
    return None
