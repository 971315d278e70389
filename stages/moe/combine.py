"""Stage D's combine as a CuTe DSL kernel (variant combine=cute; the default is the torch
combine of stages/moe/pipeline.py, which it equals up to fp32 rounding: the kernel's
w·v + acc is one FMA (the PTX has fma.rn.f32), torch's a multiply and an add):

    y[t, c] = Σ_j w[t, j] · out[inverse[t, j], c]     j = 0..k-1 in order, fp32, one rounding

One pass over `out`: CTA (t, b) owns token t's columns b·THREADS .. b·THREADS + THREADS - 1,
thread i one column (a warp reads 32 adjacent columns of one routed row: coalesced), the k
choices unrolled (k is compile-time: stage D compiles per topk). No atomics, no temporaries:
the torch combine's k passes over a (T, H) fp32 accumulator become one read of out and one
write of y. The combine bugs of stage D's ``bug`` variant are compiled in the same way.
Untested on a GPU when written (CPU: it compiles for sm_90a); tests/test_moe_pipeline.py's
GPU tests compare it with the torch combine.
"""

from __future__ import annotations

from typing import Type

import cutlass
import cutlass.cute as cute
from cutlass import Float32, const_expr

THREADS = 256


class MoeCombine:
    def __init__(self, dtype: Type[cutlass.Numeric], h: int, k: int, bug: str = "none"):
        self.dtype, self.h, self.k, self.bug = dtype, h, k, bug

    @cute.jit
    def __call__(self, mOut_in: cute.Tensor, mInv_in: cute.Tensor, mW_in: cute.Tensor, mY_in: cute.Tensor, stream):
        mOut = cute.make_tensor(mOut_in.iterator, cute.make_layout((mOut_in.shape[0], self.h), stride=(self.h, 1)))
        mY = cute.make_tensor(mY_in.iterator, cute.make_layout((mY_in.shape[0], self.h), stride=(self.h, 1)))
        mInv = cute.make_tensor(mInv_in.iterator, cute.make_layout((mInv_in.shape[0], self.k), stride=(self.k, 1)))
        mW = cute.make_tensor(mW_in.iterator, cute.make_layout((mW_in.shape[0], self.k), stride=(self.k, 1)))
        col_blocks = (self.h + THREADS - 1) // THREADS
        self.kernel(mOut, mInv, mW, mY).launch(grid=(mY.shape[0], col_blocks, 1), block=[THREADS, 1, 1], stream=stream)

    @cute.kernel
    def kernel(self, mOut: cute.Tensor, mInv: cute.Tensor, mW: cute.Tensor, mY: cute.Tensor):
        tidx, _, _ = cute.arch.thread_idx()
        t, cb, _ = cute.arch.block_idx()
        col = cb * THREADS + tidx
        if col < self.h:
            acc = Float32(0.0)
            for j in cutlass.range_constexpr(self.k):
                v = mOut[mInv[t, j], col].to(Float32)
                if const_expr(self.bug != "topk_weights_skipped"):
                    v = v * mW[t, j]
                    if const_expr(self.bug == "topk_weights_twice"):
                        v = v * mW[t, j]
                if const_expr(self.bug == "combine_overwrite"):
                    acc = v
                else:
                    acc = acc + v
            mY[t, col] = acc.to(self.dtype)


def compile_combine(dtype_name: str, h: int, k: int, bug: str = "none", arch: str = "sm_90a"):
    """The compiled combine for (dtype, h, k, bug); no GPU needed."""
    from cutlass import Int32

    from stages.moe import host

    dtype = host.cute_dtype(dtype_name)
    kernel = MoeCombine(dtype, h, k, bug)
    return host.compile_for(arch, kernel, host.fake_tensor(dtype, 2), host.fake_tensor(Int32, 2),
                            host.fake_tensor(Float32, 2), host.fake_tensor(dtype, 2), host.fake_stream())


def run_combine(fn, y, out, inverse, weights) -> None:
    from stages.moe import host

    fn(host.to_cute(out), host.to_cute(inverse), host.to_cute(weights.float().contiguous()), host.to_cute(y),
       host.current_stream())
