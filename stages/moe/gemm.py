"""The MoE GEMM kernel: D = epilogue(X · W) on Hopper (sm_90a), TMA + WGMMA, warp-specialized.

Shapes: X (M, K) row-major (K contiguous: WGMMA's K-major A); W (K, N) row-major (N
contiguous: the B operand is MN-major, which WGMMA reads from shared memory for 16-bit
types); fp32 accumulators; the output D is written in X's dtype by the epilogue hook.
For the MoE up-projection K = H, N = 2I with W1's gate/up columns interleaved
(stages/moe/layout.py); stage A stores D (M, 2I), stage B applies SwiGLU and stores (M, I).

Design
------
* Work tiles: the (tile_m x tile_n) output tiles, numbered in bands of ``group_m`` (8) m
  tiles, m fastest inside a band (``tile_coords``): the CTAs in flight share a few X row
  blocks and W column blocks, so both are read from DRAM about once. ``persistent`` (default):
  min(tiles, SMs) CTAs, CTA c walks tiles c, c + grid, ...; the producer runs ahead into
  the next tile while the consumers store this one (the ring's state carries across
  tiles), so the pipeline never drains between tiles. Off: one CTA per tile (the same loop,
  run once). M, N and K are runtime values (one compile per dtype and tile config).
* Warp specialization (``1 + tile_m / 64`` warpgroups): WG0 is the producer (setmaxnreg
  down to ``producer_regs``; its warp 0 issues every TMA load), WG1.. are consumers of 64
  rows each (setmaxnreg up to ``consumer_regs``). 128 x 256 tiles: 2 consumer WGs x 128
  fp32 accumulators per thread; registers 128 x 40 + 256 x 232 = 64512 <= 65536.
* Shared memory: a ``stages``-deep ring of (A tile (tile_m, tile_k), B tile (tile_n,
  tile_k)) pairs, 128B-swizzled (A K-major; B MN-major, the atom along N), one
  PipelineTmaAsync (full + empty mbarrier per stage). 128 x 256 x 64, 4 stages: 4 x 48 KiB.
* Producer: for k in 0 .. ceil(K / tile_k) - 1: acquire the stage (wait "empty"), expect
  the A + B box bytes on "full", TMA A box (m_block, k) and B box (n_block, k). Boxes that
  run past M, N or K are zero-filled by TMA (the mbarrier still counts the full box), so
  tails need no masking in the mainloop.
* Consumer mainloop (each consumer WG on its 64 rows, the whole B tile): wait "full",
  tile_k / 16 WGMMAs into the accumulator, commit; ``wait_group(1)`` then releases the
  stage of the *previous* k tile, so one k tile of MMAs is always in flight while the next
  stage is waited for (CUTLASS's sm90 mainloop); after the loop ``wait_group(0)``.
* ``cluster_m = 2`` (experimental, off by default): clusters of two CTAs on vertically
  adjacent output tiles (same n tile); each CTA loads half of every W box (k rows
  [32 r, 32 r + 32) of each 64-column atom, r its cluster rank) and multicasts it to both,
  so W's L2 -> SM traffic halves (the 128 x 256 tile's 85 FLOP/B becomes 128). A stage's
  "full" barrier still expects the whole A + B box; its "empty" barrier counts the consumer
  warps of both CTAs (lane r of each consumer warp arrives on rank r's barrier), so a stage
  is refilled only when both CTAs are done with it. A work tile is then a cluster's pair of
  tiles; an odd last m tile's partner computes on zero rows and stores nothing.
* Epilogue: the hook ``epilogue(acc, tCcAcc, mD, m_base, n_base, m_limit, n_limit)`` (see
  its docstring), registers -> global directly: no shared-memory round trip and no TMA
  store, so a row limit that is not a tile boundary (stage C's per-expert segments of one
  sorted D) is a plain predicate. Each thread owns pairs of adjacent columns (the WGMMA
  accumulator layout, ``tCcAcc`` says which); the identity epilogue writes a pair as one
  32-bit store (a quad writes 16 contiguous bytes of a row), rows >= m_limit and columns
  >= n_limit are not written.
  ``epilogue="smem"`` (variant): the same values go through a shared-memory output tile
  instead (``epilogue_smem``: XOR-swizzled 16-byte chunks, one named barrier per consumer
  WG, then 16-byte vector stores predicated per row and chunk); ``auto_stages`` gives the
  ring depth that fits beside it.

The accumulator partition (probe ``tCrAcc``, ``accumulator_pairs`` proves it at trace
time): ((2, 2, tile_n / 8), 1, 1) per thread of a consumer WG: mode 0.0 = two adjacent
columns (2j, 2j + 1) -- gate_j and up_j of the interleaved W1 --, mode 0.1 = rows r and
r + 8, mode 0.2 = 8-column blocks. Thread t of WG w holds rows 64 w + 16 (t / 32) + (t % 32) / 4
+ {0, 8} and columns 8 b + 2 (t % 4) + {0, 1}, b = 0 .. tile_n / 8 - 1.

Subclassing (stage C's grouped kernel): override ``epilogue`` for another store,
``tile_coords`` (tile index -> coordinates) and ``kernel`` / ``__call__`` for another work
decomposition; the per-tile pieces are shared: ``_host_setup`` (TMA atoms, tiled MMA,
smem layouts, shared storage), ``_prologue`` (pipeline, smem tensors), ``load_tile``
(producer: one tile's k loop), ``mma_fragments`` and ``mma_tile`` (consumer: one tile's
mainloop, pipeline state in and out).
"""

from typing import Type

import cutlass
import cutlass.cute as cute
import cutlass.memory
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32, const_expr
from cutlass.cute.nvgpu import OperandMajorMode, cpasync, warpgroup
from cutlass.tensor_utils import LayoutEnum

from stages.moe import activation as act
from stages.moe.trace import no_stamp
from workbench.compile.probe import probe

#: threads in one warpgroup
WG_THREADS = 128
#: registers per thread (producer, consumer) by consumer WG count (64K registers per SM)
REGISTERS = {1: (40, 240), 2: (40, 232)}
#: epilogues the kernel knows: identity stores D, the others SwiGLU-like (N / 2 columns)
ACTIVATIONS = ("identity", "swiglu", "gptoss")
#: how the epilogue reaches global memory: direct (registers -> global, 2- or 4-byte stores)
#: or smem (registers -> a swizzled smem tile -> 16-byte vector stores); see ``epilogue``
EPILOGUES = ("direct", "smem")
#: the ring depth ``auto`` gives with the direct epilogue, by (tile_m, tile_n) (tile_k 64,
#: 16-bit): the most that fits in 227 KiB (measured choices; (64, 128) is capped at 7)
AUTO_STAGES = {(128, 256): 4, (128, 128): 6, (64, 256): 5, (64, 128): 7}
#: dynamic shared memory per CTA on sm_90 (227 KiB) less 1 KiB for the mbarriers and the
#: 1024-byte alignment of the A ring
SMEM_BUDGET = 227 * 1024 - 1024


def epilogue_smem_bytes(tile_m: int, tile_n: int, identity: bool, elem_bytes: int = 2) -> int:
    """Bytes of the smem epilogue's output tile: tile_m rows of the tile's output columns
    (tile_n for identity, tile_n / 2 after a SwiGLU-like activation); swizzled, no padding."""
    return tile_m * (tile_n if identity else tile_n // 2) * elem_bytes


def auto_stages(tile_m: int, tile_n: int, epilogue: str = "direct", identity: bool = True, tile_k: int = 64,
                elem_bytes: int = 2) -> int:
    """The ring depth of ``stages=auto``: AUTO_STAGES for the direct epilogue; with the smem
    epilogue, at most that, and as many as fit beside the output tile (128 x 256: SwiGLU 4
    stages + 32 KiB, identity 3 stages + 64 KiB)."""
    direct = AUTO_STAGES[tile_m, tile_n]
    if epilogue == "direct":
        return direct
    stage_bytes = (tile_m + tile_n) * tile_k * elem_bytes
    fit = (SMEM_BUDGET - epilogue_smem_bytes(tile_m, tile_n, identity, elem_bytes)) // stage_bytes
    return max(2, min(direct, fit))


def n_major_view(w: cute.Tensor) -> cute.Tensor:
    """(K, N) row-major W -> (N, K) view with N contiguous: CuTe's B operand of an MN-major
    GEMM (no data movement)."""
    return cute.make_tensor(w.iterator, cute.select(w.layout, mode=[1, 0]))


def epilogue_chunk(r, c, chunks: int):
    """Position (in 16-byte chunks) of chunk ``c`` of tile row ``r`` in the smem epilogue's
    output tile of ``chunks`` chunks a row: row-major, the chunk XOR-swizzled with r % S,
    S = min(8, chunks) (a power of two, so the result stays in the row). Plain arithmetic:
    runs on Python ints (tests: bank-conflict model) and on DSL integers (the kernel)."""
    return r * chunks + (c ^ (r % min(8, chunks)))


def banded_tile(tile, m_tiles, n_tiles, group_m: int):
    """(m_tile, n_tile) of work tile ``tile`` in the banded order of ``tile_coords``: bands
    of ``group_m`` m tiles, m fastest inside a band, then n. Plain arithmetic: runs on
    Python ints (tests) and on DSL integers (the kernel)."""
    band = tile // (group_m * n_tiles)
    first_m = band * group_m
    rows = cutlass.min(m_tiles - first_m, group_m)  # the last band may be short
    within = tile - band * (group_m * n_tiles)
    return first_m + within % rows, within // rows


class MoeGemmSm90:
    """D = epilogue(X · W) by output tiles (see the module docstring).

    Constructor arguments are the static configuration (the compile cache key):
    ``dtype`` (BFloat16 | Float16), the CTA tile ``tile_m`` (64 or 128: 1 or 2 consumer WGs),
    ``tile_n`` (64, 128, 192 or 256), ``tile_k`` (64 = one 128-byte swizzle row of 16-bit),
    ``stages`` (smem ring depth), ``activation`` (identity | swiglu | gptoss),
    ``persistent`` (one CTA per SM walking the tiles, or one CTA per tile), ``cluster_m``
    (2: clusters of two CTAs on vertically adjacent tiles share each W tile by TMA multicast)
    and ``group_m`` (the tile order: bands of group_m m tiles, see ``tile_coords``).
    """

    #: arrivals on a stage's "full" barrier besides the TMA bytes: the TMA warp's one arrive
    #: (stage C's gathered-A producer adds one cp.async arrive per producer thread)
    producer_arrivals = 1

    def __init__(
        self,
        dtype: Type[cutlass.Numeric],
        *,
        tile_m: int = 128,
        tile_n: int = 256,
        tile_k: int = 64,
        stages: int = 4,
        activation: str = "identity",
        persistent: bool = True,
        cluster_m: int = 1,
        group_m: int = 8,
        epilogue: str = "direct",
    ):
        assert tile_m in (64, 128), tile_m
        assert tile_n in (64, 128, 192, 256), tile_n  # whole 64-column swizzle atoms of B
        assert tile_k % 16 == 0 and tile_k * dtype.width <= 1024 * 8, tile_k
        assert stages >= 2, stages
        assert activation in ACTIVATIONS, activation
        assert cluster_m in (1, 2), cluster_m
        assert group_m >= 1, group_m
        assert epilogue in EPILOGUES, epilogue
        self.dtype = dtype
        self.acc_dtype = Float32
        self.tile_m, self.tile_n, self.tile_k = tile_m, tile_n, tile_k
        self.stages = stages
        self.activation = activation
        self.persistent = persistent
        self.cluster_m = cluster_m
        self.group_m = group_m
        self.epilogue_kind = epilogue
        # smem epilogue: each consumer WG's 64 output rows as 16-byte chunks (8 elements); the
        # 128 threads of a WG copy whole chunks, so a row's chunk count must divide 128
        self.out_tile_n = tile_n if activation == "identity" else tile_n // 2
        self.out_chunks = self.out_tile_n * dtype.width // 128
        if epilogue == "smem":
            assert WG_THREADS % self.out_chunks == 0, f"epilogue=smem needs tile_n in 64, 128, 256 (got {tile_n})"
        self.chunk_elems = 128 // dtype.width
        self.num_consumer_wg = tile_m // 64
        self.num_threads = WG_THREADS * (1 + self.num_consumer_wg)
        self.producer_regs, self.consumer_regs = REGISTERS[self.num_consumer_wg]

    # ---- output geometry --------------------------------------------------------------
    @staticmethod
    def out_cols(n: int, activation: str) -> int:
        """Columns of D for a GEMM of N columns."""
        return n if activation == "identity" else n // 2

    # ---- host-side construction (inside @cute.jit) --------------------------------------
    def make_tiled_mma(self) -> cute.TiledMma:
        """WGMMA 64 x tile_n x 16: A K-major, B MN-major, fp32 accumulator; one atom per
        consumer WG along M."""
        return sm90_utils.make_trivial_tiled_mma(
            self.dtype,
            self.dtype,
            OperandMajorMode.K,
            OperandMajorMode.MN,
            self.acc_dtype,
            atom_layout_mnk=(self.num_consumer_wg, 1, 1),
            tiler_mn=(64, self.tile_n),
        )

    def make_smem_layouts(self):
        """(sA, sB) staged layouts: A (tile_m, tile_k, stages) K-major, B (tile_n, tile_k,
        stages) MN-major, both with the widest swizzle their contiguous extent allows."""
        a_atom = warpgroup.make_smem_layout_atom(
            sm90_utils.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, self.dtype, self.tile_k), self.dtype
        )
        sA = cute.tile_to_shape(a_atom, (self.tile_m, self.tile_k, self.stages), order=(0, 1, 2))
        b_atom = warpgroup.make_smem_layout_atom(
            sm90_utils.get_smem_layout_atom(LayoutEnum.COL_MAJOR, self.dtype, self.tile_n), self.dtype
        )
        sB = cute.tile_to_shape(b_atom, (self.tile_n, self.tile_k, self.stages), order=(1, 0, 2))
        return sA, sB

    def make_shared_storage(self, sA_layout, sB_layout):
        stages = self.stages

        @cute.struct
        class SharedStorage:
            mbar: cute.struct.MemRange[cutlass.Int64, 2 * stages]
            sA: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sA_layout)], 1024]
            sB: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sB_layout)], 1024]

        if const_expr(self.epilogue_kind == "direct"):
            return SharedStorage
        epi_elems = self.tile_m * self.out_tile_n

        @cute.struct
        class SharedStorageEpi:
            mbar: cute.struct.MemRange[cutlass.Int64, 2 * stages]
            sA: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sA_layout)], 1024]
            sB: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sB_layout)], 1024]
            sD: cute.struct.Align[cute.struct.MemRange[self.dtype, epi_elems], 128]

        return SharedStorageEpi

    def _host_setup(self, mA: cute.Tensor, mB: cute.Tensor):
        """TMA loads of A (M, K) and B (N, K) boxes, the tiled MMA, the smem layouts; sets
        ``tx_bytes`` (what one stage's two boxes deliver) and ``shared_storage``."""
        tiled_mma = self.make_tiled_mma()
        sA_layout, sB_layout = self.make_smem_layouts()
        sA_one = cute.select(sA_layout, mode=[0, 1])
        sB_one = cute.select(sB_layout, mode=[0, 1])
        tma_atom_a, tma_a = cpasync.make_tiled_tma_atom(
            cpasync.CopyBulkTensorTileG2SOp(), mA, sA_one, (self.tile_m, self.tile_k)
        )
        if const_expr(self.cluster_m == 1):
            tma_atom_b, tma_b = cpasync.make_tiled_tma_atom(
                cpasync.CopyBulkTensorTileG2SOp(), mB, sB_one, (self.tile_n, self.tile_k)
            )
        else:  # each CTA of the cluster loads 1/cluster_m of the W tile into every CTA's smem
            tma_atom_b, tma_b = cpasync.make_tiled_tma_atom(
                cpasync.CopyBulkTensorTileG2SMulticastOp(), mB, sB_one, (self.tile_n, self.tile_k),
                num_multicast=self.cluster_m,
            )
        # full boxes, also where part of a box is out of bounds (zero-filled)
        self.tx_bytes = cute.size_in_bytes(self.dtype, sA_one) + cute.size_in_bytes(self.dtype, sB_one)
        self.shared_storage = self.make_shared_storage(sA_layout, sB_layout)
        return (tma_atom_a, tma_a, tma_atom_b, tma_b), tiled_mma, (sA_layout, sB_layout)

    # ---- host ----------------------------------------------------------------------------
    @cute.jit
    def __call__(self, mX: cute.Tensor, mW: cute.Tensor, mD: cute.Tensor, max_ctas: Int32, stream):
        """mX (M, K), mW (K, N), mD (M, out_cols(N)); all row-major, row strides multiples
        of 8 elements (host.check_gemm_operands). ``max_ctas``: the grid of a persistent
        kernel (the SM count); a non-persistent one launches a CTA per output tile."""
        assert mX.element_type == self.dtype and mW.element_type == self.dtype
        assert mD.element_type == self.dtype
        mX, mW, mD = (self.assume_aligned_rows(t) for t in (mX, mW, mD))
        tmas, tiled_mma, layouts = self._host_setup(mX, n_major_view(mW))
        # work tiles of a cluster: cluster_m vertically adjacent output tiles
        tiles = cute.ceil_div(cute.size(mW, mode=[1]), self.tile_n) * cute.ceil_div(
            cute.size(mX, mode=[0]), self.tile_m * self.cluster_m
        )
        clusters = tiles
        if const_expr(self.persistent):
            clusters = cutlass.min(tiles, max_ctas // self.cluster_m)
        grid = (clusters * self.cluster_m, 1, 1)
        if const_expr(self.cluster_m == 1):
            self.kernel(*tmas, mD, tiled_mma, *layouts).launch(
                grid=grid, block=[self.num_threads, 1, 1], stream=stream, min_blocks_per_mp=1
            )
        else:
            self.kernel(*tmas, mD, tiled_mma, *layouts).launch(
                grid=grid, block=[self.num_threads, 1, 1], cluster=(self.cluster_m, 1, 1), stream=stream,
                min_blocks_per_mp=1,
            )

    @staticmethod
    def assume_aligned_rows(t: cute.Tensor) -> cute.Tensor:
        """``t`` with its row stride declared a multiple of 8 elements (the launch checks it):
        TMA needs 16-byte strides, and D's column pair at an even column is then 4-byte
        aligned and stores as one 32-bit word."""
        return cute.make_tensor(
            t.iterator, cute.make_layout(t.shape, stride=(cute.assume(t.stride[0], divby=8), t.stride[1]))
        )

    # ---- device --------------------------------------------------------------------------
    @cute.kernel
    def kernel(
        self,
        tma_atom_a: cute.CopyAtom,
        mA: cute.Tensor,
        tma_atom_b: cute.CopyAtom,
        mB: cute.Tensor,
        mD: cute.Tensor,
        tiled_mma: cute.TiledMma,
        sA_layout: cute.ComposedLayout,
        sB_layout: cute.ComposedLayout,
    ):
        tidx, _, _ = cute.arch.thread_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg_idx = cute.arch.make_warp_uniform(tidx // WG_THREADS)
        pipe, sA, sB = self._prologue(warp_idx, (tma_atom_a, tma_atom_b), sA_layout, sB_layout)

        m_size, n_size = cute.size(mA, mode=[0]), cute.size(mB, mode=[0])
        n_tiles = cute.ceil_div(n_size, self.tile_n)
        m_tiles = cute.ceil_div(m_size, self.tile_m * self.cluster_m)  # a cluster's m tiles
        tiles = m_tiles * n_tiles
        k_tiles = cute.ceil_div(cute.size(mA, mode=[1]), self.tile_k)
        gA = cute.local_tile(mA, (self.tile_m, self.tile_k), (None, None))  # (tile_m, tile_k, m tiles, k tiles)
        gB = cute.local_tile(mB, (self.tile_n, self.tile_k), (None, None))  # (tile_n, tile_k, n tiles, k tiles)
        probe("gA", gA)
        probe("gB", gB)
        bidx, _, _ = cute.arch.block_idx()
        gdim, _, _ = cute.arch.grid_dim()
        first, step = bidx // self.cluster_m, gdim // self.cluster_m  # the cluster's, in cluster tiles
        rank = bidx % self.cluster_m  # this CTA's place in its (cluster_m, 1) cluster

        if wg_idx == 0:
            cute.arch.setmaxregister_decrease(self.producer_regs)
            if warp_idx == 0:
                tAsA, tAgA = cpasync.tma_partition(
                    tma_atom_a, 0, cute.make_layout(1), cute.group_modes(sA, 0, 2), cute.group_modes(gA, 0, 2)
                )  # (TMA, stages), (TMA, m tiles, k tiles)
                # cluster_m > 1: this CTA's 1/cluster_m slice of the W box, multicast to the cluster
                tBsB, tBgB = cpasync.tma_partition(
                    tma_atom_b, rank, cute.make_layout(self.cluster_m),
                    cute.group_modes(sB, 0, 2), cute.group_modes(gB, 0, 2),
                )  # (TMA, stages), (TMA, n tiles, k tiles)
                mcast_b = None
                if const_expr(self.cluster_m > 1):
                    mcast_b = cute.make_layout_image_mask(self.cluster_layout(), (rank, 0, 0), mode=0)
                probe("tAgA", tAgA)
                probe("tAsA", tAsA)
                probe("tBgB", tBgB)
                probe("tBsB", tBsB)
                state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.stages)
                for tile in cutlass.range(first, tiles, step, unroll=1):
                    m_block, n_block = self.tile_coords(tile, m_tiles, n_tiles, rank)
                    state = self.load_tile(
                        tma_atom_a, tma_atom_b, tAgA[None, m_block, None], tBgB[None, n_block, None],
                        tAsA, tBsB, pipe, state, k_tiles, mcast_b,
                    )
                pipe.producer_tail(state)
        else:
            cute.arch.setmaxregister_increase(self.consumer_regs)
            tCrA, tCrB, acc, tCcAcc = self.mma_fragments(tiled_mma, sA, sB, tidx - WG_THREADS, wg_idx - 1)
            state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.stages)
            for tile in cutlass.range(first, tiles, step, unroll=1):
                m_block, n_block = self.tile_coords(tile, m_tiles, n_tiles, rank)
                state = self.mma_tile(tiled_mma, tCrA, tCrB, acc, pipe, state, k_tiles)
                self.epilogue(acc, tCcAcc, mD, m_block * self.tile_m, n_block * self.tile_n, m_size, n_size)

    @cute.jit
    def tile_coords(self, tile: Int32, m_tiles: Int32, n_tiles: Int32, rank: Int32 = 0):
        """(m_block, n_block) of this CTA in work tile ``tile`` (a cluster's: cluster_m
        vertically adjacent output tiles, ``rank`` picks this CTA's; m_tiles counts them).

        Tiles are numbered in bands of ``group_m`` m tiles: inside a band the m tile is the
        fastest index, then n; band after band. The CTAs in flight then cover about
        group_m m tiles x (CTAs / group_m) n tiles, so each W tile read from DRAM serves
        group_m m tiles from L2 (with the m tile slowest, every row of tiles would stream
        all of W: a large-N W, e.g. Mixtral's 4096 x 28672, would be read m_tiles times).
        group_m = 1 is the plain row-by-row order (n fastest)."""
        m_tile, n_tile = banded_tile(tile, m_tiles, n_tiles, self.group_m)
        return m_tile * self.cluster_m + rank, n_tile

    def cluster_layout(self) -> cute.Layout:
        """The (cluster_m, 1, 1) layout of a cluster's CTAs (M, N, K)."""
        return cute.make_layout((self.cluster_m, 1, 1))

    @cute.jit
    def _prologue(self, warp_idx: Int32, tma_atoms: tuple, sA_layout, sB_layout):
        """Descriptor prefetch, shared storage, the A/B pipeline (mbarrier inits fenced and
        visible CTA-wide before any wait or arrive), the smem tensors. Returns (pipe, sA, sB)."""
        if warp_idx == 0:
            for atom in tma_atoms:
                cpasync.prefetch_descriptor(atom)
        storage = cutlass.memory.SmemAllocator().allocate(self.shared_storage)
        # the empty barrier counts one arrive per consumer warp of every CTA that writes this
        # CTA's stage (lane r of each consumer warp signals cluster rank r)
        cluster = self.cluster_layout()
        pipe = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.mbar.data_ptr(),
            num_stages=self.stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, self.producer_arrivals),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 4 * self.num_consumer_wg * self.cluster_m),
            tx_count=self.tx_bytes,
            cta_layout_vmnk=cute.make_layout((1, *cluster.shape)),
            defer_sync=True,
        )
        # cluster_m > 1: the peer's barriers are initialised before any multicast or remote arrive
        pipeline.pipeline_init_arrive(cluster_shape_mn=cluster, is_relaxed=True)
        sA = storage.sA.get_tensor(sA_layout.outer, swizzle=sA_layout.inner)  # (tile_m, tile_k, stages)
        sB = storage.sB.get_tensor(sB_layout.outer, swizzle=sB_layout.inner)  # (tile_n, tile_k, stages)
        if const_expr(self.epilogue_kind == "smem"):
            # (8 elements = one 16-byte chunk, chunks of the tile): chunk c of tile row r is
            # at column c' = c ^ (r % 8) of its row (``epilogue_smem``)
            self.sD = storage.sD.get_tensor(
                cute.make_layout((self.chunk_elems, self.tile_m * self.out_chunks), stride=(1, self.chunk_elems))
            )
            probe("sD", self.sD)
        pipeline.pipeline_init_wait(cluster_shape_mn=cluster)
        return pipe, sA, sB

    @cute.jit
    def load_tile(
        self,
        tma_atom_a: cute.CopyAtom,
        tma_atom_b: cute.CopyAtom,
        tAgA: cute.Tensor,
        tBgB: cute.Tensor,
        tAsA: cute.Tensor,
        tBsB: cute.Tensor,
        pipe: pipeline.PipelineAsync,
        state: pipeline.PipelineState,
        k_tiles: Int32,
        mcast_b=None,
        stamp: cutlass.Constexpr = no_stamp,
    ) -> pipeline.PipelineState:
        """Producer, one output tile (warp 0 of WG0, whole warp: the pipeline elects the lane
        that posts the byte count; a TMA copy is issued by one lane): its k tiles of A
        (tAgA: (TMA, k tiles)) and B into the ring. Returns the advanced state. ``stamp``
        (a traced kernel's, stages/moe/trace.py): event 1 once the first slot is acquired."""
        for k in cutlass.range(k_tiles, unroll=1):
            pipe.producer_acquire(state)
            stamp(1, k == 0)
            bar = pipe.producer_get_barrier(state)
            cute.copy(tma_atom_a, tAgA[None, k], tAsA[None, state.index], tma_bar_ptr=bar)
            if const_expr(mcast_b is None):
                cute.copy(tma_atom_b, tBgB[None, k], tBsB[None, state.index], tma_bar_ptr=bar)
            else:
                cute.copy(tma_atom_b, tBgB[None, k], tBsB[None, state.index], tma_bar_ptr=bar, mcast_mask=mcast_b)
            state.advance()
        return state

    def mma_fragments(self, tiled_mma: cute.TiledMma, sA: cute.Tensor, sB: cute.Tensor, tidx_c: Int32, wg: Int32):
        """A consumer thread's operands: (tCrA, tCrB, acc, tCcAcc). tCrA / tCrB are its WG's
        smem descriptors (MMA, 1, tile_k / 16, stages) -- consumer WG ``wg`` reads A rows
        [64 wg, 64 wg + 64) --; acc the fp32 accumulator; tCcAcc, same shape, the (row, col)
        of each accumulator element in the (tile_m, tile_n) tile. ``tidx_c``: the thread's
        index among the consumer threads (0 .. 2 * tile_m - 1)."""
        wg_mma = tiled_mma.get_slice(wg * WG_THREADS)
        tCrA = tiled_mma.make_fragment_A(wg_mma.partition_A(sA))
        tCrB = tiled_mma.make_fragment_B(wg_mma.partition_B(sB))
        tCcAcc = tiled_mma.get_slice(tidx_c).partition_C(cute.make_identity_tensor((self.tile_m, self.tile_n)))
        acc = cute.make_rmem_tensor(tCcAcc.shape, self.acc_dtype)
        probe("tCrA", tCrA)
        probe("tCrB", tCrB)
        probe("tCrAcc", acc)
        probe("tCcAcc", tCcAcc)
        return tCrA, tCrB, acc, tCcAcc

    @cute.jit
    def mma_tile(
        self,
        tiled_mma: cute.TiledMma,
        tCrA: cute.Tensor,
        tCrB: cute.Tensor,
        acc: cute.Tensor,
        pipe: pipeline.PipelineAsync,
        state: pipeline.PipelineState,
        k_tiles: Int32,
        stamp: cutlass.Constexpr = no_stamp,
    ) -> pipeline.PipelineState:
        """A consumer WG's mainloop for one output tile: acc = A · B over the k tiles
        (k_tiles >= 1). Returns the advanced state; every stage it read is released.
        ``stamp`` (a traced kernel's): event 1 once the first k slab has landed."""
        num_k_blocks = cute.size(tCrA, mode=[2])
        release = state.clone()
        acc.fill(0.0)
        tiled_mma.set(warpgroup.Field.ACCUMULATE, True)
        # k tile 0: issue, nothing to release yet
        pipe.consumer_wait(state)
        stamp(1)
        warpgroup.fence()
        for kb in cutlass.range_constexpr(num_k_blocks):
            cute.gemm(tiled_mma, acc, tCrA[None, None, kb, state.index], tCrB[None, None, kb, state.index], acc)
        warpgroup.commit_group()
        state.advance()
        for k in cutlass.range(1, k_tiles, unroll=1):
            pipe.consumer_wait(state)
            warpgroup.fence()
            for kb in cutlass.range_constexpr(num_k_blocks):
                cute.gemm(tiled_mma, acc, tCrA[None, None, kb, state.index], tCrB[None, None, kb, state.index], acc)
            warpgroup.commit_group()
            # the previous k tile's MMAs are done: its stage may be refilled
            warpgroup.wait_group(1)
            pipe.consumer_release(release)
            release.advance()
            state.advance()
        warpgroup.wait_group(0)
        pipe.consumer_release(release)
        return state

    @cute.jit
    def mma_mainloop(
        self,
        tiled_mma: cute.TiledMma,
        sA: cute.Tensor,
        sB: cute.Tensor,
        pipe: pipeline.PipelineAsync,
        k_tiles: Int32,
        tidx_c: Int32,
        wg: Int32,
        read=None,
    ):
        """``mma_fragments`` + ``mma_tile`` in one call (the first version's interface, kept
        for stage C): returns (acc, tCcAcc), or with ``read`` (the ring's consumer state
        where this tile starts) (acc, tCcAcc, read after the tile)."""
        tCrA, tCrB, acc, tCcAcc = self.mma_fragments(tiled_mma, sA, sB, tidx_c, wg)
        persistent = read is not None
        if const_expr(not persistent):
            read = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.stages)
        read = self.mma_tile(tiled_mma, tCrA, tCrB, acc, pipe, read, k_tiles)
        if const_expr(persistent):
            return acc, tCcAcc, read
        return acc, tCcAcc

    # ---- epilogue hook -------------------------------------------------------------------
    @cute.jit
    def epilogue(
        self,
        acc: cute.Tensor,
        tCcAcc: cute.Tensor,
        mD: cute.Tensor,
        m_base: Int32,
        n_base: Int32,
        m_limit: Int32,
        n_limit: Int32,
    ):
        """Store this thread's accumulator to D.

        acc     fp32 ((2, 2, tile_n/8), 1, 1): the thread's part of the CTA tile; flat
                elements 2j and 2j + 1 are two adjacent columns of one row.
        tCcAcc  same shape: (row, col) of each element inside the (tile_m, tile_n) tile.
        mD      the output tensor (global memory).
        m_base, n_base   the tile's first GEMM row and column: element i is D's GEMM
                         coordinate (m_base + tCcAcc[i][0], n_base + tCcAcc[i][1]).
        m_limit, n_limit rows >= m_limit and GEMM columns >= n_limit are not stored.

        identity: D[row, col] = acc (rounded to D's dtype), a column pair per 32-bit store.
        swiglu / gptoss: column pair (2j, 2j + 1) = (gate_j, up_j) of the interleaved W1;
        D[row, col / 2] = act(gate, up), computed in fp32, one 16-bit store. The values come
        from ``pair_values`` (a subclass's bug hooks change them there, for both epilogues).
        epilogue=smem: the same values and predicates through ``epilogue_smem``.
        """
        if const_expr(self.epilogue_kind == "smem"):
            self.epilogue_smem(acc, tCcAcc, mD, m_base, n_base, m_limit, n_limit)
        else:
            for j in cutlass.range_constexpr(cute.size(acc) // 2):
                coord = tCcAcc[2 * j]
                row = m_base + coord[0]
                col = n_base + coord[1]
                if row < m_limit:
                    if col < n_limit:  # n_limit is even (row strides are multiples of 8): col + 1 too
                        values = self.pair_values(acc[2 * j], acc[2 * j + 1])
                        if const_expr(len(values) == 2):
                            pair = cute.make_rmem_tensor((2,), self.dtype)
                            pair[0] = values[0].to(self.dtype)
                            pair[1] = values[1].to(self.dtype)
                            gPair = cute.local_tile(mD[row, None], (2,), (col // 2,))  # (2,):(1,)
                            cute.autovec_copy(pair, gPair)
                        else:
                            mD[row, col // 2] = values[0].to(self.dtype)

    def pair_values(self, g, u) -> list:
        """The output values (fp32) of one accumulator column pair (g, u) = (2j, 2j + 1):
        identity: both; swiglu / gptoss: act(gate, up). Subclasses change it (bug hooks)."""
        if const_expr(self.activation == "identity"):
            return [g, u]
        return [act.apply(self.activation, g, u)]

    @cute.jit
    def epilogue_smem(
        self,
        acc: cute.Tensor,
        tCcAcc: cute.Tensor,
        mD: cute.Tensor,
        m_base: Int32,
        n_base: Int32,
        m_limit: Int32,
        n_limit: Int32,
    ):
        """``epilogue`` through shared memory: each consumer WG writes its 64 rows of the
        output tile (after the activation, in D's dtype) into ``self.sD``, syncs its own 128
        threads on named barrier 1 + wg (the producer and the other WG run on), then copies
        the rows out as 16-byte chunks: thread t of the WG owns chunk t % C of rows t / C,
        t / C + 128 / C, ... (C = chunks per output row), a chunk stored only when its row is
        < m_limit and its columns < n_limit (whole chunks: D's columns are a multiple of 8).

        Layout of sD: row-major chunks, chunk c of tile row r at position c ^ (r % S)
        (S = min(8, C); ``epilogue_chunk``): an XOR swizzle, no padding. A register write instruction covers 8
        rows (r % 8 all different) at one logical chunk, so the 8 rows land in 8 different
        16-byte bank groups of a 128-byte line: conflict-free; a read covers 8 consecutive
        chunks of one row, a permutation of one line: conflict-free too."""
        tidx, _, _ = cute.arch.thread_idx()
        wg = cute.arch.make_warp_uniform(tidx // WG_THREADS) - 1  # consumer WG 0 ..
        t = tidx % WG_THREADS
        C = self.out_chunks
        ce = self.chunk_elems
        identity = self.activation == "identity"
        sD = self.sD
        # the previous tile's copy-out of this WG's rows is done before they are overwritten
        cute.arch.barrier(barrier_id=1 + wg, number_of_threads=WG_THREADS)
        for j in cutlass.range_constexpr(cute.size(acc) // 2):
            coord = tCcAcc[2 * j]
            r = coord[0]
            oc = coord[1] if const_expr(identity) else coord[1] // 2
            pos = epilogue_chunk(r, oc // ce, C)
            vals = self.pair_values(acc[2 * j], acc[2 * j + 1])
            if const_expr(identity):
                pair = cute.make_rmem_tensor((2,), self.dtype)
                pair[0] = vals[0].to(self.dtype)
                pair[1] = vals[1].to(self.dtype)
                cute.autovec_copy(pair, cute.local_tile(sD[None, pos], (2,), ((oc % ce) // 2,)))
            else:
                sD[oc % ce, pos] = vals[0].to(self.dtype)
        cute.arch.barrier(barrier_id=1 + wg, number_of_threads=WG_THREADS)
        n_base_out = n_base if const_expr(identity) else n_base // 2
        n_limit_out = n_limit if const_expr(identity) else n_limit // 2
        rows_step = WG_THREADS // C
        c = t % C
        col = n_base_out + c * ce
        for i in cutlass.range_constexpr(64 // rows_step):
            r = wg * 64 + t // C + i * rows_step
            row = m_base + r
            if row < m_limit:
                if col < n_limit_out:
                    tDsD = sD[None, epilogue_chunk(r, c, C)]  # (8,):(1,) one 16-byte chunk
                    tDgD = cute.local_tile(mD[row, None], (ce,), (col // ce,))  # (8,):(1,)
                    probe("tDsD", tDsD)
                    probe("tDgD", tDgD)
                    vec = cute.make_rmem_tensor((ce,), self.dtype)
                    cute.autovec_copy(tDsD, vec)
                    cute.autovec_copy(vec, tDgD)


def accumulator_pairs(tiled_mma: cute.TiledMma, tile_mn: tuple, num_threads: int):
    """Trace-time (plain Python inside a ``@cute.jit`` function): for each consumer thread,
    the (row, col) of every accumulator element in flat order, from the partition of an
    identity tensor. Used by tests to prove that elements 2j, 2j + 1 are columns (c, c + 1)
    of one row with c even (gate, up of the interleaved W1)."""
    cS = cute.make_identity_tensor(tile_mn)
    out = {}
    for t in range(num_threads):
        part = tiled_mma.get_slice(t).partition_C(cS)
        out[t] = [tuple(part[i]) for i in range(cute.size(part))]
    return out
