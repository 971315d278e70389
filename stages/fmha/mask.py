"""Masks on the QK^T accumulator: KV tail (columns >= seqlen_k) and causal.

Causal alignment is torch SDPA's ``is_causal=True``: top-left, query row i sees keys
j <= i (the mask is ``ones(m, n).tril()``), also when m != n. (flash-attn aligns bottom-right
instead: row i sees j <= i + n - m. The two agree when m == n.) Every row sees key 0, so no
row is ever fully masked.

Which KV tiles need a mask, for a 128-row Q tile ``m_block`` and 128-column KV tiles
(tile_m == tile_n is required): with n_tiles = ceil(n / 128) the CTA visits tiles
0 .. n_max - 1, n_max = n_tiles (non-causal) or min(n_tiles, m_block + 1) (causal).
Only tile n_max - 1 can hold masked columns: the KV tail is in tile n_tiles - 1 and the
diagonal in tile m_block; every earlier tile lies entirely below the diagonal and inside
the sequence. Kernels visit that tile first and mask only it (``kv_tile_range``).
"""


import math

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr

from stages.fmha import common


@cute.jit
def kv_tile_range(m_block: Int32, seqlen_k: Int32, tile_n: cutlass.Constexpr[int], causal: cutlass.Constexpr[bool]) -> Int32:
    """Number of KV tiles a Q tile visits (tiles 0 .. n_max - 1); see the module docstring."""
    n_max = (seqlen_k + (tile_n - 1)) // tile_n
    if const_expr(causal):
        n_max = cutlass.min(n_max, m_block + 1)
    return n_max


@cute.jit
def apply_mask(
    acc_S: cute.Tensor,
    tScS: cute.Tensor,
    row_offset: Int32,
    col_offset: Int32,
    seqlen_k: Int32,
    causal: cutlass.Constexpr[bool],
    fill: cutlass.Constexpr[float] = -math.inf,
):
    """Set acc_S elements to ``fill`` where the key is out of range or in the future.

    ``tScS``: the identity (row, col) tensor of the tile partitioned like acc_S (thr_mma.
    partition_C). Global row = row_offset + local row, global col = col_offset + local col.
    Masked: col >= seqlen_k, or (causal) col > row. ``fill`` is -inf for softmax, 0 for
    the identity variant (a masked logit must contribute nothing to O).
    """
    s_mn = common.acc_row_view(acc_S)
    c_mn = common.acc_row_view(tScS)
    for r in cutlass.range_constexpr(cute.size(s_mn, mode=[0])):
        # columns [0, limit) of this tile are visible to this row
        limit = seqlen_k - col_offset
        if const_expr(causal):
            limit = cutlass.min(limit, row_offset + c_mn[r, 0][0] + 1 - col_offset)
        for c in cutlass.range_constexpr(cute.size(s_mn, mode=[1])):
            if c_mn[r, c][1] >= limit:
                s_mn[r, c] = Float32(fill)
