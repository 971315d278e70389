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

``o_store=tma|threads``: the O epilogue as above (``tma``), or staged through shared memory
with plain stores and stored by the 256 consumer threads with plain loads and stores (``threads``: after both
WGs wrote their halves and met at a 256-thread named barrier, consumer thread t copies
column half t // 128 of row t % 128 -- half of its rows were written by the other WG).
Bugs for compute-sanitizer (``wb run c --sanitize TOOL``; docs/inside.md says which tool
catches which): ``bug=lse_oob`` (the LSE store lands one row late, guarded on the right
row: the last row's value is written one element past lse's end), ``bug=o_race`` (the
threads epilogue without its 256-thread barrier: a WG reads rows of sO the other WG may
not have written yet), ``bug=o_uninit`` (the threads epilogue where the second WG never
stages its O: rows 64..127 are read from shared memory nobody wrote), ``bug=mbar_phase``
(the consumers' K/V pipeline state starts at phase 1: every wait on a "full" barrier
returns at once, before the TMA load it guards has landed), ``bug=o_accumulate`` (the threads
epilogue adds O to what is already in global O, as a split-KV kernel would, but nobody
zeroed O: a read of uninitialized global memory), ``bug=warp_mask`` (every consumer thread
calls ``__syncwarp`` with a mask that leaves out lane 31, which calls it too).

The CTA skeleton (host setup, prologue, pipelines, fragments, the per-tile step, the O
store) is ``fmha_base.FmhaForwardBase``'s, shared with stage D; this module adds the
one-tile-per-CTA kernel, its producer and consumer loops, the torch model of the tile loop
with its bug variants (``emulate_online``) and the wb stage.
"""

import math
from typing import Mapping

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
from cutlass import Float32, Int32, const_expr

from stages.fmha import common, host, reference
from stages.fmha import softmax as sm
from stages.fmha.fmha_base import FmhaForwardBase, trace_print
from workbench.compile.probe import probe
from workbench.kernels.stage import Params, Stage, TensorSpec


class FmhaOnline(FmhaForwardBase):
    """Stage C kernel: see the module docstring. The CTA skeleton is ``FmhaForwardBase``'s."""

    def __init__(
        self, dtype, d: int, *, softmax: str = "exp", rescale: bool = True, bug: str = "none", kv_stages=None,
        o_store: str = "tma",
    ):
        super().__init__(dtype, d, softmax=softmax, kv_stages=kv_stages)
        self.rescale = rescale
        self.bug = bug
        self.o_by_threads = o_store == "threads" or bug in ("o_race", "o_uninit", "o_accumulate")

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
        self.kernel(*tmas, mLSE, mO, *mmas, *layouts).launch(
            grid=grid, block=[self.num_threads, 1, 1], stream=stream, min_blocks_per_mp=1
        )


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
        mO_plain: cute.Tensor,  # O as a plain global tensor (mO is TMA's coordinate view): o_store=threads
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
        (pipeline_q, pipeline_k, pipeline_v), (sQ, sK, sV, sO, _, _) = self._prologue(
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
        if const_expr(self.o_by_threads):
            gO = cute.local_tile(mO_plain, (self.wg_rows, self.d), (None, 0))  # (64, d, m/64) elements

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
        if const_expr(self.bug == "mbar_phase"):
            kv_state = pipeline.PipelineState(self.kv_stages, Int32(0), Int32(0), Int32(1))
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
                    if const_expr(self.bug == "lse_oob"):
                        mLSE[row + 1] = lse[r]
                    else:
                        mLSE[row] = lse[r]
        if const_expr(self.bug == "warp_mask"):
            cute.arch.sync_warp(mask=0x7FFFFFFF)
        if const_expr(self.o_by_threads):
            self.store_o_by_threads(acc_O, sO, gO, tiled_mma_pv, tidx_wg, wg, m_block, seqlen_q)
        else:
            self.store_o(
                acc_O, sO[None, None, wg], gO[None, None, m_block * self.num_consumer_wg + wg], tma_atom_o,
                tiled_mma_pv, tidx_wg, wg, row0 < seqlen_q,
            )

    @cute.jit
    def store_o_by_threads(
        self,
        acc_O: cute.Tensor,
        sO: cute.Tensor,  # (64, d, 2): one half per consumer WG
        gO: cute.Tensor,  # (64, d, m/64)
        tiled_mma_pv: cute.TiledMma,
        tidx_wg: Int32,
        wg: Int32,
        m_block: Int32,
        seqlen_q: Int32,
    ):
        """o_store=threads: acc_O -> dtype -> sO[wg] with plain shared stores (each thread its
        accumulator elements; plain, not stmatrix, so compute-sanitizer's racecheck tracks them),
        a named barrier over both consumer WGs, then consumer thread t copies column half
        t // 128 of the CTA's row t % 128 from sO to gO with plain loads and stores."""
        rO = cute.make_rmem_tensor_like(acc_O, self.dtype)
        rO.store(acc_O.load().to(self.dtype))
        tOsO = tiled_mma_pv.get_slice(tidx_wg).partition_C(sO[None, None, wg])
        probe("tOsO_threads", tOsO)
        if const_expr(self.bug == "o_uninit"):
            if wg == 0:
                cute.autovec_copy(rO, tOsO)
        else:
            cute.autovec_copy(rO, tOsO)
        if const_expr(self.bug != "o_race"):
            cute.arch.barrier(barrier_id=3, number_of_threads=self.num_consumer_wg * common.WG_THREADS)
        t = wg * common.WG_THREADS + tidx_wg
        row = t % self.tile_m
        half_cols = self.d // 2
        col0 = (t // self.tile_m) * half_cols
        box = row // self.wg_rows
        if m_block * self.tile_m + row < seqlen_q:
            for c in cutlass.range_constexpr(half_cols):
                if const_expr(self.bug == "o_accumulate"):
                    previous = gO[row % self.wg_rows, col0 + c, m_block * self.num_consumer_wg + box]
                    gO[row % self.wg_rows, col0 + c, m_block * self.num_consumer_wg + box] = self.dtype(
                        Float32(previous) + Float32(sO[row % self.wg_rows, col0 + c, box])
                    )
                else:
                    gO[row % self.wg_rows, col0 + c, m_block * self.num_consumer_wg + box] = sO[row % self.wg_rows, col0 + c, box]




# --------------------------------------------------------------------------------------
# The kernel's tile loop in torch, with its bug variants (mutants for diagnosis)
# --------------------------------------------------------------------------------------
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
        v = host.variants_of("c", variants)
        return FmhaOnline(
            common.cute_dtype(p.dtype), p.d, softmax=v["softmax"], rescale=v["rescale"] == "on", bug=v["bug"],
            o_store=v["o_store"],
        )

    def compile(self, p: Params, variants: Mapping[str, str], arch: str) -> host.Compiled:
        import time

        dtype = common.cute_dtype(p.dtype)
        kernel = self.make_kernel(p, variants)
        # m and n are runtime values: one compile per (d, dtype, variants) serves every m, n
        args = [host.fake_tensor(dtype, 2) for _ in range(4)] + [host.fake_tensor(Float32, 1), host.fake_stream()]
        t0 = time.perf_counter()
        fn = host.compile_for(arch, kernel, *args)
        return host.Compiled(fn=fn, d=p.d, p_check=kernel.p_check, compile_s=time.perf_counter() - t0)

    def launch(self, compiled: host.Compiled, inputs, outputs) -> None:
        assert inputs["q"].shape[-1] == compiled.d, "q's head dim does not match the compiled d"
        compiled.fn(
            host.to_cute(inputs["q"]), host.to_cute(inputs["k"]), host.to_cute(inputs["v"]),
            host.to_cute(outputs["o"]), host.to_cute(outputs["lse"]), host.current_stream(),
        )

    def reference(self, inputs, p: Params, variants, compute_dtype):
        import torch

        softmax = host.variants_of("c", variants)["softmax"]
        o, lse = reference.attention(inputs["q"], inputs["k"], inputs["v"], compute_dtype, softmax=softmax)
        return {"o": o.to(compute_dtype), "lse": lse.to(torch.float32)}
