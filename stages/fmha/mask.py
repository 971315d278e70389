"""Masks on the QK^T accumulator: KV tail (columns >= seqlen_k) and causal.

Causal alignment is torch SDPA's ``is_causal=True``: top-left, query row i sees keys
j <= i (the mask is ``ones(m, n).tril()``), also when m != n. (flash-attn aligns bottom-right
instead: row i sees j <= i + n - m. The two agree when m == n.) Every row sees key 0, so no
row is masked in every tile it visits.

Which KV tiles need a mask, for Q tiles of ``tile_m`` rows (128 or 192) and 128-column KV
tiles: with n_tiles = ceil(n / 128) the CTA visits tiles 0 .. n_max - 1, n_max = n_tiles
(non-causal) or min(n_tiles, ceil((m_block + 1) tile_m / 128)) (causal), from the last one
down. The KV tail lies in tile n_tiles - 1, visited first when visited at all. Causal: a
tile needs the diagonal mask when its last column lies past the Q tile's first row,
i.e. tiles floor(m_block tile_m / 128) .. n_max - 1: one tile for square 128 x 128 tiles,
two for 192-row Q tiles. Every other tile lies below the diagonal and inside the sequence.
Kernels visit the ``masked_visits`` masked tiles first and run the rest mask-free
(``kv_tile_range``). With 192 rows, the first visited tile can be fully masked for some
rows (their softmax then sees only -inf there: ``OnlineSoftmax.step`` handles it).
"""


import math

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr

from stages.fmha import common


@cute.jit
def kv_tile_range(
    m_block: Int32,
    seqlen_k: Int32,
    tile_m: cutlass.Constexpr[int],
    tile_n: cutlass.Constexpr[int],
    causal: cutlass.Constexpr[bool],
) -> Int32:
    """Number of KV tiles a Q tile visits (tiles 0 .. n_max - 1); see the module docstring."""
    n_max = (seqlen_k + (tile_n - 1)) // tile_n
    if const_expr(causal):
        n_max = cutlass.min(n_max, ((m_block + 1) * tile_m + (tile_n - 1)) // tile_n)
    return n_max


@cute.jit
def masked_visits(
    m_block: Int32,
    n_max: Int32,
    tile_m: cutlass.Constexpr[int],
    tile_n: cutlass.Constexpr[int],
    causal: cutlass.Constexpr[bool],
) -> Int32:
    """How many of the first visited KV tiles (n_max - 1 downwards) need ``apply_mask``:
    1 (the KV tail, or the diagonal of a square tile), up to 2 for causal 192-row Q tiles."""
    n = Int32(1)
    if const_expr(causal and tile_m != tile_n):
        n = cutlass.max(n_max - (m_block * tile_m) // tile_n, 1)
    return n


@cute.jit
def apply_mask(
    acc_S: cute.Tensor,
    tScS: cute.Tensor,
    t0ScS: cute.Tensor,
    row_offset: Int32,
    col_offset: Int32,
    seqlen_k: Int32,
    causal: cutlass.Constexpr[bool],
    fill: cutlass.Constexpr[float] = -math.inf,
):
    """Set acc_S elements to ``fill`` where the key is out of range or in the future.

    ``tScS``: the identity (row, col) tensor of the tile partitioned like acc_S (thr_mma.
    partition_C); ``t0ScS`` the same for thread 0, whose coordinates are compile-time
    constants. Global row = row_offset + local row, global col = col_offset + local col.
    Masked: col >= seqlen_k, or (causal) col > row. ``fill`` is -inf for softmax, 0 for
    the identity variant (a masked logit must contribute nothing to O).

    A thread's columns are thread 0's plus one shift, so each element is compared as a
    constant against a per-row limit: no column index is held in a register (at 160
    registers a tile's worth of them spilled).
    """
    s_mn = common.acc_row_view(acc_S)
    c_mn = common.acc_row_view(tScS)
    c0_mn = common.acc_row_view(t0ScS)
    col_shift = c_mn[0, 0][1] - c0_mn[0, 0][1]
    for r in cutlass.range_constexpr(cute.size(s_mn, mode=[0])):
        # columns [0, limit) of this tile are visible to this row, in thread 0's numbering
        limit = seqlen_k - col_offset - col_shift
        if const_expr(causal):
            limit = cutlass.min(limit, row_offset + c_mn[r, 0][0] + 1 - col_offset - col_shift)
        for c in cutlass.range_constexpr(cute.size(s_mn, mode=[1])):
            # a select, not an ``if`` around the store: a conditional store into the
            # register tensor became a chain of selects over the whole row (933 FSEL in
            # the d=64 tile's first softmax, about 2.5 us of every work tile on an H200)
            s_mn[r, c] = Float32(fill) if c0_mn[r, c][1] >= limit else s_mn[r, c]
