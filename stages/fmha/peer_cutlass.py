"""The `cutlass-example` peer: NVIDIA CUTLASS's CuTe DSL Hopper FMHA example on our tensors.

None of the example's code lives in this repository. It is imported at run time, by path,
from the user's own CUTLASS checkout: WB_CUTLASS_EXAMPLES names that checkout's
``examples/python/CuTeDSL`` folder. That folder is on sys.path only while the file loads,
because the example imports its sibling package ``helpers`` (``helpers.fmha_helpers``).

What this adapter relies on, from ``cute/hopper/kernel/attention/fmha.py``:

* ``HopperFusedMultiHeadAttentionForward(qk_acc_dtype, pv_acc_dtype, mma_tiler, is_persistent,
  mask_type)``: two MMA warpgroups, each taking mma_tiler = (M, N, d); a CTA covers 2*M rows.
* Calling it: ``(q, k, v, o, lse, scale_softmax_log2, scale_softmax, scale_output,
  window_left, window_right, stream)``, q and o as (s, d, h_r, h_k, b), k and v as
  (s, d, 1, h_k, b), lse fp32 (s, 1, h_r, h_k, b), d contiguous. Our flash-attn
  (b, s, h, d) tensors, h = h_k * h_r, are exactly that after a reshape and permute (views, no
  copy), with the same GQA head mapping (q head i reads kv head i // h_r).
* Causal is the window mask with right window 0 and no left window, aligned top-left like
  stage D and SDPA ``is_causal``. Without a mask, keys past a multiple of N need the residual
  mask (as the example's own run() chooses).
* ``can_implement(...)``: the example's own limits, reported here as the skip reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
from pathlib import Path

ENV = "WB_CUTLASS_EXAMPLES"
EXAMPLE = Path("cute/hopper/kernel/attention/fmha.py")
TILE_MN = (64, 128)  # per-warpgroup MMA tile (the example's default); CTA tile 128 x 128 x d
PERSISTENT = True  # as in the example's documented command line
HEAD_DIMS = (64, 128)

_modules: dict[str, object] = {}


def example_path() -> Path | None:
    root = os.environ.get(ENV)
    if not root:
        return None
    path = Path(root).expanduser() / EXAMPLE
    return path if path.is_file() else None


def missing_note() -> str:
    """Why the peer is not available (for wb bench's 'not installed' note)."""
    root = os.environ.get(ENV)
    if not root:
        return f"set {ENV} to the examples/python/CuTeDSL folder of a CUTLASS checkout"
    return f"{ENV}={root} has no {EXAMPLE}"


def load_example():
    """The example file imported as a module (once per process), or None when not found."""
    path = example_path()
    if path is None:
        return None
    path = path.resolve()
    key = str(path)
    if key not in _modules:
        root = str(path.parents[len(EXAMPLE.parts) - 1])
        name = "_wb_cutlass_fmha_" + hashlib.sha1(key.encode()).hexdigest()[:8]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, root)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        finally:
            sys.path.remove(root)
        _modules[key] = module
    return _modules[key]


def example_view(t, kv_heads: int):
    """(b, s, h, d) -> the example's (s, d, h // kv_heads, kv_heads, b), as a view."""
    return t.unflatten(2, (kv_heads, t.shape[2] // kv_heads)).permute(1, 4, 3, 2, 0)


def _cute_tensor(t):
    from cutlass.cute.runtime import from_dlpack

    return from_dlpack(t, assumed_align=16).mark_layout_dynamic(leading_dim=1)


def check_case(module, q, k, v, causal: bool, scale: float) -> None:
    """Raise a one-line ValueError / NotImplementedError for what the example cannot run."""
    import cutlass
    import torch

    dtypes = {torch.bfloat16: cutlass.BFloat16, torch.float16: cutlass.Float16}
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"needs q (b, s, h, d) and k, v (b, s, kv_heads, d); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in dtypes or k.dtype != q.dtype or v.dtype != q.dtype:
        raise NotImplementedError(f"the adapter runs bf16 or fp16 q, k, v of one dtype, not {q.dtype}/{k.dtype}/{v.dtype}")
    d = q.shape[-1]
    if d not in HEAD_DIMS:
        raise NotImplementedError(f"the adapter runs d in {HEAD_DIMS}, not d={d}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1 or t.data_ptr() % 16:
            raise ValueError(f"{name} must have a contiguous last dim and a 16-byte aligned start")
    window = (-1, 0) if causal else (-1, -1)
    ok, why = module.HopperFusedMultiHeadAttentionForward.can_implement(
        tuple(q.shape), tuple(k.shape), dtypes[q.dtype], dtypes[q.dtype], cutlass.Float32, cutlass.Float32,
        TILE_MN, PERSISTENT, scale, window, 1,
    )
    if not ok:
        raise ValueError(f"the CUTLASS example cannot run this case: {why}")


class ExamplePeer:
    """The example kernel compiled for one problem, its outputs allocated once; call() runs it."""

    def __init__(self, module, q, k, v, causal: bool, scale: float, arch: str | None = None):
        import cutlass
        import torch
        from cutlass import cute
        from cutlass.cute.runtime import make_fake_stream

        check_case(module, q, k, v, causal, scale)
        b, m, heads, d = q.shape
        kv_heads = k.shape[2]
        self.o = torch.empty_like(q)
        self.lse = torch.empty((b, m, heads, 1), dtype=torch.float32, device=q.device)
        self.tensors = [_cute_tensor(example_view(t, kv_heads)) for t in (q, k, v, self.o, self.lse)]
        # scale_softmax_log2, scale_softmax, scale_output, window left (none), window right
        self.scalars = (scale * math.log2(math.e), scale, 1.0, None, cutlass.Int32(0) if causal else None)
        masks = module.fmha_utils.MaskEnum
        if causal or k.shape[1] % TILE_MN[1] == 0:
            mask = masks.WINDOW_MASK
        else:
            mask = masks.RESIDUAL_MASK
        kernel = module.HopperFusedMultiHeadAttentionForward(cutlass.Float32, cutlass.Float32, (*TILE_MN, d), PERSISTENT, mask)
        compile_ = cute.compile[cute.GPUArch(arch)] if arch else cute.compile
        self.compiled = compile_(kernel, *self.tensors, *self.scalars, make_fake_stream())

    def __call__(self):
        import cuda.bindings.driver as cuda
        import torch

        stream = cuda.CUstream(torch.cuda.current_stream().cuda_stream)  # the capture stream under CUDA graphs
        self.compiled(*self.tensors, *self.scalars, stream)
        return self.o


def make_cutlass_peer(q, k, v, causal: bool, scale: float):
    """Compile the example for these tensors and run it once; None when it is not installed."""
    module = load_example()
    if module is None:
        return None
    peer = ExamplePeer(module, q, k, v, causal, scale)
    peer()  # first launch loads the module onto the GPU: keep it out of the timing
    return peer
