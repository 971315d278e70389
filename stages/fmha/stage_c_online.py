"""Stage C: O = softmax(Q K^T * scale) V over many KV tiles: TMA pipeline + online softmax.

Shapes: q (m, d), k (n, d), v (n, d) bf16/fp16 with d contiguous; o (m, d) in that dtype;
lse (m,) fp32 = logsumexp(Q K^T * scale) per row (natural log, as torch computes it).
scale = 1/sqrt(d); d in {64, 128}; m, n multiples of 128 (n up to 32768).

Design
------
* One CTA per 128-row Q tile, 3 warpgroups (384 threads), warp-specialized:
    WG0 = producer. setmaxnreg down to 24; its warp 0 issues every TMA load.
    WG1, WG2 = consumers, 64 rows of the Q tile each. setmaxnreg up to 240. Each runs the
    whole mainloop on its rows with its own 64-row MMAs (the same tile KV for both), so a
    later issue can turn them into ping-pong over two Q tiles without changing the math.
  Register budget: 128 x 24 + 256 x 240 = 64512 <= 65536.
* Shared memory: Q as two (64, d) halves (one per consumer WG, loaded once, a 2-stage
  PipelineTmaAsync whose stage w belongs to WG w), K and V each a ``kv_stages``-deep ring
  (2 for d = 128, 3 for d = 64) of (128, d) tiles with their own PipelineTmaAsync (full and
  empty mbarrier per stage), O as two (64, d) halves for the TMA store. d=128: 192 KiB.
* Pipeline: the producer walks j = 0 .. n/128 - 1: acquire stage (wait "empty" with the
  producer phase), arrive_and_expect_tx(tile bytes) on "full", TMA K_j and V_j with box
  coordinate j (the loop index). The state (index, phase) advances every tile; the phase
  flips each time the index wraps, so the ring cycles for any n. The consumers wait "full"
  with the consumer phase and release "empty" (lane 0 of each of the 8 consumer warps, so
  the empty barrier counts 8 arrivals).
* Per KV tile (consumer WG): wait K -> S = Q K^T (SS WGMMA, fence/commit/wait 0) ->
  release K -> online softmax on the fp32 accumulator (row max reduced over the quad,
  P = 2^(S c - m c), alpha = 2^((m_old - m_new) c), l and O rescaled by alpha) -> P
  converted to the PV MMA's A-operand register layout (``softmax.convert_p``; verified at
  trace time by ``softmax.check_p_operand_mapping``) -> wait V -> O += P V (RS WGMMA: the
  fence orders the register writes of P and of the O rescale before the MMA) -> release V.
  The first tile is peeled (no rescale).
* Epilogue per WG: quad-reduce l, O /= l, LSE = m scale + ln l (lanes with t % 4 == 0
  store their 2 rows), O -> bf16/fp16 -> smem with stmatrix -> fence.proxy.async ->
  WG barrier -> one warp TMA-stores its (64, d) box.
* Dynamic m and n: one compile per (d, dtype, variants) serves every m and n.

Variants (compile-time): ``softmax=exp|identity`` (identity: O = (Q K^T scale) V, no max/
exp/sum/1/l, LSE written as 0), ``rescale=on|off`` (off: neither O nor l is multiplied by
alpha -- deliberately wrong, for wb to catch), and bug injections, all off by default:
``bug=kv_tile0`` (K/V TMA box coordinate pinned to tile 0), ``bug=no_rescale`` (O is not
rescaled, l is), ``bug=pv_layout`` (the accumulator's 8-column chunks regrouped into PV
k-blocks the wrong way: k-block j gets chunks (j, j + 8) instead of (2j, 2j + 1), the
"p-layout" mutant of stages/fmha/mutants.py), ``bug=pv_rowmajor`` (P handed over in the
softmax's (row, col) register order), ``bug=stuck_pipeline`` (the consumer's
pipeline state never advances: it re-reads stage 0 with phase 0 and releases only stage 0;
the producer then blocks forever on stage 1 once n >= (stages + 2) tiles, i.e. n >= 512
for d = 128 -- a hang by design, for the watchdog; at n = 256 it just reads tile 0 twice).

No ``from __future__ import annotations`` here: ``cute.struct`` reads the class annotations
(MemRange[...]) at class creation and fails on postponed (string) annotations.
"""

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Type

import cutlass
import cutlass.cute as cute
import cutlass.memory
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32, const_expr
from cutlass.cute.nvgpu import OperandMajorMode, cpasync, warpgroup

from stages.fmha import common
from stages.fmha import softmax as sm
from workbench.compile.probe import probe
from workbench.kernels.stage import Params, Stage, TensorSpec

#: WB_FMHA_TRACE=1 prints the consumer's fragment layouts and the P-conversion proof while
#: tracing (static extents as numbers, dynamic ones as ?)
TRACE = os.environ.get("WB_FMHA_TRACE", "") not in ("", "0")


def trace_print(**named):
    if TRACE:
        for name, value in named.items():
            print(f"[fmha trace] {name}: {getattr(value, 'layout', value)}")


BUGS = ("none", "kv_tile0", "no_rescale", "pv_layout", "pv_rowmajor", "stuck_pipeline")
#: wb bug variant -> softmax.convert_p's bug mode
P_BUG = {"pv_layout": "chunk", "pv_rowmajor": "rowmajor"}


# --------------------------------------------------------------------------------------
# Host-side pieces shared with stage D
# --------------------------------------------------------------------------------------
def make_pv_tiled_mma(dtype: Type[cutlass.Numeric], d: int) -> cute.TiledMma:
    """WGMMA for O += P V of one warpgroup: A = P from registers (K-major), B = V^T viewed
    from V's row-major (n, d) smem tile (so B is MN-major), fp32 accumulator, 64 x d x 16."""
    return sm90_utils.make_trivial_tiled_mma(
        dtype,
        dtype,
        OperandMajorMode.K,
        OperandMajorMode.MN,
        Float32,
        atom_layout_mnk=(1, 1, 1),
        tiler_mn=(64, d),
        a_source=warpgroup.OperandSource.RMEM,
    )


def transpose_view(s: cute.Tensor) -> cute.Tensor:
    """(rows, cols, stages) smem tensor -> (cols, rows, stages) view of the same bytes."""
    return cute.make_tensor(s.iterator, cute.select(s.layout, mode=[1, 0, 2]))


@cute.jit
def wgmma_accumulate(tiled_mma: cute.TiledMma, acc: cute.Tensor, tCrA: cute.Tensor, tCrB: cute.Tensor):
    """acc += A @ B over all k blocks (fence -> MMAs -> commit -> wait 0). The fence orders
    earlier register writes of acc and of a register-sourced A before the async MMA."""
    warpgroup.fence()
    atom = cute.make_mma_atom(tiled_mma.op)
    atom.set(warpgroup.Field.ACCUMULATE, True)
    for k in cutlass.range_constexpr(cute.size(tCrA, mode=[2])):
        cute.gemm(atom, acc, tCrA[None, None, k], tCrB[None, None, k], acc)
    warpgroup.commit_group()
    warpgroup.wait_group(0)


class FmhaOnline:
    """Stage C kernel: see the module docstring. D (stage_d_fmha.FmhaForward) subclasses it."""

    tile_m = 128
    tile_n = 128
    wg_rows = 64
    num_consumer_wg = 2
    num_threads = 128 * 3
    producer_regs = 24
    consumer_regs = 240

    def __init__(
        self,
        dtype: Type[cutlass.Numeric],
        d: int,
        *,
        softmax: str = "exp",
        rescale: bool = True,
        bug: str = "none",
        kv_stages: Optional[int] = None,
    ):
        assert d in (64, 128), d
        assert softmax in ("exp", "identity"), softmax
        assert bug in BUGS, bug
        self.dtype = dtype
        self.d = d
        self.is_exp = softmax == "exp"
        self.rescale = rescale
        self.bug = bug
        self.kv_stages = kv_stages if kv_stages is not None else (2 if d == 128 else 3)
        assert self.kv_stages >= 2
        self.scale = 1.0 / math.sqrt(d)
        self.scale_log2 = self.scale * common.LOG2_E
        assert self.tile_m == self.num_consumer_wg * self.wg_rows
        # Q ring: one 64-row slot per consumer WG (stage D may double it for the next tile)
        self.q_stages = self.num_consumer_wg

    # ---- host-side construction shared with D ----------------------------------------
    def _smem_layouts(self):
        sQ = common.make_kmajor_smem_layout(self.dtype, self.wg_rows, self.d, self.q_stages)
        sK = common.make_kmajor_smem_layout(self.dtype, self.tile_n, self.d, self.kv_stages)
        sV = common.make_kmajor_smem_layout(self.dtype, self.tile_n, self.d, self.kv_stages)
        sO = common.make_kmajor_smem_layout(self.dtype, self.wg_rows, self.d, self.num_consumer_wg)
        return sQ, sK, sV, sO

    def _shared_storage(self, sQ_layout, sK_layout, sV_layout, sO_layout):
        nq, nkv = self.q_stages, self.kv_stages

        @cute.struct
        class SharedStorage:
            mbar_q: cute.struct.MemRange[cutlass.Int64, 2 * nq]
            mbar_k: cute.struct.MemRange[cutlass.Int64, 2 * nkv]
            mbar_v: cute.struct.MemRange[cutlass.Int64, 2 * nkv]
            sQ: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024]
            sK: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sK_layout)], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sV_layout)], 1024]
            sO: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sO_layout)], 1024]
            # stage D's dynamic tile scheduler: a 2-slot ring of work-tile ids and its mbarriers
            tile_ids: cute.struct.MemRange[cutlass.Int32, 2]
            mbar_tile: cute.struct.MemRange[cutlass.Int64, 4]

        return SharedStorage

    # ---- host --------------------------------------------------------------------------
    @cute.jit
    def __call__(
        self,
        mQ: cute.Tensor,  # (m, d)
        mK: cute.Tensor,  # (n, d)
        mV: cute.Tensor,  # (n, d)
        mO: cute.Tensor,  # (m, d)
        mLSE: cute.Tensor,  # (m,)
        stream,
    ):
        tmas, mmas, layouts = self._host_setup(mQ, mK, mV, mO)
        grid = (cute.ceil_div(cute.size(mQ, mode=[0]), self.tile_m), 1, 1)
        self.kernel(*tmas, mLSE, *mmas, *layouts).launch(
            grid=grid, block=[self.num_threads, 1, 1], stream=stream, min_blocks_per_mp=1
        )

    def _host_setup(self, mQ, mK, mV, mO):
        """(TMA atoms and tensors: Q, K, V loads and the O store), (QK^T and PV tiled MMAs),
        (sQ, sK, sV, sO layouts) for (seq, d, ...) tensors; sets the mbarrier byte counts and
        the shared-storage struct. Shared with stage D."""
        assert mQ.element_type == self.dtype and mK.element_type == self.dtype
        assert mV.element_type == self.dtype and mO.element_type == self.dtype
        tiled_mma_qk = common.make_qk_tiled_mma(self.dtype, self.tile_n, 1)
        tiled_mma_pv = make_pv_tiled_mma(self.dtype, self.d)
        sQ_layout, sK_layout, sV_layout, sO_layout = self._smem_layouts()
        tma_atom_q, tma_q = common.make_tma_load(mQ, sQ_layout, (self.wg_rows, self.d))
        tma_atom_k, tma_k = common.make_tma_load(mK, sK_layout, (self.tile_n, self.d))
        tma_atom_v, tma_v = common.make_tma_load(mV, sV_layout, (self.tile_n, self.d))
        tma_atom_o, tma_o = cpasync.make_tiled_tma_atom(
            cpasync.CopyBulkTensorTileS2GOp(), mO, cute.select(sO_layout, mode=[0, 1]), (self.wg_rows, self.d)
        )
        # mbarrier transaction counts = bytes one TMA box delivers (full box, even when
        # part of it is out of bounds and zero-filled).
        self.q_bytes = common.tma_tile_bytes(self.dtype, sQ_layout)
        self.kv_bytes = common.tma_tile_bytes(self.dtype, sK_layout)
        self.shared_storage = self._shared_storage(sQ_layout, sK_layout, sV_layout, sO_layout)
        tmas = (tma_atom_q, tma_q, tma_atom_k, tma_k, tma_atom_v, tma_v, tma_atom_o, tma_o)
        return tmas, (tiled_mma_qk, tiled_mma_pv), (sQ_layout, sK_layout, sV_layout, sO_layout)

    # ---- device: setup shared with D ---------------------------------------------------
    @cute.jit
    def _prologue(self, warp_idx: Int32, tma_atoms: tuple, layouts: tuple):
        """A CTA's start: TMA descriptors prefetched, the shared storage, the pipelines
        (``_make_pipelines``, their mbarrier inits fenced and visible CTA-wide before any
        wait or arrive) and the smem tensors. Returns (pipelines, (sQ, sK, sV, sO))."""
        if warp_idx == 0:
            for atom in tma_atoms:
                cpasync.prefetch_descriptor(atom)
        storage = cutlass.memory.SmemAllocator().allocate(self.shared_storage)
        pipelines = self._make_pipelines(storage)
        pipeline.pipeline_init_arrive()
        smem = self._smem_tensors(storage, *layouts)
        pipeline.pipeline_init_wait()
        return pipelines, smem

    def _make_pipelines(self, storage):
        """Q: 2 stages (stage w = consumer WG w's half), consumed by the 4 warps of one WG.
        K, V: kv_stages each, consumed by all 8 consumer warps (one arrive per warp)."""
        one_thread = pipeline.CooperativeGroup(pipeline.Agent.Thread, 1)
        pipeline_q = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.mbar_q.data_ptr(),
            num_stages=self.q_stages,
            producer_group=one_thread,
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 4),
            tx_count=self.q_bytes,
            defer_sync=True,
        )
        consumers = pipeline.CooperativeGroup(pipeline.Agent.Thread, 4 * self.num_consumer_wg)
        pipeline_k = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.mbar_k.data_ptr(),
            num_stages=self.kv_stages,
            producer_group=one_thread,
            consumer_group=consumers,
            tx_count=self.kv_bytes,
            defer_sync=True,
        )
        pipeline_v = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.mbar_v.data_ptr(),
            num_stages=self.kv_stages,
            producer_group=one_thread,
            consumer_group=consumers,
            tx_count=self.kv_bytes,
            defer_sync=True,
        )
        return pipeline_q, pipeline_k, pipeline_v

    def _smem_tensors(self, storage, sQ_layout, sK_layout, sV_layout, sO_layout):
        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)  # (64, d, 2)
        sK = storage.sK.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)  # (128, d, S)
        sV = storage.sV.get_tensor(sV_layout.outer, swizzle=sV_layout.inner)  # (128, d, S)
        sO = storage.sO.get_tensor(sO_layout.outer, swizzle=sO_layout.inner)  # (64, d, 2)
        return sQ, sK, sV, sO

    # ---- device ------------------------------------------------------------------------
    @cute.kernel
    def kernel(
        self,
        tma_atom_q: cute.CopyAtom,
        mQ: cute.Tensor,
        tma_atom_k: cute.CopyAtom,
        mK: cute.Tensor,
        tma_atom_v: cute.CopyAtom,
        mV: cute.Tensor,
        tma_atom_o: cute.CopyAtom,
        mO: cute.Tensor,
        mLSE: cute.Tensor,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        sQ_layout: cute.ComposedLayout,
        sK_layout: cute.ComposedLayout,
        sV_layout: cute.ComposedLayout,
        sO_layout: cute.ComposedLayout,
    ):
        tidx, _, _ = cute.arch.thread_idx()
        m_block, _, _ = cute.arch.block_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg_idx = cute.arch.make_warp_uniform(tidx // common.WG_THREADS)
        (pipeline_q, pipeline_k, pipeline_v), (sQ, sK, sV, sO) = self._prologue(
            warp_idx, (tma_atom_q, tma_atom_k, tma_atom_v, tma_atom_o), (sQ_layout, sK_layout, sV_layout, sO_layout)
        )

        seqlen_q = mQ.shape[0]
        seqlen_k = mK.shape[0]
        n_tiles = cute.ceil_div(seqlen_k, self.tile_n)

        # Q: (64, d) boxes; this CTA's halves are box rows 2 m_block + {0, 1}
        gQ = cute.local_tile(mQ, (self.wg_rows, self.d), (None, 0))  # (64, d, m/64)
        gK = cute.local_tile(mK, (self.tile_n, self.d), (None, 0))  # (128, d, n/128)
        gV = cute.local_tile(mV, (self.tile_n, self.d), (None, 0))  # (128, d, n/128)
        gO = cute.local_tile(mO, (self.wg_rows, self.d), (None, 0))  # (64, d, m/64)

        if wg_idx == 0:
            cute.arch.setmaxregister_decrease(self.producer_regs)
            if warp_idx == 0:
                self.produce(
                    tma_atom_q, tma_atom_k, tma_atom_v, gQ, gK, gV, sQ, sK, sV,
                    pipeline_q, pipeline_k, pipeline_v, m_block, n_tiles,
                )
        else:
            cute.arch.setmaxregister_increase(self.consumer_regs)
            self.consume(
                tiled_mma_qk, tiled_mma_pv, tma_atom_o, gO, mLSE, sQ, sK, sV, sO,
                pipeline_q, pipeline_k, pipeline_v, tidx, wg_idx - 1, m_block, n_tiles, seqlen_q,
            )

    @cute.jit
    def produce(
        self,
        tma_atom_q: cute.CopyAtom,
        tma_atom_k: cute.CopyAtom,
        tma_atom_v: cute.CopyAtom,
        gQ: cute.Tensor,
        gK: cute.Tensor,
        gV: cute.Tensor,
        sQ: cute.Tensor,
        sK: cute.Tensor,
        sV: cute.Tensor,
        pipeline_q: pipeline.PipelineAsync,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        m_block: Int32,
        n_tiles: Int32,
    ):
        """Warp 0 of WG0 (whole warp: the pipeline elects one lane for the expect-tx
        arrive and the TMA copy is issued by one lane)."""
        tQsQ, tQgQ = common.tma_partition_tile(tma_atom_q, sQ, gQ)  # (TMA, 2), (TMA, m/64)
        tKsK, tKgK = common.tma_partition_tile(tma_atom_k, sK, gK)  # (TMA, S), (TMA, n/128)
        tVsV, tVgV = common.tma_partition_tile(tma_atom_v, sV, gV)  # (TMA, S), (TMA, n/128)
        probe("tQsQ", tQsQ)
        probe("tQgQ", tQgQ)
        probe("tKsK", tKsK)
        probe("tKgK", tKgK)
        probe("tVsV", tVsV)
        probe("tVgV", tVgV)

        q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.q_stages)
        for w in cutlass.range_constexpr(self.num_consumer_wg):
            pipeline_q.producer_acquire(q_state)
            cute.copy(
                tma_atom_q,
                tQgQ[None, m_block * self.num_consumer_wg + w],
                tQsQ[None, q_state.index],
                tma_bar_ptr=pipeline_q.producer_get_barrier(q_state),
            )
            q_state.advance()

        kv_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.kv_stages)
        for j in cutlass.range(n_tiles, unroll=1):
            kv_tile = j
            if const_expr(self.bug == "kv_tile0"):
                kv_tile = 0
            pipeline_k.producer_acquire(kv_state)
            cute.copy(
                tma_atom_k, tKgK[None, kv_tile], tKsK[None, kv_state.index],
                tma_bar_ptr=pipeline_k.producer_get_barrier(kv_state),
            )
            pipeline_v.producer_acquire(kv_state)
            cute.copy(
                tma_atom_v, tVgV[None, kv_tile], tVsV[None, kv_state.index],
                tma_bar_ptr=pipeline_v.producer_get_barrier(kv_state),
            )
            kv_state.advance()

    # ---- consumer pieces shared with D -------------------------------------------------
    def _consumer_fragments(self, tiled_mma_qk, tiled_mma_pv, sQ, sK, sV, tidx_wg):
        """A consumer WG's MMA slices, smem-descriptor fragments and register tensors, each
        probed, and the trace-time proof of the P hand-over (``self.p_check``)."""
        thr_qk = tiled_mma_qk.get_slice(tidx_wg)
        thr_pv = tiled_mma_pv.get_slice(tidx_wg)
        tSrQ = thr_qk.make_fragment_A(thr_qk.partition_A(sQ))  # (MMA, 1, d/16, 2) smem descriptors
        tSrK = thr_qk.make_fragment_B(thr_qk.partition_B(sK))  # (MMA, 1, d/16, S)
        sVt = transpose_view(sV)  # (d, 128, S)
        tOrVt = thr_pv.make_fragment_B(thr_pv.partition_B(sVt))  # (MMA, 1, 128/16, S)
        acc_S_shape = thr_qk.partition_shape_C((self.wg_rows, self.tile_n))
        tOrP = cute.make_rmem_tensor(thr_pv.partition_shape_A((self.wg_rows, self.tile_n)), self.dtype)
        acc_O = cute.make_rmem_tensor(thr_pv.partition_shape_C((self.wg_rows, self.d)), Float32)
        probe("tSrQ", tSrQ)
        probe("tSrK", tSrK)
        probe("tOrVt", tOrVt)
        probe("tSrS", cute.make_rmem_tensor(acc_S_shape, Float32))
        probe("tOrP", tOrP)
        probe("tOrO_acc", acc_O)
        self.p_check = sm.check_p_operand_mapping(tiled_mma_qk, tiled_mma_pv, acc_S_shape, tOrP.shape)
        return thr_qk, thr_pv, tSrQ, tSrK, tOrVt, acc_S_shape, tOrP, acc_O

    @cute.jit
    def consume_tile(
        self,
        kv_state: pipeline.PipelineState,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        tSrQ: cute.Tensor,
        tSrK: cute.Tensor,
        tOrVt: cute.Tensor,
        tOrP: cute.Tensor,
        acc_O: cute.Tensor,
        acc_S_shape: cutlass.Constexpr,
        softmax: sm.OnlineSoftmax,
        row_scale: cute.Tensor,
        is_first: cutlass.Constexpr[bool],
        mask_fn: cutlass.Constexpr = None,
    ) -> pipeline.PipelineState:
        """One KV tile of one consumer WG: S = Q K^T, (mask), softmax, O = alpha O + P V."""
        # S = Q K_j^T
        pipeline_k.consumer_wait(kv_state)
        acc_S = cute.make_rmem_tensor(acc_S_shape, Float32)
        common.wgmma_zero_init(tiled_mma_qk, acc_S, tSrQ, tSrK[None, None, None, kv_state.index])
        pipeline_k.consumer_release(kv_state)
        if const_expr(mask_fn is not None):
            mask_fn(acc_S)
        # P (in place in acc_S) and the O rescale
        if const_expr(self.is_exp):
            softmax.step(acc_S, row_scale, is_first=is_first, rescale_sum=self.rescale)
            if const_expr(not is_first and self.rescale and self.bug != "no_rescale"):
                sm.rescale_rows(acc_O, row_scale)
        else:
            acc_S.store(acc_S.load() * Float32(self.scale))
        sm.convert_p(acc_S, tOrP, bug=P_BUG.get(self.bug, "none"))
        # O += P V_j
        pipeline_v.consumer_wait(kv_state)
        wgmma_accumulate(tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, kv_state.index])
        pipeline_v.consumer_release(kv_state)
        if const_expr(self.bug != "stuck_pipeline"):
            kv_state.advance()
        return kv_state

    @cute.jit
    def finish(self, softmax: sm.OnlineSoftmax, acc_O: cute.Tensor, lse: cute.Tensor, row_scale: cute.Tensor):
        """O /= l and LSE (exp); identity: O as is, LSE = 0."""
        if const_expr(self.is_exp):
            softmax.finalize(row_scale, lse, self.scale)
            sm.rescale_rows(acc_O, row_scale)
        else:
            lse.fill(0.0)

    @cute.jit
    def store_o(
        self,
        acc_O: cute.Tensor,
        sO_wg: cute.Tensor,
        gO_wg: cute.Tensor,
        tma_atom_o: cute.CopyAtom,
        tiled_mma_pv: cute.TiledMma,
        tidx_wg: Int32,
        wg: Int32,
        do_store: cutlass.Boolean,
        wait_read: cutlass.Constexpr[bool] = True,
    ):
        """acc_O (fp32) -> dtype -> sO_wg (stmatrix) -> fence.proxy.async -> WG barrier ->
        TMA store of the (64, d) box by the WG's first warp (rows past the tensor's end are
        clipped by TMA). ``do_store`` (warp-uniform) skips boxes entirely out of range.
        ``wait_read=False``: the issuing warp does not wait for the store to read sO_wg (the
        caller waits before sO_wg is written again, and before the CTA exits)."""
        rO = cute.make_rmem_tensor_like(acc_O, self.dtype)
        rO.store(acc_O.load().to(self.dtype))
        store_atom = cute.make_copy_atom(cute.nvgpu.warp.StMatrix8x8x16bOp(transpose=False, num_matrices=4), self.dtype)
        tiled_store = cute.make_tiled_copy_C(store_atom, tiled_mma_pv)
        thr_store = tiled_store.get_slice(tidx_wg)
        tOrO = thr_store.retile(rO)
        tOsO = thr_store.partition_D(sO_wg)
        probe("tOrO", tOrO)
        probe("tOsO", tOsO)
        cute.copy(tiled_store, tOrO, tOsO)
        cute.arch.fence_view_async_shared()  # generic-proxy smem writes -> visible to TMA
        cute.arch.barrier(barrier_id=1 + wg, number_of_threads=common.WG_THREADS)
        tOsO_tma, tOgO_tma = cpasync.tma_partition(
            tma_atom_o, 0, cute.make_layout(1), cute.group_modes(sO_wg, 0, 2), cute.group_modes(gO_wg, 0, 2)
        )
        probe("tOsO_tma", tOsO_tma)
        probe("tOgO_tma", tOgO_tma)
        if tidx_wg < 32:
            if do_store:
                cute.copy(tma_atom_o, tOsO_tma, tOgO_tma)
                cute.arch.cp_async_bulk_commit_group()
                if const_expr(wait_read):
                    cute.arch.cp_async_bulk_wait_group(0, read=True)

    @cute.jit
    def consume(
        self,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        tma_atom_o: cute.CopyAtom,
        gO: cute.Tensor,
        mLSE: cute.Tensor,
        sQ: cute.Tensor,
        sK: cute.Tensor,
        sV: cute.Tensor,
        sO: cute.Tensor,
        pipeline_q: pipeline.PipelineAsync,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        tidx: Int32,
        wg: Int32,
        m_block: Int32,
        n_tiles: Int32,
        seqlen_q: Int32,
    ):
        tidx_wg = tidx % common.WG_THREADS
        thr_qk, thr_pv, tSrQ, tSrK, tOrVt, acc_S_shape, tOrP, acc_O = self._consumer_fragments(
            tiled_mma_qk, tiled_mma_pv, sQ, sK, sV, tidx_wg
        )
        probe("tOrP_view_of_S", sm.p_operand_view(cute.make_rmem_tensor(acc_S_shape, Float32)))
        trace_print(tSrS=acc_S_shape, tOrP=tOrP, P_view_of_S=sm.p_operand_layout(cute.make_layout(acc_S_shape)),
                    tOrO=acc_O, S_rows=common.acc_row_layout(cute.make_layout(acc_S_shape)), p_check=self.p_check)

        softmax = sm.OnlineSoftmax(self.scale_log2, cute.size(common.acc_row_view(acc_O), mode=[0]))
        row_scale = cute.make_rmem_tensor(softmax.num_rows, Float32)
        acc_O.fill(0.0)

        q_state = pipeline.PipelineState(self.q_stages, Int32(0), wg, Int32(0))
        pipeline_q.consumer_wait(q_state)
        tSrQ_wg = tSrQ[None, None, None, wg]

        kv_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.kv_stages)
        kv_state = self.consume_tile(
            kv_state, pipeline_k, pipeline_v, tiled_mma_qk, tiled_mma_pv, tSrQ_wg, tSrK, tOrVt,
            tOrP, acc_O, acc_S_shape, softmax, row_scale, True,
        )
        for j in cutlass.range(1, n_tiles, unroll=1):
            kv_state = self.consume_tile(
                kv_state, pipeline_k, pipeline_v, tiled_mma_qk, tiled_mma_pv, tSrQ_wg, tSrK, tOrVt,
                tOrP, acc_O, acc_S_shape, softmax, row_scale, False,
            )
        pipeline_q.consumer_release(q_state)

        lse = cute.make_rmem_tensor(softmax.num_rows, Float32)
        self.finish(softmax, acc_O, lse, row_scale)

        # LSE: lanes t % 4 == 0 hold column 0 of their 2 rows
        row0 = m_block * self.tile_m + wg * self.wg_rows
        tOcO = common.acc_row_view(thr_pv.partition_C(cute.make_identity_tensor((self.wg_rows, self.d))))
        if tidx_wg % 4 == 0:
            for r in cutlass.range_constexpr(softmax.num_rows):
                row = row0 + tOcO[r, 0][0]
                if row < seqlen_q:
                    mLSE[row] = lse[r]
        self.store_o(
            acc_O, sO[None, None, wg], gO[None, None, m_block * self.num_consumer_wg + wg], tma_atom_o,
            tiled_mma_pv, tidx_wg, wg, row0 < seqlen_q,
        )


# --------------------------------------------------------------------------------------
# Host glue: fake tensors for compile, real tensors for launch
# --------------------------------------------------------------------------------------
def compile_for(arch: str, fn, *args):
    """cute.compile for ``arch`` (no GPU needed)."""
    return cute.compile[cute.GPUArch(arch)](fn, *args)


def fake_tensor(dtype, ndim: int):
    """Fake row-major tensor for compile: every extent and stride a runtime value except the
    last stride (1). Matches what ``to_cute`` passes at launch, so one compile serves any
    sequence length / batch (the kernels take tile sizes and d from their own constants)."""
    from cutlass.cute.runtime import make_fake_tensor

    shape = tuple(cute.sym_int32() for _ in range(ndim))
    stride = tuple(cute.sym_int64() for _ in range(ndim - 1)) + (1,)
    return make_fake_tensor(dtype, shape, stride=stride, assumed_align=16)


def to_cute(t):
    """torch tensor (last dim contiguous, 16-byte aligned base) -> CuTe tensor of the type
    ``fake_tensor`` declares: (?, ..., ?):(?, ..., ?, 1)."""
    from cutlass.cute.runtime import from_dlpack

    assert t.stride(-1) == 1 and t.data_ptr() % 16 == 0, "last dim contiguous, 16-byte aligned base"
    return from_dlpack(t.detach(), assumed_align=16).mark_layout_dynamic(leading_dim=t.dim() - 1)


def current_stream():
    import torch
    from cuda.bindings import driver as cuda

    return cuda.CUstream(torch.cuda.current_stream().cuda_stream)


@dataclass
class Compiled:
    """What ``compile`` returns: the JIT function plus plain facts (picklable, so wb's disk
    cache can keep it)."""

    fn: Any
    d: int
    heads: int = 1
    kv_heads: int = 1
    causal: bool = False
    p_check: str = ""  # the trace-time proof of the P hand-over (softmax.check_p_operand_mapping)
    compile_s: float = 0.0


def variant_flags(variants: Mapping[str, str]) -> dict:
    """kernel.yaml variants -> FmhaOnline arguments (``rescale`` also accepts YAML's
    booleans spelled out: True/False, yes/no, 1/0)."""
    v = dict(variants or {})
    rescale = str(v.get("rescale", "on")).strip().lower()
    if rescale not in ("on", "off", "true", "false", "yes", "no", "1", "0"):
        raise ValueError(f"variant rescale={v.get('rescale')!r}: must be on or off")
    bug = str(v.get("bug", "none"))
    if bug not in BUGS:
        raise ValueError(f"variant bug={bug!r}: must be one of {', '.join(BUGS)}")
    return {
        "softmax": str(v.get("softmax", "exp")),
        "rescale": rescale in ("on", "true", "yes", "1"),
        "bug": bug,
    }


# --------------------------------------------------------------------------------------
# References (torch; imported lazily)
# --------------------------------------------------------------------------------------
def attention_ref(q, k, v, compute_dtype, *, softmax="exp", causal=False, scale=None):
    """(O, LSE) for q (..., m, d), k/v (..., n, d) with matching leading dims: the stages'
    reference, ``stages.fmha.reference.attention`` (streamed over KV blocks; precision
    rules there). ``causal``: top-left, key j visible to query i iff j <= i (torch's
    is_causal)."""
    from stages.fmha import reference

    return reference.attention(q, k, v, compute_dtype, softmax=softmax, causal=causal, scale=scale)


def p_bug_permute(p, bug: str):
    """What the PV MMA sees instead of P (rows, 128) under a P hand-over bug variant."""
    import torch

    if bug == "pv_layout":  # k-block j takes column chunks (j, j + 8) instead of (2j, 2j + 1)
        c = torch.arange(p.shape[1], device=p.device)
        j, h, e = c // 16, (c // 8) % 2, c % 8
        return p[:, 8 * (j + (p.shape[1] // 16) * h) + e]
    if bug == "pv_rowmajor":  # row bit 3 <-> column bit 0 inside each 16 x 16 block
        r = torch.arange(p.shape[0], device=p.device)[:, None]
        c = torch.arange(p.shape[1], device=p.device)[None, :]
        return p[(r & ~8) | ((c & 1) << 3), (c & ~1) | ((r >> 3) & 1)]
    return p


def emulate_online(q, k, v, *, bug="none", rescale=True, tile_n=128, scale=None):
    """The kernel's tile loop in fp32 torch, with its bug variants (mutants for diagnosis).

    q (m, d), k/v (n, d) with m a multiple of 16 and n of tile_n. Returns (O, LSE) fp32.
    bug: none | kv_tile0 | no_rescale (O not rescaled, l is) | pv_layout | pv_rowmajor;
    rescale=False: neither O nor l rescaled. P is rounded to v's dtype before P V, as in
    the kernel. (bug=stuck_pipeline re-reads stage 0; for n = 2 tiles that is kv_tile0.)
    """
    import torch

    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qf, kf, vf = q.float(), k.float(), v.float()
    m, n = qf.shape[0], kf.shape[0]
    o = torch.zeros(m, vf.shape[1], dtype=torch.float32, device=q.device)
    row_max = torch.full((m,), float("-inf"), device=q.device)
    row_sum = torch.zeros(m, device=q.device)
    for j in range(0, n, tile_n):
        src = 0 if bug in ("kv_tile0", "stuck_pipeline") else j
        kt, vt = kf[src : src + tile_n], vf[src : src + tile_n]
        s = (qf @ kt.T) * scale
        new_max = torch.maximum(row_max, s.amax(dim=1))
        p = torch.exp(s - new_max[:, None])
        alpha = torch.exp(row_max - new_max)  # 0 on the first tile (row_max = -inf)
        if rescale:
            row_sum = row_sum * alpha + p.sum(1)
            if bug != "no_rescale":
                o = o * alpha[:, None]
        else:
            row_sum = row_sum + p.sum(1)
        row_max = new_max
        o = o + p_bug_permute(p.to(v.dtype).float(), bug) @ vt
    return o / row_sum[:, None], row_max + torch.log(row_sum)


# --------------------------------------------------------------------------------------
# wb stage
# --------------------------------------------------------------------------------------
class StageC(Stage):
    """wb stage C: multi-tile TMA pipeline with online softmax (O and LSE)."""
    proves = (
        "The KV pipeline cycles through every tile for any n (coordinates from the loop, phases "
        "flipping), the online softmax rescales O and l when the max grows, P is handed to the PV "
        "MMA in its operand layout, and O/l and LSE are stored right, for one (batch, head)."
    )
    cannot_see = (
        "Batch and head indexing, GQA, causal masks and ragged tails (all stage D's), and speed. "
        "ones-v and single-element V pass even when O's columns are read with the wrong stride."
    )
    compile_params = ("d", "dtype")  # m and n are runtime values

    def inputs(self, p: Params) -> dict[str, TensorSpec]:
        return {
            "q": TensorSpec((p.m, p.d), p.dtype),
            "k": TensorSpec((p.n, p.d), p.dtype),
            "v": TensorSpec((p.n, p.d), p.dtype),
        }

    def flops(self, p: Params) -> float:
        """4·m·n·d: the two matrix products (QKᵀ and PV) of one head."""
        return 4.0 * p.m * p.n * p.d

    def outputs(self, p: Params) -> dict[str, TensorSpec]:
        return {"o": TensorSpec((p.m, p.d), p.dtype), "lse": TensorSpec((p.m,), "fp32")}

    def make_kernel(self, p: Params, variants: Mapping[str, str]) -> FmhaOnline:
        f = variant_flags(variants)
        return FmhaOnline(common.cute_dtype(p.dtype), p.d, softmax=f["softmax"], rescale=f["rescale"], bug=f["bug"])

    def compile(self, p: Params, variants: Mapping[str, str], arch: str) -> Compiled:
        import time

        from cutlass.cute.runtime import make_fake_stream

        dtype = common.cute_dtype(p.dtype)
        kernel = self.make_kernel(p, variants)
        # m and n are runtime values: one compile per (d, dtype, variants) serves every m, n
        args = [fake_tensor(dtype, 2), fake_tensor(dtype, 2), fake_tensor(dtype, 2), fake_tensor(dtype, 2),
                fake_tensor(Float32, 1), make_fake_stream()]
        t0 = time.perf_counter()
        fn = compile_for(arch, kernel, *args)
        return Compiled(fn=fn, d=p.d, p_check=kernel.p_check, compile_s=time.perf_counter() - t0)

    def launch(self, compiled: Compiled, inputs, outputs) -> None:
        assert inputs["q"].shape[-1] == compiled.d, "q's head dim does not match the compiled d"
        compiled.fn(
            to_cute(inputs["q"]), to_cute(inputs["k"]), to_cute(inputs["v"]),
            to_cute(outputs["o"]), to_cute(outputs["lse"]), current_stream(),
        )

    def reference(self, inputs, p: Params, variants, compute_dtype):
        f = variant_flags(variants)
        o, lse = attention_ref(inputs["q"], inputs["k"], inputs["v"], compute_dtype, softmax=f["softmax"])
        import torch

        return {"o": o.to(compute_dtype), "lse": lse.to(torch.float32)}
