"""The CTA skeleton that stages C and D share (Hopper, sm_90a, CuTe DSL 4.8.1).

``FmhaForwardBase`` is the warp-specialized forward CTA without its tile loop: the host
setup (TMA atoms, the QK^T and PV tiled MMAs, the swizzled smem layouts and the shared
storage), the CTA prologue (descriptor prefetch, pipelines, smem tensors), a consumer
WG's fragments, the serial per-KV-tile step, the finish (O /= l, LSE) and the O store.
Stage C (``stage_c_online.FmhaOnline``: one 128-row Q tile per CTA) and stage D
(``fmha_forward.FmhaForward``: batch, heads, causal, persistent schedules) subclass it and
add their ``__call__``, ``kernel``, producer and consumer loops.

Geometry: the class constants are stage C's (2 consumer WGs of 64 rows, 128-row tiles,
128-column KV tiles, registers 240/24, O staged in its own smem tile); D sets its own as
instance attributes before calling ``__init__`` (``geometry.geometry`` per head dim: tile_n,
kv_stages, ``o_in_q``: O staged in the WG's Q slot, for d = 192 and 256).
``rescale`` and ``bug`` are stage C's bug-injection hooks of ``consume_tile``; stage D
keeps the class defaults (rescaled, no bug).

No ``from __future__ import annotations`` here: ``cute.struct`` reads the class annotations
(MemRange[...]) at class creation and fails on postponed (string) annotations.
"""

import math
import os
from typing import Optional, Type

import cutlass
import cutlass.cute as cute
import cutlass.memory
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32, const_expr
from cutlass.cute.nvgpu import OperandMajorMode, cpasync, warpgroup

from stages.fmha import common
from stages.fmha import geometry
from stages.fmha import softmax as sm
from stages.fmha import short_tile
from workbench.compile.probe import probe

#: WB_FMHA_TRACE=1 prints the consumer's fragment layouts and the P-conversion proof while
#: tracing (static extents as numbers, dynamic ones as ?)
TRACE = os.environ.get("WB_FMHA_TRACE", "") not in ("", "0")


def trace_print(**named):
    if TRACE:
        for name, value in named.items():
            print(f"[fmha trace] {name}: {getattr(value, 'layout', value)}")


#: wb bug variant -> softmax.convert_p's bug mode
P_BUG = {"pv_layout": "chunk", "pv_rowmajor": "rowmajor"}


# --------------------------------------------------------------------------------------
# Host-side pieces
# --------------------------------------------------------------------------------------
def make_pv_tiled_mma(dtype: Type[cutlass.Numeric], d: int, p_smem: bool = False) -> cute.TiledMma:
    """WGMMA for O += P V of one warpgroup: A = P from registers (K-major; ``p_smem``: from
    the WG's P tile in shared memory), B = V^T viewed from V's row-major (n, d) smem tile (so
    B is MN-major), fp32 accumulator, 64 x d x 16."""
    return sm90_utils.make_trivial_tiled_mma(
        dtype,
        dtype,
        OperandMajorMode.K,
        OperandMajorMode.MN,
        Float32,
        atom_layout_mnk=(1, 1, 1),
        tiler_mn=(64, d),
        a_source=warpgroup.OperandSource.SMEM if p_smem else warpgroup.OperandSource.RMEM,
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


class FmhaForwardBase:
    """The CTA skeleton of the FMHA forward kernels (see the module docstring)."""

    tile_m = 128
    tile_n = 128
    wg_rows = 64
    num_consumer_wg = 2
    num_threads = 128 * 3
    producer_regs = 24
    consumer_regs = 240
    # O's epilogue staging tile: its own (False) or the WG's Q slot (True; stage D, d >= 192)
    o_in_q = False
    # P to the PV MMA through a (64, tile_n) shared-memory tile per consumer WG (stage D's
    # p_operand=smem) instead of registers
    p_smem = False
    # stage D's split-KV tail (split_kv): a flag word per consumer WG after the tile-id ring
    split_tail = False
    split_max_waves = 0
    # stage D's short tile shared by the consumer WGs (short_tile): a scratch for their partials
    short_split = False
    # stage C's bug-injection hooks of ``consume_tile`` (FmhaOnline sets them per instance)
    rescale = True
    bug = "none"
    # stage D's softcap (0 = off) and its bug injection (softmax.softcap_constants)
    softcap = 0.0
    softcap_bug = "none"
    # stage D's cluster of CTAs along the Q tiles (cluster=2): the CTAs of a cluster work on
    # neighbouring Q tiles of one (batch, head), and each loads half of every K and V tile and
    # multicasts it into both (half the L2 -> SM traffic of K and V)
    cluster_m = 1

    def __init__(
        self,
        dtype: Type[cutlass.Numeric],
        d: int,
        *,
        softmax: str = "exp",
        kv_stages: Optional[int] = None,
        dv: Optional[int] = None,
    ):
        assert d in geometry.HEAD_DIMS, d
        self.dtype = dtype
        self.d = d  # head dim of Q and K
        self.dv = d if dv is None else dv  # head dim of V and O (stage D's dv; else d)
        self.is_exp = softmax == "exp"
        self.kv_stages = kv_stages if kv_stages is not None else geometry.geometry(d).kv_stages
        assert self.kv_stages >= 2
        self.scale = 1.0 / math.sqrt(d)
        self.scale_log2 = self.scale * common.LOG2_E
        assert self.tile_m == self.num_consumer_wg * self.wg_rows
        # Q ring: one 64-row slot per consumer WG (stage D may double it for the next tile)
        self.q_stages = self.num_consumer_wg

    # ---- host-side construction --------------------------------------------------------
    def _smem_layouts(self):
        sQ = common.make_kmajor_smem_layout(self.dtype, self.wg_rows, self.d, self.q_stages)
        sK = common.make_kmajor_smem_layout(self.dtype, self.tile_n, self.d, self.kv_stages)
        sV = common.make_kmajor_smem_layout(self.dtype, self.tile_n, self.dv, self.kv_stages)
        sO = common.make_kmajor_smem_layout(self.dtype, self.wg_rows, self.dv, self.num_consumer_wg)
        if const_expr(self.o_in_q and self.dv != self.d):
            # O staged in Q with dv < d: WG w's O tile starts at its Q slot, (64 x d) elements
            # in (a whole number of swizzle atoms, so the swizzle is the same)
            outer = sO.outer
            sO = cute.make_composed_layout(
                sO.inner, 0, cute.make_layout(outer.shape, stride=(*outer.stride[:2], (0, self.wg_rows * self.d)))
            )
        return sQ, sK, sV, sO

    def _sP_layout(self):
        """(64, tile_n, consumers), K-major: each consumer WG's P, the PV MMA's A operand
        (``p_smem``)."""
        return common.make_kmajor_smem_layout(self.dtype, self.wg_rows, self.tile_n, self.num_consumer_wg)

    def _shared_storage(self, sQ_layout, sK_layout, sV_layout, sO_layout):
        """The CTA's shared storage: the Q/K/V mbarriers, the Q, K, V tiles, O's own tile
        (unless staged in Q), P's tiles (``p_smem``), and stage D's dynamic tile scheduler's
        2-slot ring of work-tile ids with its mbarriers. With O staged in Q and no P tiles the
        tiles come first: the mbarriers after them need no 1 KiB alignment gap (d = 256 fits
        227 KiB with 1 KiB to spare; geometry.SMEM_OVERHEAD)."""
        nq, nkv = self.q_stages, self.kv_stages
        if const_expr(self.o_in_q):
            assert nq == self.num_consumer_wg, "O staged in Q needs one Q slot per consumer WG"

        def tile(layout):
            return cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(layout)], 1024]

        barriers = {
            "mbar_q": cute.struct.MemRange[cutlass.Int64, 2 * nq],
            "mbar_k": cute.struct.MemRange[cutlass.Int64, 2 * nkv],
            "mbar_v": cute.struct.MemRange[cutlass.Int64, 2 * nkv],
        }
        tiles = {"sQ": tile(sQ_layout), "sK": tile(sK_layout), "sV": tile(sV_layout)}
        if const_expr(not self.o_in_q):
            tiles["sO"] = tile(sO_layout)
        if const_expr(self.p_smem):
            tiles["sP"] = tile(self._sP_layout())
        if const_expr(self.short_split):
            tiles["sPart"] = cute.struct.Align[
                cute.struct.MemRange[cutlass.Float32, short_tile.scratch_floats(self.num_consumer_wg, self.dv)], 16
            ]
        scheduler = {
            "tile_ids": cute.struct.MemRange[cutlass.Int32, self.tile_id_words()],
            "mbar_tile": cute.struct.MemRange[cutlass.Int64, 4],
        }
        if const_expr(self.o_in_q and not self.p_smem):
            fields = {**tiles, **barriers, **scheduler}
        else:
            fields = {**barriers, **tiles, **scheduler}
        return cute.struct(type("SharedStorage", (), {"__annotations__": fields}))

    def tile_id_words(self) -> int:
        """Words of the tile-id ring (2), plus the split-KV tail's flag per consumer WG."""
        return 2 + (self.num_consumer_wg if self.split_tail else 0)

    # ---- host --------------------------------------------------------------------------

    def _host_setup(self, mQ, mK, mV, mO):
        """(TMA atoms and tensors: Q, K, V loads and the O store), (QK^T and PV tiled MMAs),
        (sQ, sK, sV, sO layouts) for (seq, d, ...) tensors; sets the mbarrier byte counts and
        the shared-storage struct. Shared with stage D."""
        assert mQ.element_type == self.dtype and mK.element_type == self.dtype
        assert mV.element_type == self.dtype and mO.element_type == self.dtype
        tiled_mma_qk = common.make_qk_tiled_mma(self.dtype, self.tile_n, 1)
        tiled_mma_pv = make_pv_tiled_mma(self.dtype, self.dv, self.p_smem)
        sQ_layout, sK_layout, sV_layout, sO_layout = self._smem_layouts()
        tma_atom_q, tma_q = common.make_tma_load(mQ, sQ_layout, (self.wg_rows, self.d))
        tma_atom_k, tma_k = common.make_tma_load(mK, sK_layout, (self.tile_n, self.d), self.cluster_m)
        tma_atom_v, tma_v = common.make_tma_load(mV, sV_layout, (self.tile_n, self.dv), self.cluster_m)
        tma_atom_o, tma_o = cpasync.make_tiled_tma_atom(
            cpasync.CopyBulkTensorTileS2GOp(), mO, cute.select(sO_layout, mode=[0, 1]), (self.wg_rows, self.dv)
        )
        # mbarrier transaction counts = bytes one TMA box delivers (full box, even when
        # part of it is out of bounds and zero-filled).
        self.q_bytes = common.tma_tile_bytes(self.dtype, sQ_layout)
        self.kv_bytes = common.tma_tile_bytes(self.dtype, sK_layout)
        self.v_bytes = common.tma_tile_bytes(self.dtype, sV_layout)  # kv_bytes unless dv != d
        self.shared_storage = self._shared_storage(sQ_layout, sK_layout, sV_layout, sO_layout)
        tmas = (tma_atom_q, tma_q, tma_atom_k, tma_k, tma_atom_v, tma_v, tma_atom_o, tma_o)
        return tmas, (tiled_mma_qk, tiled_mma_pv), (sQ_layout, sK_layout, sV_layout, sO_layout)

    # ---- device: the CTA's setup ------------------------------------------------------
    @cute.jit
    def _prologue(self, warp_idx: Int32, tma_atoms: tuple, layouts: tuple):
        """A CTA's start: TMA descriptors prefetched, the shared storage, the pipelines
        (``_make_pipelines``, their mbarrier inits fenced and visible CTA-wide before any
        wait or arrive) and the smem tensors. Returns (pipelines, (sQ, sK, sV, sO, sP, sPart)); sP is
        None unless ``p_smem``, sPart unless ``short_split``."""
        if warp_idx == 0:
            for atom in tma_atoms:
                cpasync.prefetch_descriptor(atom)
        storage = cutlass.memory.SmemAllocator().allocate(self.shared_storage)
        pipelines = self._make_pipelines(storage)
        # a cluster: every CTA's mbarriers initialised before a peer multicasts into them or
        # releases a slot in them
        cluster = cute.make_layout((self.cluster_m, 1)) if const_expr(self.cluster_m > 1) else None
        pipeline.pipeline_init_arrive(cluster_shape_mn=cluster, is_relaxed=True)
        smem = self._smem_tensors(storage, *layouts)
        pipeline.pipeline_init_wait(cluster_shape_mn=cluster)
        return pipelines, smem

    def _make_pipelines(self, storage):
        """Q: 2 stages (stage w = consumer WG w's half), consumed by the 4 warps of one WG.
        K, V: kv_stages each, consumed by all 8 consumer warps (one arrive per warp); in a
        cluster (``cluster_m``) by those of every CTA of it, each warp's lane r arriving on
        CTA r's slot (a slot is refilled in every CTA at once by the multicast)."""
        one_thread = pipeline.CooperativeGroup(pipeline.Agent.Thread, 1)
        pipeline_q = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.mbar_q.data_ptr(),
            num_stages=self.q_stages,
            producer_group=one_thread,
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 4),
            tx_count=self.q_bytes,
            defer_sync=True,
        )
        consumers = pipeline.CooperativeGroup(pipeline.Agent.Thread, 4 * self.num_consumer_wg * self.cluster_m)
        cluster = {}
        if const_expr(self.cluster_m > 1):
            cluster = {"cta_layout_vmnk": cute.make_layout((1, self.cluster_m, 1, 1))}
        pipeline_k = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.mbar_k.data_ptr(),
            num_stages=self.kv_stages,
            producer_group=one_thread,
            consumer_group=consumers,
            tx_count=self.kv_bytes,
            defer_sync=True,
            **cluster,
        )
        pipeline_v = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.mbar_v.data_ptr(),
            num_stages=self.kv_stages,
            producer_group=one_thread,
            consumer_group=consumers,
            tx_count=self.v_bytes,
            defer_sync=True,
            **cluster,
        )
        return pipeline_q, pipeline_k, pipeline_v

    def _smem_tensors(self, storage, sQ_layout, sK_layout, sV_layout, sO_layout):
        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)  # (64, d, 2)
        sK = storage.sK.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)  # (tile_n, d, S)
        sV = storage.sV.get_tensor(sV_layout.outer, swizzle=sV_layout.inner)  # (tile_n, d, S)
        if const_expr(self.o_in_q):
            # the WG's Q slot doubles as its O staging tile (same layout: (64, d, consumers))
            sO = storage.sQ.get_tensor(sO_layout.outer, swizzle=sO_layout.inner)
        else:
            sO = storage.sO.get_tensor(sO_layout.outer, swizzle=sO_layout.inner)  # (64, d, 2)
        sP = None
        if const_expr(self.p_smem):
            sP_layout = self._sP_layout()
            sP = storage.sP.get_tensor(sP_layout.outer, swizzle=sP_layout.inner)  # (64, tile_n, consumers)
        sPart = None
        if const_expr(self.short_split):
            sPart = storage.sPart.get_tensor(cute.make_layout(short_tile.scratch_floats(self.num_consumer_wg, self.dv)))
        return sQ, sK, sV, sO, sP, sPart

    # ---- device ------------------------------------------------------------------------

    # ---- consumer pieces ---------------------------------------------------------------
    def _consumer_fragments(self, tiled_mma_qk, tiled_mma_pv, sQ, sK, sV, tidx_wg, sP=None):
        """A consumer WG's MMA slices, smem-descriptor fragments and register tensors, each
        probed, and the trace-time proof of the P hand-over (``self.p_check``). ``sP``
        (``p_smem``): tOrP is then the PV MMA's A descriptors of every WG's P tile, (MMA, 1,
        tile_n/16, consumers)."""
        thr_qk = tiled_mma_qk.get_slice(tidx_wg)
        thr_pv = tiled_mma_pv.get_slice(tidx_wg)
        tSrQ = thr_qk.make_fragment_A(thr_qk.partition_A(sQ))  # (MMA, 1, d/16, 2) smem descriptors
        tSrK = thr_qk.make_fragment_B(thr_qk.partition_B(sK))  # (MMA, 1, d/16, S)
        sVt = transpose_view(sV)  # (d, tile_n, S)
        tOrVt = thr_pv.make_fragment_B(thr_pv.partition_B(sVt))  # (MMA, 1, tile_n/16, S)
        acc_S_shape = thr_qk.partition_shape_C((self.wg_rows, self.tile_n))
        if const_expr(self.p_smem):
            tOrP = thr_pv.make_fragment_A(thr_pv.partition_A(sP))
        else:
            tOrP = cute.make_rmem_tensor(thr_pv.partition_shape_A((self.wg_rows, self.tile_n)), self.dtype)
        acc_O = cute.make_rmem_tensor(thr_pv.partition_shape_C((self.wg_rows, self.dv)), Float32)
        probe("tSrQ", tSrQ)
        probe("tSrK", tSrK)
        probe("tOrVt", tOrVt)
        probe("tSrS", cute.make_rmem_tensor(acc_S_shape, Float32))
        probe("tOrP", tOrP)
        probe("tOrO_acc", acc_O)
        if const_expr(self.p_smem):
            # stmatrix stores S's accumulator layout by coordinate: no register order to prove
            self.p_check = "P through shared memory (stored by coordinate, read by descriptor): verified by layout"
        else:
            self.p_check = sm.check_p_operand_mapping(tiled_mma_qk, tiled_mma_pv, acc_S_shape, tOrP.shape)
        # which row of the thread each 16-bit P register adds to (softmax.add_rounded)
        self.p_sum_rows = sm.p_rows(acc_S_shape, operand=not self.p_smem)
        return thr_qk, thr_pv, tSrQ, tSrK, tOrVt, acc_S_shape, tOrP, acc_O

    @cute.jit
    def add_p_sum(self, softmax: sm.OnlineSoftmax, tOrP: cute.Tensor):
        """``rounded_sum`` with P in registers: the tile's P (tOrP, as the PV MMA reads it) joins
        the row sums. Called right after that PV MMA's issue (in the overlap schedules while the
        next S is computed): the wgmma reads the same registers, which is allowed (only writing
        them is not). Through shared memory the hand-over adds P instead."""
        if const_expr(softmax.rounded_sum and not self.p_smem):
            softmax.add_rounded(tOrP, self.p_sum_rows)

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
            softmax.step(acc_S, row_scale, is_first=is_first, rescale_sum=self.rescale, masked=mask_fn is not None)
            if const_expr(not is_first and self.rescale and self.bug != "no_rescale"):
                sm.rescale_rows(acc_O, row_scale)
        else:
            self.identity_logits(acc_S)
        sm.convert_p(acc_S, tOrP, bug=P_BUG.get(self.bug, "none"))
        # O += P V_j
        pipeline_v.consumer_wait(kv_state)
        wgmma_accumulate(tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, kv_state.index])
        self.add_p_sum(softmax, tOrP)
        pipeline_v.consumer_release(kv_state)
        if const_expr(self.bug != "stuck_pipeline"):
            kv_state.advance()
        return kv_state

    def softcap_constants(self):
        """(k_in, k_out) of ``softmax.cap_logits`` for the softmax, or None without softcap."""
        if not self.softcap:
            return None
        return sm.softcap_constants(self.scale, self.softcap, self.softcap_bug)

    @cute.jit
    def identity_logits(self, acc_S: cute.Tensor):
        """softmax=identity: S -> S scale, or with softcap c tanh(S scale / c) (natural
        units; a masked 0 stays 0)."""
        if const_expr(self.softcap):
            k_in, k_out = self.softcap_constants()
            sm.cap_logits(acc_S, k_in, k_out / common.LOG2_E, False)
        else:
            acc_S.store(acc_S.load() * Float32(self.scale))

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
        tiled_store = common.make_stmatrix_store(self.dtype, tiled_mma_pv)
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

