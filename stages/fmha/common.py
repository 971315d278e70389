"""Shared device helpers for the FMHA stages (Hopper, sm_90a, CuTe DSL 4.8.1).

Every stage uses these. Everything here is traced: either host-side layout/atom
construction (call it inside a ``@cute.jit`` host function) or a small ``@cute.jit``
device helper (call it from a ``@cute.kernel``). Compile and launch glue is in ``host``.

Conventions (CuTe naming): ``m`` = global tensor, ``g`` = a CTA's tile of it, ``s`` = shared
memory, ``r`` = registers, ``c`` = coordinate (identity) tensor. ``tXsY`` is tensor Y's shared
copy partitioned for operation X (Q = TMA load of Q, K = TMA load of K, S = the QK^T MMA).

The QK^T MMA used here: ``make_qk_tiled_mma`` tiles the warpgroup MMA atom (64 x tile_n x 16,
A = Q and B = K both K-major in shared memory, fp32 accumulator) ``num_wg`` times along M,
so each warpgroup owns 64 consecutive rows of the 128-row tile. In the accumulator fragment
of one thread, laid out ``((2, 2, tile_n/8), MMA_M, MMA_N)``, mode 0.0 walks 2 adjacent
columns, mode 0.1 two rows 8 apart, mode 0.2 column blocks of 8; one row of the tile is
held by the 4 lanes of a quad (lanes 4i..4i+3 of a warp). ``acc_row_view`` reshapes the
fragment to (rows, cols) of this thread and ``quad_allreduce`` reduces across the quad.
``tests/test_stage_ab.py`` checks this ownership claim against the tiled MMA's layout.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, Optional, Type

import cutlass
import cutlass.cute as cute
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, const_expr
from cutlass.cute.nvgpu import cpasync, warpgroup
from cutlass.tensor_utils import LayoutEnum

from workbench.kernels import cute_host

LOG2_E = math.log2(math.e)

#: threads in one warpgroup
WG_THREADS = 128


# --------------------------------------------------------------------------------------
# dtype names used by wb (TensorSpec.dtype) -> CuTe numeric types
# --------------------------------------------------------------------------------------
cute_dtype = cute_host.cute_dtype  # 'bf16' | 'fp16' | 'fp32' -> the cutlass numeric type


# --------------------------------------------------------------------------------------
# Host-side construction (call inside @cute.jit)
# --------------------------------------------------------------------------------------
def make_qk_tiled_mma(dtype: Type[cutlass.Numeric], tile_n: int, num_wg: int) -> cute.TiledMma:
    """WGMMA for S = Q K^T: A = Q (K-major smem), B = K (K-major smem), fp32 accumulator.

    The atom is 64 x tile_n x 16; it is repeated ``num_wg`` times along M, so the tiled MMA
    covers (64 * num_wg) x tile_n with 128 * num_wg threads.
    """
    return sm90_utils.make_trivial_tiled_mma(
        dtype,
        dtype,
        cute.nvgpu.OperandMajorMode.K,
        cute.nvgpu.OperandMajorMode.K,
        Float32,
        atom_layout_mnk=(num_wg, 1, 1),
        tiler_mn=(64, tile_n),
    )


def make_kmajor_smem_layout(
    dtype: Type[cutlass.Numeric], rows: int, d: int, stages: Optional[int] = None
):
    """Swizzled shared-memory layout for a (rows, d) tile whose d is contiguous (K-major
    operand of WGMMA), optionally with a trailing stage mode: (rows, d[, stages]).

    The swizzle atom is the widest that d allows (128B swizzle for d*16bit >= 1024 bits,
    i.e. d = 64 and 128 both get SW128). The result is a ComposedLayout (swizzle o layout).
    """
    atom = warpgroup.make_smem_layout_atom(
        sm90_utils.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, dtype, d), dtype
    )
    if stages is None:
        return cute.tile_to_shape(atom, (rows, d), order=(0, 1))
    return cute.tile_to_shape(atom, (rows, d, stages), order=(0, 1, 2))


def make_tma_load(gmem: cute.Tensor, smem_layout, tile: tuple, multicast: int = 1):
    """TMA load atom for ``tile``-sized boxes of ``gmem`` into one stage of ``smem_layout``
    (``multicast`` > 1: each of that many CTAs of a cluster loads a slice of the box into
    all of them, ``tma_partition_tile``'s ``cta``). Returns (atom, tma_tensor); index the tma
    tensor like ``gmem``."""
    if const_expr(cute.rank(smem_layout) == 3):
        smem_layout = cute.select(smem_layout, mode=[0, 1])
    if const_expr(multicast > 1):
        return cpasync.make_tiled_tma_atom(
            cpasync.CopyBulkTensorTileG2SMulticastOp(), gmem, smem_layout, tile, num_multicast=multicast
        )
    return cpasync.make_tiled_tma_atom(
        cpasync.CopyBulkTensorTileG2SOp(), gmem, smem_layout, tile
    )


def make_stmatrix_store(dtype: Type[cutlass.Numeric], tiled_mma: cute.TiledMma) -> cute.TiledCopy:
    """stmatrix (8x8 16-bit matrices, four per instruction) laid out as ``tiled_mma``'s
    accumulator: stores a converted accumulator (O, or P in S's layout) into shared memory by
    coordinate, so the smem tile's own (swizzled) layout decides where each element lands."""
    atom = cute.make_copy_atom(cute.nvgpu.warp.StMatrix8x8x16bOp(transpose=False, num_matrices=4), dtype)
    return cute.make_tiled_copy_C(atom, tiled_mma)


def tma_tile_bytes(dtype: Type[cutlass.Numeric], smem_layout) -> int:
    """Bytes one TMA load of one stage of ``smem_layout`` delivers (the mbarrier tx count)."""
    if const_expr(cute.rank(smem_layout) == 3):
        smem_layout = cute.select(smem_layout, mode=[0, 1])
    return cute.size_in_bytes(dtype, smem_layout)


# --------------------------------------------------------------------------------------
# Device helpers (call inside @cute.kernel)
# --------------------------------------------------------------------------------------
def qk_tile_operands(dtype: Type[cutlass.Numeric], mQ, mK, tile_m: int, tile_n: int, d: int, k_stages: Optional[int] = None):
    """Stages A and B (a CTA of ``tile_m // 64`` warpgroups): the QK^T tiled MMA, the k-major
    smem layouts of the Q tile and of the K tile (``k_stages`` of them) and the TMA loads of
    both. Returns (tiled_mma, sQ_layout, sK_layout, (tma_atom_q, tma_q), (tma_atom_k, tma_k))."""
    tiled_mma = make_qk_tiled_mma(dtype, tile_n, tile_m // 64)
    sQ_layout = make_kmajor_smem_layout(dtype, tile_m, d)
    sK_layout = make_kmajor_smem_layout(dtype, tile_n, d, k_stages)
    tma_q = make_tma_load(mQ, sQ_layout, (tile_m, d))
    tma_k = make_tma_load(mK, sK_layout, (tile_n, d))
    return tiled_mma, sQ_layout, sK_layout, tma_q, tma_k


def qk_fragments(tiled_mma: cute.TiledMma, sQ: cute.Tensor, sK: cute.Tensor, tidx, wg_idx, num_wg: int):
    """(thr_mma, tSrQ, tSrK): the thread's slice of the QK^T MMA (for partition_C) and warpgroup
    ``wg_idx``'s smem-descriptor fragments of Q (its 64 rows) and K (with K's stage mode)."""
    wg_mma = tiled_mma.get_slice(cute.make_layout(num_wg, stride=WG_THREADS)(wg_idx))
    tSrQ = tiled_mma.make_fragment_A(wg_mma.partition_A(sQ))
    tSrK = tiled_mma.make_fragment_B(wg_mma.partition_B(sK))
    return tiled_mma.get_slice(tidx), tSrQ, tSrK


def tma_partition_tile(tma_atom: cute.CopyAtom, sX: cute.Tensor, gX: cute.Tensor, cta=(0, 1)):
    """Partition a (rows, d[, stages]) smem tensor and a (rows, d[, tiles]) gmem tile for a
    TMA atom; ``cta`` = (this CTA's rank, CTAs) among those a multicast atom serves (its
    slice of each box). Returns (tXsX, tXgX): mode 0 is the TMA atom's data, the remaining
    mode (if any) is the stage / tile index."""
    s_res, g_res = cpasync.tma_partition(
        tma_atom,
        cta[0],
        cute.make_layout(cta[1]),
        cute.group_modes(sX, 0, 2),
        cute.group_modes(gX, 0, 2),
    )
    return s_res, g_res


@cute.jit
def wgmma_zero_init(tiled_mma: cute.TiledMma, acc: cute.Tensor, tSrA: cute.Tensor, tSrB: cute.Tensor):
    """acc = A @ B^T over all k blocks with WGMMA (first k block overwrites acc).

    Issues fence -> gemm per k block -> commit, then waits for completion of all groups.
    A fresh MMA atom is used so that setting ACCUMULATE inside a dynamic loop is legal.
    ``tSrA``/``tSrB`` are this warpgroup's smem descriptors fragments (MMA, MMA_M|N, MMA_K).
    """
    warpgroup.fence()
    atom = cute.make_mma_atom(tiled_mma.op)
    atom.set(warpgroup.Field.ACCUMULATE, False)
    for k in cutlass.range_constexpr(cute.size(tSrA, mode=[2])):
        cute.gemm(atom, acc, tSrA[None, None, k], tSrB[None, None, k], acc)
        atom.set(warpgroup.Field.ACCUMULATE, True)
    warpgroup.commit_group()
    warpgroup.wait_group(0)


def acc_row_layout(acc_layout: cute.Layout) -> cute.Layout:
    """((2, 2, V), MMA_M, MMA_N) -> ((2, MMA_M), (2, V, MMA_N)): (rows, cols) of one thread.

    Row mode = (mode 0.1, MMA_M), col mode = (mode 0.0, mode 0.2, MMA_N). Works on any
    layout of the Hopper accumulator shape (the fragment's or a partitioned gmem/coord one).
    """
    l = cute.make_layout(acc_layout.shape)  # compact col-major over the fragment's shape
    rows = cute.make_layout(
        (l.shape[0][1], l.shape[1]), stride=(l.stride[0][1], l.stride[1])
    )
    cols = cute.make_layout(
        (l.shape[0][0], l.shape[0][2], l.shape[2]),
        stride=(l.stride[0][0], l.stride[0][2], l.stride[2]),
    )
    return cute.composition(acc_layout, cute.make_layout((rows.shape, cols.shape), stride=(rows.stride, cols.stride)))


def acc_row_view(acc: cute.Tensor) -> cute.Tensor:
    """View a Hopper accumulator (or a tensor partitioned like it) as (rows, cols) of this
    thread; see ``acc_row_layout``."""
    return cute.make_tensor(acc.iterator, acc_row_layout(acc.layout))


def accumulator_rows(tiled_mma: cute.TiledMma, tile_mn: tuple, num_threads: int, check_threads=(1, 37, 130, 255)):
    """Trace-time analysis (plain Python; call inside a ``@cute.jit`` function): which tile
    coordinates each thread's accumulator holds, in the (rows, cols) view of
    ``acc_row_view``.

    Returns ``{thread: [[(row, col) for each col] for each row]}`` for all threads. Computed
    from the partition of an identity tensor: thread t's coordinates are its partition's base
    coordinate plus the (static, thread-independent) offsets of thread 0's partition; the
    threads in ``check_threads`` are evaluated element by element to confirm that.
    """
    cS = cute.make_identity_tensor(tile_mn)
    rel = acc_row_view(tiled_mma.get_slice(0).partition_C(cS))
    n_r, n_c = cute.size(rel, mode=[0]), cute.size(rel, mode=[1])
    rel_coords = [[tuple(rel[r, c]) for c in range(n_c)] for r in range(n_r)]
    base0 = tuple(rel[0, 0])
    out = {}
    for t in range(num_threads):
        part = acc_row_view(tiled_mma.get_slice(t).partition_C(cS))
        b = tuple(part[0, 0])
        shift = (b[0] - base0[0], b[1] - base0[1])
        out[t] = [[(x + shift[0], y + shift[1]) for (x, y) in row] for row in rel_coords]
        if t in check_threads:
            full = [[tuple(part[r, c]) for c in range(n_c)] for r in range(n_r)]
            if full != out[t]:
                raise AssertionError(f"thread {t}: accumulator coordinates are not base + offsets")
    return out


@cute.jit
def quad_allreduce(x: Float32, op: Callable) -> Float32:
    """Reduce ``x`` over the 4 lanes of a quad (lane ^ 1, lane ^ 2); all 4 get the result."""
    x = op(x, cute.arch.shuffle_sync_bfly(x, offset=2))
    x = op(x, cute.arch.shuffle_sync_bfly(x, offset=1))
    return x


def fmax(a, b):
    """max of two Float32 (PTX max.f32), for ``quad_allreduce(x, fmax)``."""
    return cute.arch.fmax(a, b)


fadd = operator.add
