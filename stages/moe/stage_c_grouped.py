"""Stage C: the grouped (varlen) GEMM over all experts in one launch, fused SwiGLU epilogue.

    out[p, :] = act( A[arow(p), :] @ B[e(p)] )     for every sorted routed row p

with e(p) the expert owning row p (cu_seqlens[e] <= p < cu_seqlens[e+1]) and arow(p) =
rows[p] (gather on: A = x (T, H), the up-projection) or p (gather off: A = h (R, I), the
down-projection). B = w (E, K, N) row-major per expert (N contiguous: the MN-major WGMMA B
operand). act = swiglu | gptoss (N = 2I interleaved gate/up columns -> I outputs) | identity
(the raw N columns) | none (a plain GEMM, N columns: the down-projection).

The kernel is ``GroupedGemm``, a subclass of stage A/B's ``gemm.MoeGemmSm90`` (the tiled MMA,
smem ring, pipeline prologue, consumer mainloop and epilogue are that class's). CTA:
1 + tile_m / 64 warpgroups (384 threads for the default 128 x 256 tile). Warpgroups 1..
consume (64 rows each of the tile, WGMMA, fp32 accumulators, the epilogue); warpgroup 0
produces:

* B (expert e's (tile_k x tile_n) slab) by TMA from the 3-D (N, K, E) view of w with the
  expert as the third coordinate, issued by the producer's warp 0;
* A by cp.async (TMA cannot gather rows on Hopper): each of the 128 producer threads
  copies 16-byte chunks of 8 rows (one chunk column each) into the same swizzled K-major
  smem layout the WGMMA reads; the rows are looked up once per tile through ``rows``;
  rows past the expert's end are zero-filled by the same cp.async with source size 0
  (a predicated copy), never loaded, so every byte of the stage is a tracked cp.async;
* one mbarrier per stage counts both: the TMA warp's arrive-and-expect-tx (B's bytes)
  plus one cp.async.mbarrier.arrive.noinc per producer thread, which fires when that
  thread's cp.asyncs have landed (full count = 1 + 128). Consumers release a stage with
  one arrive per warp (empty count = 4 per consumer WG).
* without gather (``a_load`` auto or tma) warp 0 loads A by TMA too, a (128 x 64) box from
  the tile's first sorted row (rows past the expert's end are the next expert's: loaded,
  never stored; past R: zero-filled by TMA), and the full count is 1 (the down-projection's
  fast path); ``a_load=cpasync`` keeps the cp.async producer with the identity row map.

Tiles: ``tile_scheduler.GroupedTiles`` (persistent, static round robin over (expert, n_tile,
m_tile); both roles walk the same sequence). K and N are compile-time constants (the
stage's h and i), T and R and the routing are runtime values: one compile serves every
token count and every routing.

Epilogue: from the accumulator registers straight to global memory, predicated on the tile
row belonging to the expert (rows past its end are the next expert's: never stored) and on
the column being inside N (the shared ``MoeGemmSm90.epilogue`` with m_base = the tile's
first sorted row, m_limit = the expert's end; a consumer WG none of whose 64 rows is the
expert's only passes the k stages on, no MMA, no store). Variant ``epilogue=smem``: the same
values and predicates through a shared-memory tile and 16-byte stores (gemm.epilogue_smem);
the activation bugs enter through ``pair_values`` there. SwiGLU pairs: the accumulator gives each
thread two adjacent columns (2i, 2i+1) = (gate_i, up_i), so each pair becomes one output
column i.

Bug variants (compile-time ``bug``; each changes the kernel's code path):
expert_offset_off_by_one (tile_scheduler: the expert's first row read from cu_seqlens[e+1]),
tail_from_next (tile_scheduler: row tiles cut every tile_m sorted rows across experts, so an
expert's last tile also loads the next expert's rows and stores them with its own weights;
stages/moe/mutants.tail_spill models it for tile_m 128),
tail_unwritten (a tail tile stores nothing), gather_ignored (A row = routed row index p,
modulo the rows of A, instead of rows[p]), gate_up_swapped (gate read from column 2i+1, up
from 2i), silu_on_up (up replaced by silu(up) before the activation: swiglu gives
silu(g) * silu(u)); these two leave activation=none (the down-projection) unchanged.
"""

import functools
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Type

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
from cutlass import Int32, const_expr
from cutlass.cute.nvgpu import cpasync

from stages.moe import activation as act
from stages.moe import host
from stages.moe.gemm import AUTO_STAGES, EPILOGUES, WG_THREADS, MoeGemmSm90, auto_stages
from stages.moe.tile_scheduler import GroupedTiles, grid_size
from stages.moe.trace import LAYOUT as TRACE_LAYOUT, TRACE_SLOTS, TRACE_TILES, no_stamp
from workbench.compile.probe import probe
from workbench.kernels.stage import Params, Stage, TensorSpec

ACTIVATIONS = ("swiglu", "identity", "gptoss", "none")
#: how A reaches shared memory: cp.async (any row map), TMA (row order only), auto (TMA
#: when not gathering)
A_LOADS = ("auto", "cpasync", "tma")
BUGS = (
    "none",
    "expert_offset_off_by_one",
    "tail_from_next",
    "tail_unwritten",
    "gather_ignored",
    "gate_up_swapped",
    "silu_on_up",
)


def out_columns(n: int, activation: str) -> int:
    """Columns of the output of a GEMM with N = n columns under ``activation``."""
    return n // 2 if activation in ("swiglu", "gptoss") else n


class GroupedGemm(MoeGemmSm90):
    """out = act(A[arow] @ B[e]) over the sorted routed rows of all experts (module docstring).

    Extends ``MoeGemmSm90`` (stage A/B's GEMM): its tiled MMA, smem layouts, shared storage,
    pipeline prologue, consumer mainloop and epilogue are used as they are; this class adds
    the persistent walk over (expert, n_tile, m_tile), the gathered-A producer and the bug
    hooks. Static: dtype, K, N, activation, gather, bug, tile shape, stages. Runtime: the rows
    of A, R (routed rows), E, rows, cu_seqlens, the grid."""

    # full-barrier arrivals: the TMA warp's arrive, plus one cp.async arrive per producer
    # thread when A comes by cp.async (set per instance in __init__)
    producer_arrivals = 1 + WG_THREADS

    def __init__(
        self,
        dtype: Type[cutlass.Numeric],
        k: int,
        n: int,
        activation: str = "swiglu",
        gather: bool = True,
        bug: str = "none",
        tile_n: int = 256,
        stages: int = 4,
        a_load: str = "auto",
        tile_m: int = 128,
        epilogue: str = "direct",
    ):
        assert activation in ACTIVATIONS, activation
        assert bug in BUGS, bug
        assert a_load in A_LOADS, a_load
        # "none" (the down-projection's plain GEMM) stores the accumulator as identity does
        super().__init__(dtype, tile_m=tile_m, tile_n=tile_n, tile_k=64, stages=stages,
                         activation="identity" if activation == "none" else activation, epilogue=epilogue)
        assert k % 8 == 0, f"K={k} must be a multiple of 8 (16-byte rows)"
        assert n % 8 == 0, f"N={n} must be a multiple of 8"
        self.k, self.n = k, n
        self.n_out = out_columns(n, activation)
        if epilogue == "smem":  # whole 16-byte chunks of an output row
            assert self.n_out % self.chunk_elems == 0, f"epilogue=smem needs {self.chunk_elems} | {self.n_out}"
        self.gather, self.bug = gather, bug
        # "none" is the down-projection's plain GEMM: no gate/up, so the two activation bugs
        # do not apply to it (stage D passes one bug to both of its GEMMs)
        self.plain = activation == "none"
        # A in row order (no gather) can come by TMA: the box starts at the tile's first row
        # (any row), rows past the expert's end are the next expert's (loaded, never stored)
        # and rows past R are zero-filled by TMA
        self.tma_a = a_load == "tma" or (a_load == "auto" and not gather)
        assert not (self.tma_a and gather), "a gathered A cannot be loaded by TMA on sm_90"
        self.producer_arrivals = 1 if self.tma_a else 1 + WG_THREADS
        # a K tail (K not a multiple of tile_k): B's TMA box and A's TMA box zero-fill past
        # K, A's cp.async chunks past K are zero-filled (source size 0)
        self.k_tiles = -(-k // self.tile_k)
        self.k_tail = k % self.tile_k != 0
        self.n_tiles = -(-n // self.tile_n)
        self.num_mma_threads = self.num_consumer_wg * WG_THREADS
        # the gathering producer keeps 8 row indices and their addresses: more than 40
        self.producer_regs, self.consumer_regs = 56, 224
        # cp.async geometry: 16-byte chunks; a k slab row is tile_k / chunk of them
        self.chunk = 128 // dtype.width
        self.chunks_per_row = self.tile_k // self.chunk
        self.rows_per_pass = WG_THREADS // self.chunks_per_row

    # ----------------------------------------------------------------------------------
    # host
    # ----------------------------------------------------------------------------------
    @cute.jit
    def __call__(
        self,
        mA_in: cute.Tensor,  # (rows of A, K) row-major
        mB_in: cute.Tensor,  # (E, K, N) row-major
        mOut_in: cute.Tensor,  # (R, n_out) row-major
        mRows: cute.Tensor,  # (R,) int32 (read only with gather)
        mCu: cute.Tensor,  # (E + 1,) int32
        grid_x: Int32,
        stream,
        mTrace: Optional[cute.Tensor] = None,  # the int32 stamp buffer of a traced build (stages/moe/trace.py)
    ):
        # Static strides (K and N are compile-time): row offsets are then provably 16-byte
        # aligned, as the 16-byte cp.async needs; the launch checks the tensors are contiguous.
        mA = cute.make_tensor(mA_in.iterator, cute.make_layout((mA_in.shape[0], self.k), stride=(self.k, 1)))
        mB = cute.make_tensor(
            mB_in.iterator,
            cute.make_layout((self.n, self.k, mB_in.shape[0]), stride=(1, self.n, self.k * self.n)),
        )  # (N, K, E): N contiguous = the MN-major B operand
        mOut = cute.make_tensor(
            mOut_in.iterator, cute.make_layout((mOut_in.shape[0], self.n_out), stride=(self.n_out, 1))
        )
        tiled_mma = self.make_tiled_mma()
        sA_layout, sB_layout = self.make_smem_layouts()
        sB_one = cute.select(sB_layout, mode=[0, 1])
        tma_atom_b, tma_b = cpasync.make_tiled_tma_atom(
            cpasync.CopyBulkTensorTileG2SOp(), mB, sB_one, (self.tile_n, self.tile_k)
        )
        self.tx_bytes = cute.size_in_bytes(self.dtype, sB_one)
        tma_atom_a = None
        if const_expr(self.tma_a):
            sA_one = cute.select(sA_layout, mode=[0, 1])
            tma_atom_a, mA = cpasync.make_tiled_tma_atom(
                cpasync.CopyBulkTensorTileG2SOp(), mA, sA_one, (self.tile_m, self.tile_k)
            )
            self.tx_bytes += cute.size_in_bytes(self.dtype, sA_one)
        self.shared_storage = self.make_shared_storage(sA_layout, sB_layout)
        # with mTrace (wb run --trace): clock stamps per CTA, warpgroup and work tile, laid out
        # by stages/moe/trace.py; without it the kernel has no stamp code at all
        assert mTrace is None or 1 + self.num_consumer_wg <= TRACE_SLOTS, "the trace layout has a slot per warpgroup"
        self.kernel(mA, tma_atom_a, tma_atom_b, tma_b, mOut, mRows, mCu, tiled_mma, sA_layout, sB_layout, mTrace).launch(
            grid=(grid_x, 1, 1), block=[self.num_threads, 1, 1], stream=stream, min_blocks_per_mp=1
        )

    # ----------------------------------------------------------------------------------
    # device
    # ----------------------------------------------------------------------------------
    @cute.kernel
    def kernel(
        self,
        mA: cute.Tensor,
        tma_atom_a: Optional[cute.CopyAtom],
        tma_atom_b: cute.CopyAtom,
        mB: cute.Tensor,
        mOut: cute.Tensor,
        mRows: cute.Tensor,
        mCu: cute.Tensor,
        tiled_mma: cute.TiledMma,
        sA_layout: cute.ComposedLayout,
        sB_layout: cute.ComposedLayout,
        mTrace: Optional[cute.Tensor],
    ):
        tidx, _, _ = cute.arch.thread_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg_idx = cute.arch.make_warp_uniform(tidx // WG_THREADS)
        if wg_idx == 0:
            self.trace_clocks(mTrace, 0)
        atoms = (tma_atom_a, tma_atom_b) if const_expr(self.tma_a) else (tma_atom_b,)
        pipe, sA, sB = self._prologue(warp_idx, atoms, sA_layout, sB_layout)
        probe("sA", sA)
        probe("sB", sB)
        tiles = GroupedTiles.create(mCu, self.tile_m, Int32(self.n_tiles), Int32(mOut.shape[0]), self.bug)

        if wg_idx == 0:
            cute.arch.setmaxregister_decrease(self.producer_regs)
            if const_expr(self.tma_a):
                if warp_idx == 0:
                    self.produce_tma(mA, tma_atom_a, tma_atom_b, mB, sA, sB, pipe, tiles, mTrace)
            else:
                self.produce_grouped(mA, tma_atom_b, mB, mRows, sA, sB, pipe, tiles, tidx, mTrace)
        else:
            cute.arch.setmaxregister_increase(self.consumer_regs)
            self.consume_grouped(mOut, sA, sB, pipe, tiled_mma, tiles, tidx - WG_THREADS, wg_idx - 1, mTrace)
            if wg_idx == 1:
                self.trace_clocks(mTrace, 2)

    # ---- trace (wb run --trace) ----------------------------------------------------------
    def stamp_fn(self, mTrace: Optional[cute.Tensor], lane: Int32, j: Int32):
        """``stamp(event, when=True)`` for ``lane``'s ``j``-th work tile of this CTA:
        ``no_stamp`` (no code at all) unless tracing."""
        if const_expr(mTrace is None):
            return no_stamp
        return functools.partial(self.stamp, mTrace, lane, j)

    def tick(self, mTrace: Optional[cute.Tensor], lane: Int32, j: Int32, event: int, when=True):
        """``stamp_fn(mTrace, lane, j)(event, when)``: nothing unless tracing."""
        self.stamp_fn(mTrace, lane, j)(event, when)

    @cute.jit
    def stamp(self, mTrace: cute.Tensor, lane: Int32, j: Int32, event: cutlass.Constexpr[int], when=True):
        """Thread 0 of the calling warpgroup writes clock() as ``event`` of its tile's words
        (the CTA's first TRACE_TILES tiles only; ``when``: a condition of the caller's)."""
        tidx, _, _ = cute.arch.thread_idx()
        bidx, _, _ = cute.arch.block_idx()
        if tidx % WG_THREADS == 0:
            if j < TRACE_TILES:
                if when:
                    mTrace[TRACE_LAYOUT.word(bidx, lane, j, event)] = cute.arch.clock()

    @cute.jit
    def trace_clocks(self, mTrace: Optional[cute.Tensor], at: cutlass.Constexpr[int]):
        """(globaltimer_lo, clock) of this CTA at its start (at=0) or end (at=2), written by
        the calling warpgroup's thread 0 (they convert clocks to nanoseconds)."""
        if const_expr(mTrace is not None):
            tidx, _, _ = cute.arch.thread_idx()
            bidx, _, _ = cute.arch.block_idx()
            gdim, _, _ = cute.arch.grid_dim()
            if tidx % WG_THREADS == 0:
                base = TRACE_LAYOUT.clock_word(gdim, bidx) + at
                mTrace[base] = cute.arch.globaltimer_lo()
                mTrace[base + 1] = cute.arch.clock()

    # ---- producer warpgroup --------------------------------------------------------------
    @cute.jit
    def produce_grouped(
        self,
        mA: cute.Tensor,
        tma_atom_b: cute.CopyAtom,
        mB: cute.Tensor,
        mRows: cute.Tensor,
        sA: cute.Tensor,
        sB: cute.Tensor,
        pipe: pipeline.PipelineTmaAsync,
        tiles: GroupedTiles,
        ptid: Int32,
        mTrace: Optional[cute.Tensor] = None,
    ):
        """WG0: B by TMA (warp 0), A rows by cp.async (all 128 threads), tile after tile."""
        is_tma_warp = cute.arch.make_warp_uniform(cute.arch.warp_idx()) == 0
        # thread ptid copies chunk (ptid % chunks_per_row) of rows ptid // chunks_per_row
        # + rows_per_pass * i of the (tile_m, tile_k) slab
        copy_atom = cute.make_copy_atom(
            cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), self.dtype, num_bits_per_copy=128
        )
        tiled_copy_a = cute.make_tiled_copy_tv(
            copy_atom,
            cute.make_layout((self.rows_per_pass, self.chunks_per_row), stride=(self.chunks_per_row, 1)),
            cute.make_layout((1, self.chunk)),
        )
        thr_copy_a = tiled_copy_a.get_slice(ptid)
        tAsA = thr_copy_a.partition_D(sA)  # (CPY, rows per thread, 1, stages)
        tAcA = thr_copy_a.partition_S(cute.make_identity_tensor((self.tile_m, self.tile_k)))
        probe("tAsA", tAsA)
        probe("tAcA", tAcA)
        rows_per_thread = cute.size(tAsA, mode=[1])
        a_rows = cute.size(mA, mode=[0])
        t_chunk = tAcA[0, 0, 0][1] // self.chunk  # this thread's chunk column in the slab

        state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.stages)
        tile, e, base, mt = tiles.first()
        step = tiles.step()
        e, base, mt = tiles.locate(tile, e, base, mt)
        j = Int32(0)  # this CTA's work tiles so far (the trace's tile index)
        while e < tiles.num_experts:
            self.tick(mTrace, Int32(0), j, 0)
            m_tile, n_tile, row_start, rows = tiles.coords(tile, e, base, mt)
            # the A row of each of this thread's tile rows; -1: past the expert's end
            a_idx = cute.make_rmem_tensor((rows_per_thread,), Int32)
            for i in cutlass.range_constexpr(rows_per_thread):
                r = tAcA[0, i, 0][0]
                a_idx[i] = Int32(-1)
                if r < rows:
                    if const_expr(not self.gather):
                        a_idx[i] = row_start + r
                    elif const_expr(self.bug == "gather_ignored"):
                        a_idx[i] = (row_start + r) % a_rows
                    else:
                        a_idx[i] = mRows[row_start + r]

            gB = cute.local_tile(mB[None, None, e], (self.tile_n, self.tile_k), (n_tile, None))  # (tn, tk, k)
            tBsB, tBgB = cpasync.tma_partition(
                tma_atom_b, 0, cute.make_layout(1), cute.group_modes(sB, 0, 2), cute.group_modes(gB, 0, 2)
            )
            probe("gB", gB)
            probe("tBgB", tBgB)
            probe("tBsB", tBsB)

            for k_tile in cutlass.range(self.k_tiles, unroll=1):
                # every producer thread waits for the slot; the TMA warp also posts B's bytes
                if is_tma_warp:
                    pipe.producer_acquire(state)
                    self.tick(mTrace, Int32(0), j, 1, k_tile == 0)
                    cute.copy(tma_atom_b, tBgB[None, k_tile], tBsB[None, state.index],
                              tma_bar_ptr=pipe.producer_get_barrier(state))
                else:
                    pipe.sync_object_empty.wait(state.index, state.phase)
                chunk_idx = k_tile * self.chunks_per_row + t_chunk
                col_ok = cutlass.Boolean(True)
                if const_expr(self.k_tail):
                    col_ok = chunk_idx < self.k // self.chunk
                    chunk_idx = cutlass.min(chunk_idx, self.k // self.chunk - 1)
                for i in cutlass.range_constexpr(rows_per_thread):
                    dst = tAsA[None, i, 0, state.index]
                    # a row past the expert's end (or a chunk past K): source size 0, i.e.
                    # the chunk is zero-filled (the address, kept inside A, is not read)
                    src = cute.local_tile(mA[cutlass.max(a_idx[i], 0), None], (self.chunk,), (chunk_idx,))
                    pred = cute.make_rmem_tensor((1,), cutlass.Boolean)
                    pred[0] = a_idx[i] >= 0
                    if const_expr(self.k_tail):
                        pred[0] = pred[0] & col_ok
                    cute.copy(copy_atom, cute.make_tensor(src.iterator, dst.layout.shape), dst, pred=pred)
                # fires once this thread's cp.asyncs into the stage have landed
                cute.arch.cp_async_mbarrier_arrive_noinc(pipe.producer_get_barrier(state))
                state.advance()
            self.tick(mTrace, Int32(0), j, 2)
            tile = tile + step
            j = j + 1
            e, base, mt = tiles.locate(tile, e, base, mt)
        # no thread leaves with its copies in flight
        cute.arch.cp_async_commit_group()
        cute.arch.cp_async_wait_group(0)

    @cute.jit
    def produce_tma(
        self,
        mA: cute.Tensor,
        tma_atom_a: cute.CopyAtom,
        tma_atom_b: cute.CopyAtom,
        mB: cute.Tensor,
        sA: cute.Tensor,
        sB: cute.Tensor,
        pipe: pipeline.PipelineTmaAsync,
        tiles: GroupedTiles,
        mTrace: Optional[cute.Tensor] = None,
    ):
        """Warp 0 of WG0, A in row order (no gather): A and B of every tile by TMA (the shared
        ``load_tile``); A's box starts at the tile's first sorted row."""
        state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.stages)
        tile, e, base, mt = tiles.first()
        step = tiles.step()
        e, base, mt = tiles.locate(tile, e, base, mt)
        j = Int32(0)
        while e < tiles.num_experts:
            self.tick(mTrace, Int32(0), j, 0)
            m_tile, n_tile, row_start, rows = tiles.coords(tile, e, base, mt)
            gA = cute.local_tile(cute.domain_offset((row_start, 0), mA), (self.tile_m, self.tile_k), (0, None))
            gB = cute.local_tile(mB[None, None, e], (self.tile_n, self.tile_k), (n_tile, None))
            tAsA, tAgA = cpasync.tma_partition(
                tma_atom_a, 0, cute.make_layout(1), cute.group_modes(sA, 0, 2), cute.group_modes(gA, 0, 2)
            )  # (TMA, stages), (TMA, k tiles)
            tBsB, tBgB = cpasync.tma_partition(
                tma_atom_b, 0, cute.make_layout(1), cute.group_modes(sB, 0, 2), cute.group_modes(gB, 0, 2)
            )
            probe("gA", gA)
            probe("tAgA", tAgA)
            probe("tAsA", tAsA)
            probe("gB", gB)
            probe("tBgB", tBgB)
            state = self.load_tile(
                tma_atom_a, tma_atom_b, tAgA, tBgB, tAsA, tBsB, pipe, state, Int32(self.k_tiles),
                stamp=self.stamp_fn(mTrace, Int32(0), j),
            )
            self.tick(mTrace, Int32(0), j, 2)
            tile = tile + step
            j = j + 1
            e, base, mt = tiles.locate(tile, e, base, mt)

    # ---- consumer warpgroups ------------------------------------------------------------
    @cute.jit
    def consume_grouped(
        self,
        mOut: cute.Tensor,
        sA: cute.Tensor,
        sB: cute.Tensor,
        pipe: pipeline.PipelineTmaAsync,
        tiled_mma: cute.TiledMma,
        tiles: GroupedTiles,
        tidx_c: Int32,
        wg: Int32,
        mTrace: Optional[cute.Tensor] = None,
    ):
        """WG1, WG2: the shared mainloop and epilogue, tile after tile (the ring's state
        carried from one tile to the next)."""
        tCrA, tCrB, acc, tCcAcc = self.mma_fragments(tiled_mma, sA, sB, tidx_c, wg)
        read = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.stages)
        tile, e, base, mt = tiles.first()
        step = tiles.step()
        e, base, mt = tiles.locate(tile, e, base, mt)
        j = Int32(0)
        while e < tiles.num_experts:
            self.tick(mTrace, wg + 1, j, 0)
            m_tile, n_tile, row_start, rows = tiles.coords(tile, e, base, mt)
            if rows > wg * 64:
                read = self.mma_tile(
                    tiled_mma, tCrA, tCrB, acc, pipe, read, Int32(self.k_tiles), stamp=self.stamp_fn(mTrace, wg + 1, j)
                )
                self.tick(mTrace, wg + 1, j, 2)
            else:
                # none of this WG's 64 rows is the expert's (a short last tile): its MMAs
                # would only multiply zero rows, so it just passes the stages on (the
                # other WG's MMAs then have the tensor cores to themselves); no stores
                read = self.drain_tile(pipe, read, Int32(self.k_tiles))
            if const_expr(self.bug == "tail_unwritten"):
                if rows < self.tile_m:
                    rows = Int32(0)
            self.epilogue(acc, tCcAcc, mOut, row_start, n_tile * self.tile_n, row_start + rows, Int32(self.n))
            self.tick(mTrace, wg + 1, j, 3)
            tile = tile + step
            j = j + 1
            e, base, mt = tiles.locate(tile, e, base, mt)

    @cute.jit
    def drain_tile(self, pipe: pipeline.PipelineTmaAsync, state: pipeline.PipelineState, k_tiles: Int32):
        """A consumer WG with no rows in this tile: wait for and release each k stage (the
        ring's protocol as ``mma_tile`` keeps it), no MMA. Returns the advanced state."""
        for k in cutlass.range(k_tiles, unroll=1):
            pipe.consumer_wait(state)
            pipe.consumer_release(state)
            state.advance()
        return state

    def pair_values(self, g, u) -> list:
        """The shared pair values with the two activation bugs (both epilogues read them)."""
        if const_expr(self.bug in ("gate_up_swapped", "silu_on_up") and not self.plain):
            if const_expr(self.bug == "gate_up_swapped"):
                g, u = u, g
            if const_expr(self.activation == "identity"):
                return [g, u]
            if const_expr(self.bug == "silu_on_up"):
                return [act.apply(self.activation, g, u * act.sigmoid(u))]
            return [act.apply(self.activation, g, u)]
        return MoeGemmSm90.pair_values(self, g, u)


# --------------------------------------------------------------------------------------
# wb stage
# --------------------------------------------------------------------------------------
TILE_M = 128
TILE_N = 256
#: smem ring depth by (tile_m, tile_n) with the direct epilogue (gemm.AUTO_STAGES; with
#: epilogue=smem: gemm.auto_stages)
STAGES = AUTO_STAGES[TILE_M, TILE_N]


@dataclass
class Compiled:
    """What ``StageC.compile`` returns: the JIT function and the facts launch needs."""

    fn: Any
    k: int
    n: int
    n_out: int
    gather: bool
    n_tiles: int
    tile_m: int


def grouped_stages(tile_m: int, tile_n: int, activation: str, epilogue: str = "direct") -> int:
    """The ``stages=auto`` ring depth of a grouped GEMM: the most that fits beside the smem
    epilogue's output tile (gemm.auto_stages; 16-bit types)."""
    return auto_stages(tile_m, tile_n, epilogue, identity=out_columns(2, activation) == 2)


@functools.lru_cache(maxsize=8)
def _num_sms(device_index: int) -> int:
    return host.sm_count(device_index)


def run_grouped(compiled: Compiled, a, w, out, rows, cu_seqlens, num_sms: int | None = None, trace_buf=None) -> int:
    """Launch a compiled grouped GEMM: out[p] = act(a[rows[p]] @ w[e(p)]) (gather) or
    act(a[p] @ w[e(p)]) (no gather). a (rows of A, K), w (E, K, N), out (R, n_out), rows (R,)
    int32, cu_seqlens (E + 1,) int32, all contiguous CUDA tensors. No host synchronisation:
    the grid comes from R and E only (tile_scheduler.grid_size). Stage D calls this too.
    ``trace_buf``: a traced build's int32 stamp buffer (stages/moe/trace.py), sized for
    ``num_sms`` CTAs (the grid is never larger). Returns the grid (0: nothing launched)."""
    problems = []
    if a.shape[1] != compiled.k or w.shape[1] != compiled.k:
        problems.append(f"K: a {tuple(a.shape)}, w {tuple(w.shape)}, compiled for K={compiled.k}")
    if w.shape[2] != compiled.n:
        problems.append(f"w {tuple(w.shape)} has N={w.shape[2]}, compiled for N={compiled.n}")
    if out.shape[1] != compiled.n_out or out.shape[0] != rows.shape[0]:
        problems.append(f"out {tuple(out.shape)} != (R={rows.shape[0]}, {compiled.n_out})")
    if cu_seqlens.shape[0] != w.shape[0] + 1:
        problems.append(f"cu_seqlens has {cu_seqlens.shape[0]} entries for E={w.shape[0]}")
    # the epilogue's and the cp.async producer's element offsets are 32-bit (B goes by TMA,
    # whose descriptor has 64-bit strides)
    for name, t in (("a", a), ("out", out)):
        if t.numel() >= 2**31:
            problems.append(f"{name} has {t.numel()} elements (>= 2^31: 32-bit offsets)")
    for name, t in (("a", a), ("w", w), ("out", out), ("rows", rows), ("cu_seqlens", cu_seqlens)):
        if not t.is_contiguous():
            problems.append(f"{name} is not contiguous")
        if t.data_ptr() % 16:
            problems.append(f"{name} is not 16-byte aligned")
    if problems:
        raise ValueError("moe grouped launch: " + "; ".join(problems))
    R, E = int(rows.shape[0]), int(w.shape[0])
    if R == 0:
        return 0
    if num_sms is None:
        num_sms = _num_sms(a.device.index if a.device.index is not None else 0)
    grid = grid_size(R, E, compiled.n_tiles, compiled.tile_m, num_sms)
    args = [host.to_cute(a), host.to_cute(w), host.to_cute(out), host.to_cute(rows), host.to_cute(cu_seqlens), Int32(grid), host.current_stream()]
    compiled.fn(*args, *([host.to_cute(trace_buf)] if trace_buf is not None else []))
    return grid


def compile_grouped(dtype_name: str, k: int, n: int, activation: str, gather: bool, bug: str = "none",
                    arch: str = "sm_90a", tile_n: int = TILE_N, stages: int | None = None, a_load: str = "auto",
                    keep_ptx: bool = False, tile_m: int = TILE_M, epilogue: str = "direct", trace: bool = False):
    """(kernel object, Compiled) for one static configuration (no GPU needed); ``keep_ptx``
    keeps the PTX on ``Compiled.fn.__ptx__``. Stage D compiles its two GEMMs with this.
    ``stages=None``: the auto ring depth for the tile and ``epilogue`` (``grouped_stages``).
    ``trace``: the clock-stamped build (launched with a trace buffer; wb run --trace)."""
    if stages is None:
        stages = grouped_stages(tile_m, tile_n, activation, epilogue)
    dtype = host.cute_dtype(dtype_name)
    kernel = GroupedGemm(dtype, k, n, activation, gather, bug, tile_n=tile_n, stages=stages, a_load=a_load,
                         tile_m=tile_m, epilogue=epilogue)
    a, w, out = host.fake_tensor(dtype, 2), host.fake_tensor(dtype, 3), host.fake_tensor(dtype, 2)
    rows, cu = host.fake_tensor(Int32, 1), host.fake_tensor(Int32, 1)
    extra = [host.fake_tensor(Int32, 1)] if trace else []
    fn = host.compile_for(arch, kernel, a, w, out, rows, cu, Int32(1), host.fake_stream(), *extra, keep_ptx=keep_ptx)
    return kernel, Compiled(fn, k, n, kernel.n_out, gather, kernel.n_tiles, kernel.tile_m)


class StageC(Stage):
    """wb stage C: h = act(x[rows] · W1[e]) for all experts in one launch, rows in sorted order."""

    proves = (
        "One launch covers every (expert, m tile, n tile) exactly once whatever the routing (empty "
        "experts, one-row experts, tails, all tokens on one expert); each routed row reads the token "
        "that rows[] names (cp.async gather into the swizzled K-major smem the WGMMA reads, the "
        "mbarrier counting both the cp.async arrivals and B's TMA bytes), multiplies it by its own "
        "expert's W1 (TMA with the expert coordinate), and the rows past an expert's end are neither "
        "read from the next expert nor stored; the SwiGLU epilogue as in stage B."
    )
    cannot_see = (
        "The router (topk_ids are given), the down-projection and the weighted combine (stage D); "
        "the order of rows inside one expert beyond what the plan fixes (stable sort: token order)."
    )
    compile_params = ("h", "i", "dtype", "activation")  # t, e, topk and the routing are runtime

    def inputs(self, p: Params) -> dict[str, TensorSpec]:
        return {
            "x": TensorSpec((p.t, p.h), p.dtype),
            "topk_ids": TensorSpec((p.t, p.topk), "int32"),
            "w1": TensorSpec((p.e, p.h, 2 * p.i), p.dtype),
        }

    def outputs(self, p: Params) -> dict[str, TensorSpec]:
        return {"h": TensorSpec((p.t * p.topk, out_columns(2 * p.i, p.activation)), p.dtype)}

    def flops(self, p: Params) -> float:
        return 2.0 * p.t * p.topk * p.h * 2 * p.i

    def compile(self, p: Params, variants: Mapping[str, str], arch: str, trace: bool = False):
        v = {k: str(x) for k, x in dict(variants or {}).items()}
        tile_m, tile_n = int(v.get("tile_m", TILE_M)), int(v.get("tile_n", TILE_N))
        epilogue = v.get("epilogue", "smem")
        if epilogue not in EPILOGUES:
            raise ValueError(f"epilogue={epilogue}: one of {', '.join(EPILOGUES)}")
        stages = None if v.get("stages", "auto") == "auto" else int(v["stages"])
        self.kernel_obj, compiled = compile_grouped(
            p.dtype, p.h, 2 * p.i, p.activation, v.get("gather", "on") == "on", v.get("bug", "none"), arch,
            tile_n=tile_n, stages=stages, a_load=v.get("a_load", "auto"), tile_m=tile_m, epilogue=epilogue, trace=trace,
        )
        return compiled

    def launch(self, compiled, inputs, outputs, trace_buf=None) -> int:
        """Plan the routing, launch; returns the grid. ``trace_buf``: a traced build's stamps."""
        from stages.moe.plan import make_plan

        x, ids, w1, out = inputs["x"], inputs["topk_ids"], inputs["w1"], outputs["h"]
        plan = make_plan(ids, w1.shape[0])
        a = x if compiled.gather else x[plan.rows.long()].contiguous()
        return run_grouped(compiled, a, w1, out, plan.rows, plan.cu_seqlens, trace_buf=trace_buf)

    def trace(self, p: Params, variants: Mapping[str, str], arch: str, inputs, outputs):
        """wb run --trace: this configuration built with clock stamps (stages/moe/trace.py),
        launched once on ``inputs``; per CTA, warpgroup and work tile of the grouped walk."""
        import torch

        from stages.moe import trace as moe_trace
        from workbench.run.timeline import Timeline

        compiled = self.compile(p, variants, arch, trace=True)
        kernel = self.kernel_obj
        x = inputs["x"]
        buf = torch.zeros(moe_trace.LAYOUT.length(_num_sms(x.device.index or 0)), dtype=torch.int32, device=x.device)
        grid = self.launch(compiled, inputs, outputs, trace_buf=buf)
        torch.cuda.synchronize()
        slices, clocks = moe_trace.decode(buf.cpu().tolist(), grid, kernel.num_consumer_wg)
        title = (f"moe stage C grouped GEMM t={p.t} h={p.h} i={p.i} e={p.e} topk={p.topk} {p.activation} {p.dtype} · "
                 f"{kernel.tile_m}x{kernel.tile_n} tiles, {kernel.stages} stages, {grid} CTAs on {torch.cuda.get_device_name(x.device)}")
        return Timeline(slices, clocks, moe_trace.lanes(kernel.num_consumer_wg), title, tiles_stamped=TRACE_TILES)

    def reference(self, inputs, p: Params, variants, compute_dtype):
        return {"h": grouped_reference(inputs["x"], inputs["topk_ids"], inputs["w1"], p.activation, compute_dtype)}


def grouped_reference(x, topk_ids, w1, activation: str, compute_dtype):
    """h[p] = act(x[rows[p]] · W1[e]) for the sorted rows p of each expert e (plan.make_plan),
    each expert's product in ``compute_dtype`` then the activation in fp32 and one rounding
    to ``compute_dtype`` (as stage B's reference.up_projection). Only ``reference.activate``
    is used from the shared reference module."""
    import torch

    from stages.moe import reference
    from stages.moe.plan import make_plan

    plan = make_plan(topk_ids, w1.shape[0])
    cu = [int(c) for c in plan.cu_seqlens.tolist()]
    act_name = "identity" if activation == "none" else activation
    out = torch.zeros((plan.num_rows, out_columns(w1.shape[2], activation)), dtype=compute_dtype, device=x.device)
    for e in range(w1.shape[0]):
        lo, hi = cu[e], cu[e + 1]
        if hi > lo:
            d = x[plan.rows[lo:hi].long()].to(compute_dtype) @ w1[e].to(compute_dtype)
            out[lo:hi] = reference.activate(d.to(torch.float32), act_name).to(compute_dtype)
    return out
