"""Stage B: P = softmax(Q K^T * scale) row-wise, from the WGMMA accumulator in registers.

Shapes: Q (m, d), K (n, d) bf16/fp16 row-major; P (m, n) in the same dtype; scale =
1/sqrt(d); d in {64, 128}; m, n multiples of 128. Variant ``softmax=identity``: P = (Q K^T
* scale) cast to the dtype (no softmax: isolates data movement from the arithmetic).

One CTA owns a 128-row block of Q (grid (m/128, 1, 1)) and walks all n/128 KV tiles.

Design choices
--------------
* Two warpgroups (256 threads), 64 rows each, exactly as stage A (same tiled MMA, same
  smem layouts, same accumulator fragment): 64 fp32 accumulators per thread, so the
  softmax math has registers to spare and 256 threads share the exp/stores.
* Two passes over the KV tiles (``softmax=exp``):
    pass 1: S_j = Q K_j^T for j = 0..T-1; per row an online max/sum:
        m_new = max(m, rowmax(S_j)),  l = l * 2^((m - m_new) * c) + sum 2^(S_j * c - m_new * c)
      with c = scale * log2(e) (one FMA per element feeds exp2). The tile's row max is
      reduced across the 4 lanes of the quad that holds the row (shuffle xor 1, 2) so every
      lane rescales with the same max; the per-lane partial sums are quad-reduced once, at
      the end of the pass.
    pass 2: recompute S_j (bitwise the same WGMMA on the same data), P = 2^(S_j c - m c) / l,
      convert and store.
  An online single pass cannot write normalized P before it has seen every tile; recomputing
  S costs one more QK^T but no extra memory traffic for P. ``softmax=identity`` runs only
  one pass (the store pass with P = S * scale).
* K tiles are double-buffered in shared memory (2 stages, one "full" mbarrier each); the load
  sequence is one list of 2T (or T) loads, load i bringing tile i mod T into stage i % 2,
  whose mbarrier phase is (i // 2) % 2. After the MMA of load i completes in both
  warpgroups (wgmma wait + CTA barrier), warp 0 issues load i + 2 into the freed stage;
  the softmax math of tile i overlaps that copy. Q is loaded once (its own mbarrier).
* P is written from registers straight to global memory (2 adjacent elements per thread
  and 8 columns: 4-byte stores), tile j of the 128-row block = columns [128 j, 128 j + 128).
* Dynamic m and n (one compile per (d, dtype, variant)); the number of KV tiles is read
  from K's runtime shape.
"""

from __future__ import annotations

import math
from typing import Mapping, Type

import cutlass
import cutlass.cute as cute
import cutlass.memory
from cutlass import Float32, Int32, const_expr

from stages.fmha import common, host
from workbench.compile.probe import probe
from workbench.kernels.stage import Params, Stage, TensorSpec

NUM_K_STAGES = 2


class FmhaSoftmax:
    """P = softmax(Q K^T * scale) (or identity), one 128-row Q block per CTA."""

    def __init__(
        self,
        dtype: Type[cutlass.Numeric],
        d: int,
        softmax: str = "exp",
        tile_m: int = 128,
        tile_n: int = 128,
    ):
        assert d in (64, 128)
        assert softmax in ("exp", "identity")
        self.dtype = dtype
        self.d = d
        self.is_exp = softmax == "exp"
        self.tile_m = tile_m
        self.tile_n = tile_n
        self.num_wg = tile_m // 64
        self.num_threads = common.WG_THREADS * self.num_wg

    @cute.jit
    def __call__(
        self,
        mQ: cute.Tensor,
        mK: cute.Tensor,
        mP: cute.Tensor,
        scale: Float32,
        stream,
    ):
        tiled_mma, sQ_layout, sK_layout, (tma_atom_q, tma_q), (tma_atom_k, tma_k) = common.qk_tile_operands(
            self.dtype, mQ, mK, self.tile_m, self.tile_n, self.d, NUM_K_STAGES
        )
        self.q_bytes = common.tma_tile_bytes(self.dtype, sQ_layout)
        self.k_bytes = common.tma_tile_bytes(self.dtype, sK_layout)  # one stage

        @cute.struct
        class SharedStorage:
            q_full: cute.struct.MemRange[cutlass.Int64, 1]
            k_full: cute.struct.MemRange[cutlass.Int64, NUM_K_STAGES]
            sQ: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024]
            sK: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sK_layout)], 1024]

        self.shared_storage = SharedStorage

        grid = (cute.ceil_div(cute.size(mQ, mode=[0]), self.tile_m), 1, 1)
        self.kernel(
            tma_atom_q, tma_q, tma_atom_k, tma_k, mP, tiled_mma, sQ_layout, sK_layout, scale
        ).launch(grid=grid, block=[self.num_threads, 1, 1], stream=stream)

    @cute.kernel
    def kernel(
        self,
        tma_atom_q: cute.CopyAtom,
        mQ: cute.Tensor,
        tma_atom_k: cute.CopyAtom,
        mK: cute.Tensor,
        mP: cute.Tensor,
        tiled_mma: cute.TiledMma,
        sQ_layout: cute.ComposedLayout,
        sK_layout: cute.ComposedLayout,
        scale: Float32,
    ):
        tidx, _, _ = cute.arch.thread_idx()
        m_block, _, _ = cute.arch.block_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())

        smem = cutlass.memory.SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        q_full = storage.q_full.data_ptr()
        k_full = storage.k_full.data_ptr()
        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)  # (128, d)
        sK = storage.sK.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)  # (128, d, 2)

        if warp_idx == 0:
            cute.nvgpu.cpasync.prefetch_descriptor(tma_atom_q)
            cute.nvgpu.cpasync.prefetch_descriptor(tma_atom_k)
            with cute.arch.elect_one():
                cute.arch.mbarrier_init(q_full, 1)
                for s in cutlass.range_constexpr(NUM_K_STAGES):
                    cute.arch.mbarrier_init(k_full + s, 1)
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()

        # ---- TMA partitions --------------------------------------------------------------
        gQ = cute.local_tile(mQ, (self.tile_m, self.d), (m_block, 0))  # (128, d)
        gK = cute.local_tile(mK, (self.tile_n, self.d), (None, 0))  # (128, d, T)
        tQsQ, tQgQ = common.tma_partition_tile(tma_atom_q, sQ, gQ)
        tKsK, tKgK = common.tma_partition_tile(tma_atom_k, sK, gK)  # (TMA, 2), (TMA, T)
        probe("gQ", gQ)
        probe("gK", gK)
        probe("tQgQ", tQgQ)
        probe("tQsQ", tQsQ)
        probe("tKgK", tKgK)
        probe("tKsK", tKsK)
        num_tiles = cute.size(gK, mode=[2])
        num_loads = num_tiles * (2 if const_expr(self.is_exp) else 1)

        if warp_idx == 0:
            with cute.arch.elect_one():
                cute.arch.mbarrier_arrive_and_expect_tx(q_full, self.q_bytes)
            cute.copy(tma_atom_q, tQgQ, tQsQ, tma_bar_ptr=q_full)
            for i in cutlass.range_constexpr(NUM_K_STAGES):
                if i < num_loads:
                    self.load_k(tma_atom_k, tKgK, tKsK, k_full, Int32(i), num_tiles)

        # ---- MMA partitions: warpgroup w owns rows [64 w, 64 w + 64) ---------------------
        wg_idx = cute.arch.make_warp_uniform(tidx // common.WG_THREADS)
        thr_mma, tSrQ, tSrK = common.qk_fragments(tiled_mma, sQ, sK, tidx, wg_idx, self.num_wg)  # tSrK: (.., .., k, stage)
        gP = cute.local_tile(mP, (self.tile_m, self.tile_n), (m_block, None))  # (128, 128, T)
        tSgP = thr_mma.partition_C(gP)  # (frag, 1, 1, T)
        tSrS = cute.make_rmem_tensor(tSgP[None, None, None, 0].shape, Float32)
        tSrP = cute.make_rmem_tensor(tSrS.shape, self.dtype)
        probe("tSrQ", tSrQ)
        probe("tSrK", tSrK)
        probe("tSrS", tSrS)
        probe("tSgP", tSgP)
        probe("tSrP", tSrP)

        # rows of this thread: (2, MMA_M); row statistics live in registers
        tSrS_rows = common.acc_row_view(tSrS)
        probe("tSrS_rows", tSrS_rows)
        num_rows = cute.size(tSrS_rows, mode=[0])
        num_cols = cute.size(tSrS_rows, mode=[1])
        row_max = cute.make_rmem_tensor(num_rows, Float32)
        row_sum = cute.make_rmem_tensor(num_rows, Float32)
        row_max.fill(-Float32.inf)
        row_sum.fill(0.0)
        scale_log2 = scale * Float32(common.LOG2_E)

        cute.arch.mbarrier_wait(q_full, 0)

        # ---- pass 1 (exp only): online row max / row sum over all KV tiles -------------
        if const_expr(self.is_exp):
            for j in cutlass.range(num_tiles, unroll=1):
                self.mma_tile(tiled_mma, tSrS, tSrQ, tSrK, tma_atom_k, tKgK, tKsK, k_full,
                              j, num_loads, num_tiles, warp_idx)
                for r in cutlass.range_constexpr(num_rows):
                    mx = tSrS_rows[r, 0]
                    for c in cutlass.range_constexpr(1, num_cols):
                        mx = cute.arch.fmax(mx, tSrS_rows[r, c])
                    mx = common.quad_allreduce(mx, common.fmax)
                    m_new = cute.arch.fmax(row_max[r], mx)
                    m_new_scaled = m_new * scale_log2
                    # rescale the running sum; 2^(-inf) = 0 on the first tile
                    acc = row_sum[r] * cute.math.exp2(row_max[r] * scale_log2 - m_new_scaled, fastmath=True)
                    for c in cutlass.range_constexpr(num_cols):
                        acc += cute.math.exp2(tSrS_rows[r, c] * scale_log2 - m_new_scaled, fastmath=True)
                    row_sum[r] = acc
                    row_max[r] = m_new
            for r in cutlass.range_constexpr(num_rows):
                row_sum[r] = cute.arch.rcp_approx(common.quad_allreduce(row_sum[r], common.fadd))
                row_max[r] = row_max[r] * scale_log2  # now the scaled max

        # ---- store pass: P for every KV tile ---------------------------------------------
        pass_offset = num_tiles if const_expr(self.is_exp) else 0
        for j in cutlass.range(num_tiles, unroll=1):
            self.mma_tile(tiled_mma, tSrS, tSrQ, tSrK, tma_atom_k, tKgK, tKsK, k_full,
                          j + pass_offset, num_loads, num_tiles, warp_idx)
            if const_expr(self.is_exp):
                for r in cutlass.range_constexpr(num_rows):
                    for c in cutlass.range_constexpr(num_cols):
                        tSrS_rows[r, c] = (
                            cute.math.exp2(tSrS_rows[r, c] * scale_log2 - row_max[r], fastmath=True)
                            * row_sum[r]
                        )
            else:
                tSrS.store(tSrS.load() * scale)
            tSrP.store(tSrS.load().to(self.dtype))
            cute.autovec_copy(tSrP, tSgP[None, None, None, j])

    @cute.jit
    def load_k(self, tma_atom_k, tKgK, tKsK, k_full, i: Int32, num_tiles: Int32):
        """Issue load number ``i`` of the sequence (tile i mod T into stage i % 2). Called by
        the whole of warp 0 (the TMA copy elects its own lane)."""
        stage = i % NUM_K_STAGES
        tile = i % num_tiles
        with cute.arch.elect_one():
            cute.arch.mbarrier_arrive_and_expect_tx(k_full + stage, self.k_bytes)
        cute.copy(tma_atom_k, tKgK[None, tile], tKsK[None, stage], tma_bar_ptr=k_full + stage)

    @cute.jit
    def mma_tile(self, tiled_mma, tSrS, tSrQ, tSrK, tma_atom_k, tKgK, tKsK, k_full,
                 i: Int32, num_loads: Int32, num_tiles: Int32, warp_idx: Int32):
        """Wait for load ``i``, S = Q K^T into tSrS, free the stage and refill it with load
        i + 2 (after every warpgroup's MMA has finished reading it)."""
        stage = i % NUM_K_STAGES
        phase = (i // NUM_K_STAGES) % 2
        cute.arch.mbarrier_wait(k_full + stage, phase)
        common.wgmma_zero_init(tiled_mma, tSrS, tSrQ, tSrK[None, None, None, stage])
        cute.arch.sync_threads()  # both warpgroups are done reading this stage
        if warp_idx == 0:
            if i + NUM_K_STAGES < num_loads:
                self.load_k(tma_atom_k, tKgK, tKsK, k_full, i + NUM_K_STAGES, num_tiles)


# --------------------------------------------------------------------------------------
# wb stage
# --------------------------------------------------------------------------------------
class StageB(Stage):
    """wb stage B: P = softmax(Q K^T * scale) (variant softmax=exp|identity)."""
    proves = (
        "The row max and row sum are reduced across the 4 threads that hold a row, exp2 with "
        "log2(e)·scale folded in is right, the K tiles of a whole row go through a 2-stage TMA "
        "pipeline with the tile index from the loop, and P leaves the accumulator layout in the "
        "right places (identity-softmax isolates the data movement)."
    )
    cannot_see = (
        "P as the PV MMA reads it (B stores P to memory; the register-operand layout is stage C's), "
        "V and O, and the online rescale (B makes two passes: it never rescales)."
    )
    compile_params = ("d", "dtype")  # m and n are runtime values

    def inputs(self, p: Params) -> dict[str, TensorSpec]:
        return {"q": TensorSpec((p.m, p.d), p.dtype), "k": TensorSpec((p.n, p.d), p.dtype)}

    def outputs(self, p: Params) -> dict[str, TensorSpec]:
        return {"p": TensorSpec((p.m, p.n), p.dtype)}

    def compile(self, p: Params, variants: Mapping[str, str], arch: str):
        """One compile per (d, dtype, softmax): m and n are dynamic (multiples of 128)."""
        dtype = common.cute_dtype(p.dtype)
        q = host.fake_tensor(dtype, 2)
        k = host.fake_tensor(dtype, 2)
        out = host.fake_tensor(dtype, 2)
        scale = Float32(1.0 / math.sqrt(p.d))
        self.kernel_obj = FmhaSoftmax(dtype, p.d, softmax=host.variants_of("b", variants)["softmax"])
        return host.compile_for(arch, self.kernel_obj, q, k, out, scale, host.fake_stream())

    def launch(self, compiled, inputs, outputs) -> None:
        q, k, out = inputs["q"], inputs["k"], outputs["p"]
        host.check_launch_shapes(q, k, out)
        scale = Float32(1.0 / math.sqrt(q.shape[1]))
        compiled(host.to_cute(q), host.to_cute(k), host.to_cute(out), scale, host.current_stream())

    def reference(self, inputs, p: Params, variants, compute_dtype):
        from stages.fmha import reference

        softmax = host.variants_of("b", variants)["softmax"]
        return {"p": reference.softmax_probs(inputs["q"], inputs["k"], compute_dtype, softmax=softmax)}
