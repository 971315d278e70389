"""Stage A: S = Q K^T * scale with TMA + WGMMA on Hopper; fp32 S stored to global memory.

Shapes: Q (m, d), K (n, d) in bf16 or fp16, row-major (d contiguous); S (m, n) fp32;
scale = 1/sqrt(d); d in {64, 128}; m, n multiples of 128.

One CTA computes one 128 x 128 tile of S; grid (m/128, n/128, 1); CTA (i, j) loads the Q
rows [128 i, 128 i + 128) and the K rows [128 j, 128 j + 128) (TMA box coordinates come
from block_idx, never pinned).

Design choices
--------------
* Two warpgroups (256 threads), each owning 64 rows of the tile. A WGMMA instruction is
  64 rows tall anyway; with one warpgroup of 128 rows every thread would hold 128 fp32
  accumulators (2 MMAs along M), with two it holds 64. Stage B does its softmax on those
  registers, so halving them leaves room and doubles the threads doing exp/stores. Both
  warpgroups read the whole K tile from shared memory, each its own half of Q.
* One mbarrier, one phase: thread 0's warp posts the expected byte count (Q tile + K tile
  bytes, computed from the same smem layouts the TMA atoms were built from) and issues both
  TMA loads on it; all threads wait on phase 0.
* WGMMA: fence, d/16 MMAs (the first one overwrites the accumulator), commit, wait(0).
* S is written from the accumulator registers straight to global memory (each thread owns
  2 adjacent fp32 of a row per 8 columns; a quad covers 32 contiguous bytes; the row stride is
  a runtime value of unknown divisibility, so the stores are 4-byte).
  No smem epilogue: this stage is about getting S right, and it keeps the store's coverage
  obvious (the partition of the 128 x 128 gmem tile is the accumulator's own partition).
* Dynamic m and n: one compile serves every m and n (multiples of 128) for a given
  (d, dtype); the grid is computed on the host from the runtime shape. d is static.
"""

from __future__ import annotations

import math
from typing import Mapping, Type

import cutlass
import cutlass.cute as cute
import cutlass.memory
from cutlass import Float32

from workbench.compile.probe import probe
from workbench.kernels.stage import Params, Stage, TensorSpec

from stages.fmha import common, host


class FmhaQK:
    """S = Q K^T * scale, one 128 x 128 tile of S per CTA (see the module docstring)."""

    def __init__(self, dtype: Type[cutlass.Numeric], d: int, tile_m: int = 128, tile_n: int = 128):
        assert d in (64, 128)
        assert tile_m % 64 == 0
        self.dtype = dtype
        self.d = d
        self.tile_m = tile_m
        self.tile_n = tile_n
        self.num_wg = tile_m // 64
        self.num_threads = common.WG_THREADS * self.num_wg

    @cute.jit
    def __call__(
        self,
        mQ: cute.Tensor,
        mK: cute.Tensor,
        mS: cute.Tensor,
        scale: Float32,
        stream,
    ):
        tiled_mma, sQ_layout, sK_layout, (tma_atom_q, tma_q), (tma_atom_k, tma_k) = common.qk_tile_operands(
            self.dtype, mQ, mK, self.tile_m, self.tile_n, self.d
        )
        # Bytes the two TMA loads deliver = what the mbarrier must expect.
        self.tx_bytes = common.tma_tile_bytes(self.dtype, sQ_layout) + common.tma_tile_bytes(
            self.dtype, sK_layout
        )

        @cute.struct
        class SharedStorage:
            mbar: cute.struct.MemRange[cutlass.Int64, 1]
            sQ: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024]
            sK: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sK_layout)], 1024]

        self.shared_storage = SharedStorage

        grid = (
            cute.ceil_div(cute.size(mQ, mode=[0]), self.tile_m),
            cute.ceil_div(cute.size(mK, mode=[0]), self.tile_n),
            1,
        )
        self.kernel(
            tma_atom_q, tma_q, tma_atom_k, tma_k, mS, tiled_mma, sQ_layout, sK_layout, scale
        ).launch(grid=grid, block=[self.num_threads, 1, 1], stream=stream)

    @cute.kernel
    def kernel(
        self,
        tma_atom_q: cute.CopyAtom,
        mQ: cute.Tensor,
        tma_atom_k: cute.CopyAtom,
        mK: cute.Tensor,
        mS: cute.Tensor,
        tiled_mma: cute.TiledMma,
        sQ_layout: cute.ComposedLayout,
        sK_layout: cute.ComposedLayout,
        scale: Float32,
    ):
        tidx, _, _ = cute.arch.thread_idx()
        m_block, n_block, _ = cute.arch.block_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())

        smem = cutlass.memory.SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        mbar = storage.mbar.data_ptr()
        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sK = storage.sK.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)

        if warp_idx == 0:
            cute.nvgpu.cpasync.prefetch_descriptor(tma_atom_q)
            cute.nvgpu.cpasync.prefetch_descriptor(tma_atom_k)
            with cute.arch.elect_one():
                cute.arch.mbarrier_init(mbar, 1)
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()

        # ---- TMA: this CTA's Q rows (m_block) and K rows (n_block) ----------------------
        gQ = cute.local_tile(mQ, (self.tile_m, self.d), (m_block, 0))  # (128, d)
        gK = cute.local_tile(mK, (self.tile_n, self.d), (n_block, 0))  # (128, d)
        tQsQ, tQgQ = common.tma_partition_tile(tma_atom_q, sQ, gQ)
        tKsK, tKgK = common.tma_partition_tile(tma_atom_k, sK, gK)
        probe("gQ", gQ)
        probe("gK", gK)
        probe("tQgQ", tQgQ)
        probe("tQsQ", tQsQ)
        probe("tKgK", tKgK)
        probe("tKsK", tKsK)

        if warp_idx == 0:
            with cute.arch.elect_one():
                cute.arch.mbarrier_arrive_and_expect_tx(mbar, self.tx_bytes)
            # TMA copies are issued by one elected lane internally: call with the full warp.
            cute.copy(tma_atom_q, tQgQ, tQsQ, tma_bar_ptr=mbar)
            cute.copy(tma_atom_k, tKgK, tKsK, tma_bar_ptr=mbar)

        # ---- MMA fragments: warpgroup w owns rows [64 w, 64 w + 64) ---------------------
        wg_idx = cute.arch.make_warp_uniform(tidx // common.WG_THREADS)
        thr_mma, tSrQ, tSrK = common.qk_fragments(tiled_mma, sQ, sK, tidx, wg_idx, self.num_wg)
        gS = cute.local_tile(mS, (self.tile_m, self.tile_n), (m_block, n_block))  # (128, 128)
        tSgS = thr_mma.partition_C(gS)
        tSrS = cute.make_rmem_tensor(tSgS.shape, Float32)
        probe("tSrQ", tSrQ)
        probe("tSrK", tSrK)
        probe("tSrS", tSrS)
        probe("tSgS", tSgS)

        cute.arch.mbarrier_wait(mbar, 0)
        common.wgmma_zero_init(tiled_mma, tSrS, tSrQ, tSrK)

        # ---- epilogue: S = acc * scale, registers -> global ------------------------------
        tSrS.store(tSrS.load() * scale)
        cute.autovec_copy(tSrS, tSgS)


# --------------------------------------------------------------------------------------
# wb stage
# --------------------------------------------------------------------------------------
class StageA(Stage):
    """wb stage A: S = Q K^T * scale (fp32)."""
    proves = (
        "Q and K reach shared memory through TMA at the right tile coordinates (block index, "
        "never pinned), the mbarrier expects exactly the bytes delivered, the swizzled smem layout "
        "matches what WGMMA reads, and S = Q·Kᵀ·scale leaves the fp32 accumulator in the right "
        "(row, column) places for every 128×128 tile of any m, n."
    )
    cannot_see = (
        "Anything about P or O: the softmax, its row reductions, P's register layout for the PV "
        "MMA, V's loads, the KV pipeline across tiles (one K tile per CTA here) and the online rescale."
    )
    compile_params = ("d", "dtype")  # m and n are runtime values

    def inputs(self, p: Params) -> dict[str, TensorSpec]:
        return {"q": TensorSpec((p.m, p.d), p.dtype), "k": TensorSpec((p.n, p.d), p.dtype)}

    def outputs(self, p: Params) -> dict[str, TensorSpec]:
        return {"s": TensorSpec((p.m, p.n), "fp32")}

    def compile(self, p: Params, variants: Mapping[str, str], arch: str):
        """One compile per (d, dtype): m and n are dynamic (multiples of 128)."""
        dtype = common.cute_dtype(p.dtype)
        q = host.fake_tensor(dtype, 2)
        k = host.fake_tensor(dtype, 2)
        s = host.fake_tensor(Float32, 2)
        scale = Float32(1.0 / math.sqrt(p.d))
        self.kernel_obj = FmhaQK(dtype, p.d)  # kept for introspection (tests, wb shapes)
        return host.compile_for(arch, self.kernel_obj, q, k, s, scale, host.fake_stream())

    def launch(self, compiled, inputs, outputs) -> None:
        q, k, s = inputs["q"], inputs["k"], outputs["s"]
        host.check_launch_shapes(q, k, s)
        scale = Float32(1.0 / math.sqrt(q.shape[1]))
        compiled(host.to_cute(q), host.to_cute(k), host.to_cute(s), scale, host.current_stream())

    def reference(self, inputs, p: Params, variants, compute_dtype):
        from stages.fmha import reference

        return {"s": reference.scores(inputs["q"], inputs["k"], compute_dtype)}
