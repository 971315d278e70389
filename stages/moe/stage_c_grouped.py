"""Stage C: the grouped (varlen) GEMM over all experts in one launch, fused SwiGLU epilogue.

    out[p, :] = act( A[arow(p), :] @ B[e(p)] )     for every sorted routed row p

with e(p) the expert owning row p (cu_seqlens[e] <= p < cu_seqlens[e+1]) and arow(p) =
rows[p] (gather on: A = x (T, H), the up-projection) or p (gather off: A = h (R, I), the
down-projection). B = w (E, K, N) row-major per expert (N contiguous: the MN-major WGMMA B
operand). act = swiglu | gptoss (N = 2I interleaved gate/up columns -> I outputs) | identity
(the raw N columns) | none (a plain GEMM, N columns: the down-projection).

CTA: 3 warpgroups, 384 threads. Warpgroups 0 and 1 consume (64 rows each of the 128-row
tile, WGMMA, fp32 accumulators, the epilogue); warpgroup 2 produces:

* B (expert e's (tile_k x tile_n) slab) by TMA from the 3-D (N, K, E) view of w with the
  expert as the third coordinate, issued by the producer's warp 0;
* A by cp.async (TMA cannot gather rows on Hopper): each of the 128 producer threads
  copies 16-byte chunks of 8 rows (one chunk column each) into the same swizzled K-major
  smem layout the WGMMA reads; the rows are looked up once per tile through ``rows``;
  rows past the expert's end are zero-filled with plain shared stores (then a
  fence.proxy.async so the WGMMA's async proxy sees them), never loaded;
* one mbarrier per stage counts both: the TMA warp's arrive-and-expect-tx (B's bytes)
  plus one cp.async.mbarrier.arrive.noinc per producer thread, which fires when that
  thread's cp.asyncs have landed (full count = 1 + 128). Consumers release a stage with
  one arrive per warp (empty count = 8).

Tiles: ``tile_scheduler.GroupedTiles`` (persistent, static round robin over (expert, n_tile,
m_tile); both roles walk the same sequence). K and N are compile-time constants (the
stage's h and i), T and R and the routing are runtime values: one compile serves every
token count and every routing.

Epilogue: from the accumulator registers straight to global memory, predicated on the tile
row belonging to the expert (rows past its end are the next expert's: never stored) and on
the column being inside N. SwiGLU pairs: the accumulator gives each thread two adjacent
columns (2i, 2i+1) = (gate_i, up_i), so each pair becomes one output column i.

Bug variants (compile-time ``bug``; each changes the kernel's code path):
expert_offset_off_by_one (tile_scheduler: the expert's first row read from cu_seqlens[e+1]),
tail_from_next (the tail tile loads and stores all tile_m rows: rows of the next expert are
computed with this expert's weights and overwrite that expert's output),
tail_unwritten (a tail tile stores nothing), gather_ignored (A row = routed row index p,
modulo the rows of A, instead of rows[p]), gate_up_swapped (gate read from column 2i+1, up
from 2i), silu_on_up (the activation also applied to up: silu(g) * silu(u)).
"""

import math
from typing import Mapping, Type

import cutlass
import cutlass.cute as cute
import cutlass.memory
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32, const_expr
from cutlass.cute.nvgpu import OperandMajorMode, cpasync, warpgroup
from cutlass.tensor_utils import LayoutEnum

from stages.moe.tile_scheduler import GroupedTiles, grid_size
from workbench.compile.probe import probe
from workbench.kernels.stage import Params, Stage, TensorSpec

ACTIVATIONS = ("swiglu", "identity", "gptoss", "none")
BUGS = (
    "none",
    "expert_offset_off_by_one",
    "tail_from_next",
    "tail_unwritten",
    "gather_ignored",
    "gate_up_swapped",
    "silu_on_up",
)
WG_THREADS = 128
LOG2_E = math.log2(math.e)
#: gpt-oss: g * sigmoid(ALPHA * g) * (u + 1), g <= LIMIT, -LIMIT <= u <= LIMIT
GPTOSS_ALPHA = 1.702
GPTOSS_LIMIT = 7.0


def out_columns(n: int, activation: str) -> int:
    """Columns of the output of a GEMM with N = n columns under ``activation``."""
    return n // 2 if activation in ("swiglu", "gptoss") else n


class GroupedGemm:
    """out = act(A[arow] @ B[e]) over the sorted routed rows of all experts (module docstring).

    Static: dtype, K (reduction), N (columns of B), activation, gather, bug, the tile shape
    and the stage count. Runtime: the rows of A, R (routed rows), E, rows, cu_seqlens."""

    def __init__(
        self,
        dtype: Type[cutlass.Numeric],
        k: int,
        n: int,
        activation: str = "swiglu",
        gather: bool = True,
        bug: str = "none",
        tile_m: int = 128,
        tile_n: int = 128,
        tile_k: int = 64,
        stages: int = 5,
        num_sms: int = 132,
    ):
        assert activation in ACTIVATIONS, activation
        assert bug in BUGS, bug
        assert tile_m == 128 and tile_k == 64, "2 consumer WGs of 64 rows, 128B-swizzled k slabs"
        assert k % tile_k == 0, f"K={k} must be a multiple of {tile_k}"
        assert n % 8 == 0, f"N={n} must be a multiple of 8 (16-byte rows for TMA)"
        if activation in ("swiglu", "gptoss"):
            assert n % 2 == 0
        self.dtype = dtype
        self.k, self.n = k, n
        self.n_out = out_columns(n, activation)
        self.activation, self.gather, self.bug = activation, gather, bug
        self.tile_m, self.tile_n, self.tile_k = tile_m, tile_n, tile_k
        self.stages = stages
        self.num_sms = num_sms
        self.k_tiles = k // tile_k
        self.n_tiles = -(-n // tile_n)
        self.num_consumer_wg = tile_m // 64
        self.num_mma_threads = self.num_consumer_wg * WG_THREADS
        self.producer_warp = self.num_consumer_wg * 4  # first warp of the producer WG
        self.num_threads = self.num_mma_threads + WG_THREADS
        self.producer_regs, self.consumer_regs = 56, 224
        # cp.async geometry: 16-byte chunks, a k slab row = tile_k / 8 chunks
        self.chunk = 128 // dtype.width
        self.chunks_per_row = tile_k // self.chunk
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
    ):
        # Static strides (K, N known): row offsets are then provably 16-byte aligned, which
        # the 16-byte cp.async needs; the launch checks the tensors are contiguous.
        mA = cute.make_tensor(mA_in.iterator, cute.make_layout((mA_in.shape[0], self.k), stride=(self.k, 1)))
        mB = cute.make_tensor(
            mB_in.iterator,
            cute.make_layout((self.n, self.k, mB_in.shape[0]), stride=(1, self.n, self.k * self.n)),
        )  # (N, K, E): N contiguous = MN-major B
        mOut = cute.make_tensor(
            mOut_in.iterator, cute.make_layout((mOut_in.shape[0], self.n_out), stride=(self.n_out, 1))
        )
        tile_mnk = (self.tile_m, self.tile_n, self.tile_k)
        tiled_mma = sm90_utils.make_trivial_tiled_mma(
            self.dtype,
            self.dtype,
            OperandMajorMode.K,
            OperandMajorMode.MN,
            Float32,
            atom_layout_mnk=(self.num_consumer_wg, 1, 1),
            tiler_mn=(64, self.tile_n),
        )
        sA_layout = sm90_utils.make_smem_layout_a(LayoutEnum.ROW_MAJOR, tile_mnk, self.dtype, self.stages)
        sB_layout = sm90_utils.make_smem_layout_b(LayoutEnum.COL_MAJOR, tile_mnk, self.dtype, self.stages)
        sB_one = cute.slice_(sB_layout, (None, None, 0))
        tma_atom_b, tma_b = cpasync.make_tiled_tma_atom(
            cpasync.CopyBulkTensorTileG2SOp(), mB, sB_one, (self.tile_n, self.tile_k)
        )
        self.b_bytes = cute.size_in_bytes(self.dtype, sB_one)

        @cute.struct
        class SharedStorage:
            mbar: cute.struct.MemRange[cutlass.Int64, 2 * self.stages]
            sA: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sA_layout)], 1024]
            sB: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sB_layout)], 1024]

        self.shared_storage = SharedStorage

        self.kernel(mA, tma_atom_b, tma_b, mOut, mRows, mCu, tiled_mma, sA_layout, sB_layout).launch(
            grid=(grid_x, 1, 1), block=[self.num_threads, 1, 1], stream=stream
        )

    # ----------------------------------------------------------------------------------
    # device
    # ----------------------------------------------------------------------------------
    @cute.kernel
    def kernel(
        self,
        mA: cute.Tensor,
        tma_atom_b: cute.CopyAtom,
        mB: cute.Tensor,
        mOut: cute.Tensor,
        mRows: cute.Tensor,
        mCu: cute.Tensor,
        tiled_mma: cute.TiledMma,
        sA_layout: cute.ComposedLayout,
        sB_layout: cute.ComposedLayout,
    ):
        tidx, _, _ = cute.arch.thread_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())

        smem = cutlass.memory.SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        sA = storage.sA.get_tensor(sA_layout.outer, swizzle=sA_layout.inner)  # (tile_m, tile_k, S)
        sB = storage.sB.get_tensor(sB_layout.outer, swizzle=sB_layout.inner)  # (tile_n, tile_k, S)
        probe("sA", sA)
        probe("sB", sB)

        if warp_idx == self.producer_warp:
            cpasync.prefetch_descriptor(tma_atom_b)
        # full: B's TMA bytes + one cp.async arrive per producer thread; empty: one per MMA warp
        ab_pipe = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.mbar.data_ptr(),
            num_stages=self.stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 1 + WG_THREADS),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, self.num_mma_threads // 32),
            tx_count=self.b_bytes,
        )
        tiles = GroupedTiles.create(mCu, self.tile_m, Int32(self.n_tiles), Int32(mOut.shape[0]), self.bug)

        if warp_idx >= self.producer_warp:
            cute.arch.setmaxregister_decrease(self.producer_regs)
            self.producer(mA, tma_atom_b, mB, mRows, sA, sB, ab_pipe, tiles, tidx - self.num_mma_threads)
        else:
            cute.arch.setmaxregister_increase(self.consumer_regs)
            self.consumer(mOut, sA, sB, ab_pipe, tiled_mma, tiles, tidx)

    # ---- producer warpgroup --------------------------------------------------------------
    @cute.jit
    def producer(
        self,
        mA: cute.Tensor,
        tma_atom_b: cute.CopyAtom,
        mB: cute.Tensor,
        mRows: cute.Tensor,
        sA: cute.Tensor,
        sB: cute.Tensor,
        ab_pipe: pipeline.PipelineTmaAsync,
        tiles: GroupedTiles,
        ptid: Int32,
    ):
        is_tma_warp = cute.arch.make_warp_uniform(cute.arch.warp_idx()) == self.producer_warp
        # cp.async of A: thread ptid copies chunk (ptid % chunks_per_row) of rows
        # ptid // chunks_per_row + rows_per_pass * i
        copy_atom = cute.make_copy_atom(
            cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), self.dtype, num_bits_per_copy=128
        )
        tiled_copy_a = cute.make_tiled_copy_tv(
            copy_atom,
            cute.make_layout((self.rows_per_pass, self.chunks_per_row), stride=(self.chunks_per_row, 1)),
            cute.make_layout((1, self.chunk)),
        )
        thr_copy_a = tiled_copy_a.get_slice(ptid)
        tAsA = thr_copy_a.partition_D(sA)  # (CPY, rows_per_thread, 1, S)
        tAcA = thr_copy_a.partition_S(cute.make_identity_tensor((self.tile_m, self.tile_k)))
        probe("tAsA", tAsA)
        probe("tAcA", tAcA)
        rows_per_thread = cute.size(tAsA, mode=[1])
        a_rows = cute.size(mA, mode=[0])
        t_col = tAcA[0, 0, 0][1]  # this thread's first column inside the k slab

        state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.stages)
        tile, e, base, mt = tiles.first()
        step = tiles.step()
        e, base, mt = tiles.locate(tile, e, base, mt)
        while e < tiles.num_experts:
            m_tile, n_tile, row_start, rows = tiles.coords(tile, e, base, mt)
            if const_expr(self.bug == "tail_from_next"):
                rows = cutlass.min(Int32(self.tile_m), tiles.total_rows - row_start)
            # the A row of each of this thread's tile rows (-1: past the expert's end)
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

            gB = cute.local_tile(mB[None, None, e], (self.tile_n, self.tile_k), (n_tile, None))  # (bn, bk, k)
            tBsB, tBgB = cpasync.tma_partition(
                tma_atom_b, 0, cute.make_layout(1), cute.group_modes(sB, 0, 2), cute.group_modes(gB, 0, 2)
            )
            probe("gB", gB)
            probe("tBgB", tBgB)
            probe("tBsB", tBsB)

            for k_tile in cutlass.range(self.k_tiles, unroll=1):
                # every producer thread waits for the slot; the TMA warp also posts B's bytes
                if is_tma_warp:
                    ab_pipe.producer_acquire(state)
                    cute.copy(tma_atom_b, tBgB[None, k_tile], tBsB[None, state.index],
                              tma_bar_ptr=ab_pipe.producer_get_barrier(state))
                else:
                    ab_pipe.sync_object_empty.wait(state.index, state.phase)
                zero_filled = False
                for i in cutlass.range_constexpr(rows_per_thread):
                    dst = tAsA[None, i, 0, state.index]
                    if a_idx[i] >= 0:
                        src = cute.local_tile(
                            mA[a_idx[i], None], (self.chunk,), (k_tile * self.chunks_per_row + t_col // self.chunk,)
                        )
                        cute.copy(copy_atom, cute.make_tensor(src.iterator, dst.layout.shape), dst)
                    else:
                        dst.fill(self.dtype(0))
                        zero_filled = True
                if zero_filled:
                    cute.arch.fence_proxy("async.shared", space="cta")
                cute.arch.cp_async_mbarrier_arrive_noinc(ab_pipe.producer_get_barrier(state))
                state.advance()
            tile = tile + step
            e, base, mt = tiles.locate(tile, e, base, mt)

    # ---- consumer warpgroups ------------------------------------------------------------
    @cute.jit
    def consumer(
        self,
        mOut: cute.Tensor,
        sA: cute.Tensor,
        sB: cute.Tensor,
        ab_pipe: pipeline.PipelineTmaAsync,
        tiled_mma: cute.TiledMma,
        tiles: GroupedTiles,
        tidx: Int32,
    ):
        wg_idx = cute.arch.make_warp_uniform(tidx // WG_THREADS)
        wg_mma = tiled_mma.get_slice(cute.make_layout(self.num_consumer_wg, stride=WG_THREADS)(wg_idx))
        tCrA = tiled_mma.make_fragment_A(wg_mma.partition_A(sA))  # (MMA, MMA_M, MMA_K, S)
        tCrB = tiled_mma.make_fragment_B(wg_mma.partition_B(sB))  # (MMA, MMA_N, MMA_K, S)
        thr_mma = tiled_mma.get_slice(tidx)
        tCcC = thr_mma.partition_C(cute.make_identity_tensor((self.tile_m, self.tile_n)))
        acc = cute.make_rmem_tensor(tCcC.shape, Float32)
        probe("tCrA", tCrA)
        probe("tCrB", tCrB)
        probe("tCcC", tCcC)
        probe("acc", acc)
        k_blocks = cute.size(tCrA, mode=[2])

        read = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.stages)
        tile, e, base, mt = tiles.first()
        step = tiles.step()
        e, base, mt = tiles.locate(tile, e, base, mt)
        while e < tiles.num_experts:
            m_tile, n_tile, row_start, rows = tiles.coords(tile, e, base, mt)
            # ---- mainloop: one WGMMA group in flight; a stage is released once the group
            # after it was issued and the one reading it has completed
            mma_atom = cute.make_mma_atom(tiled_mma.op)
            ab_pipe.consumer_wait(read)
            warpgroup.fence()
            for kb in cutlass.range_constexpr(k_blocks):
                mma_atom.set(warpgroup.Field.ACCUMULATE, kb != 0)
                cute.gemm(mma_atom, acc, tCrA[None, None, kb, read.index], tCrB[None, None, kb, read.index], acc)
            warpgroup.commit_group()
            release = read.clone()
            read.advance()
            for k_tile in cutlass.range(1, self.k_tiles, unroll=1):
                ab_pipe.consumer_wait(read)
                warpgroup.fence()
                for kb in cutlass.range_constexpr(k_blocks):
                    cute.gemm(mma_atom, acc, tCrA[None, None, kb, read.index], tCrB[None, None, kb, read.index], acc)
                warpgroup.commit_group()
                warpgroup.wait_group(1)
                ab_pipe.consumer_release(release)
                release.advance()
                read.advance()
            warpgroup.wait_group(0)
            ab_pipe.consumer_release(release)

            self.epilogue(acc, tCcC, mOut, n_tile, row_start, rows, tiles)
            tile = tile + step
            e, base, mt = tiles.locate(tile, e, base, mt)

    # ---- epilogue -----------------------------------------------------------------------
    @cute.jit
    def epilogue(
        self,
        acc: cute.Tensor,
        tCcC: cute.Tensor,
        mOut: cute.Tensor,
        n_tile: Int32,
        row_start: Int32,
        rows: Int32,
        tiles: GroupedTiles,
    ):
        """Registers -> global, predicated on (tile row < rows, column < N)."""
        if const_expr(self.bug == "tail_from_next"):
            rows = cutlass.min(Int32(self.tile_m), tiles.total_rows - row_start)
        if const_expr(self.bug == "tail_unwritten"):
            if rows < self.tile_m:
                rows = Int32(0)
        col0 = n_tile * self.tile_n
        if const_expr(self.activation in ("swiglu", "gptoss")):
            pairs = cute.size(acc) // 2
            rY = cute.make_rmem_tensor((pairs,), Float32)
            for j in cutlass.range_constexpr(pairs):
                g, u = acc[2 * j], acc[2 * j + 1]
                if const_expr(self.bug == "gate_up_swapped"):
                    g, u = u, g
                rY[j] = self.activate(g, u)
            rYq = cute.make_rmem_tensor((pairs,), self.dtype)
            rYq.store(rY.load().to(self.dtype))
            for j in cutlass.range_constexpr(pairs):
                r, c = tCcC[2 * j]
                if r < rows and col0 + c < self.n:
                    mOut[row_start + r, (col0 + c) // 2] = rYq[j]
        else:
            rYq = cute.make_rmem_tensor(acc.shape, self.dtype)
            if const_expr(self.bug == "gate_up_swapped"):
                for j in cutlass.range_constexpr(cute.size(acc) // 2):
                    rYq[2 * j] = acc[2 * j + 1].to(self.dtype)
                    rYq[2 * j + 1] = acc[2 * j].to(self.dtype)
            else:
                rYq.store(acc.load().to(self.dtype))
            for j in cutlass.range_constexpr(cute.size(acc)):
                r, c = tCcC[j]
                if r < rows and col0 + c < self.n:
                    mOut[row_start + r, col0 + c] = rYq[j]

    @cute.jit
    def activate(self, g: Float32, u: Float32) -> Float32:
        """One output of a (gate, up) pair."""
        y = Float32(0.0)
        if const_expr(self.activation == "swiglu"):
            y = g * sigmoid(g) * u
            if const_expr(self.bug == "silu_on_up"):
                y = g * sigmoid(g) * (u * sigmoid(u))
        else:  # gptoss
            g = cute.arch.fmin(g, Float32(GPTOSS_LIMIT))
            u = cute.arch.fmax(cute.arch.fmin(u, Float32(GPTOSS_LIMIT)), Float32(-GPTOSS_LIMIT))
            y = g * sigmoid(g * GPTOSS_ALPHA) * (u + 1.0)
            if const_expr(self.bug == "silu_on_up"):
                y = g * sigmoid(g * GPTOSS_ALPHA) * (u * sigmoid(u * GPTOSS_ALPHA) + 1.0)
        return y


@cute.jit
def sigmoid(x: Float32) -> Float32:
    return cute.arch.rcp_approx(1.0 + cute.math.exp2(-x * LOG2_E, fastmath=True))
