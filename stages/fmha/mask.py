"""Masks on the QK^T accumulator: KV tail, causal, alignment and sliding window (local).

Semantics (stage D's ``align``, ``window_left``, ``window_right``, ``causal``). With m query
rows, n keys and

    offset = 0        (align=top_left: torch SDPA's ``is_causal``, the default)
    offset = n - m    (align=bottom_right: flash-attn's; the last query row meets the last key)

query i sees key j iff

    0 <= j < n
    and (window_left  < 0 or j >= i + offset - window_left)
    and (window_right < 0 or j <= i + offset + window_right)

-1 means unbounded. ``causal=true`` is ``window_right = 0`` (flash-attn's rule: causal with
window (left, right) is window (left, 0), so a window_right given with causal is moot). This
is flash-attn's ``window_size=(left, right)`` with its bottom-right alignment when
align=bottom_right. The two alignments agree when m == n; with no window and no causal the
alignment changes nothing. A row that sees no key at all (bottom_right with m > n, or a
window that lies outside [0, n)) gets O = 0 and LSE = -inf (the reference says the same).

Tiles. A Q tile of ``tile_m`` rows (128 or 192; rows r_first .. r_last, r_last = r_first +
tile_m - 1, rows past m included: they are computed and never stored) visits the KV tiles
(``tile_n`` = 128 columns) n_min .. n_max - 1 (``kv_tile_range``), from n_max - 1 down to
n_min; every other tile holds no key any of its rows sees and is never loaded:

    n_max = min(ceil(n / tile_n), ceil((r_last + offset + window_right + 1) / tile_n))
    n_min = max(0, floor((r_first + offset - window_left) / tile_n))

A tile whose range is empty (no row of the tile sees any key) still visits one tile, fully
masked (tile 0, or n_max - 1): producer and consumer then agree on a count >= 1, the
pipelines run as always, and the online softmax ends with l = 0, i.e. O = 0 and LSE = -inf.

Which visits need ``apply_mask`` (``mask_steps``): the first ``n_up`` visits -- the KV
tail (tile ceil(n / tile_n) - 1, visited first when visited at all) and the tiles the
upper edge (causal diagonal / right window) crosses: tiles t >= floor((r_first + offset +
window_right + 1) / tile_n); at least 1 -- and, with a left window, the last visits from
``n_lo`` on: the tiles the left edge crosses, t < ceil((r_last + offset - window_left) /
tile_n). Every tile in between is fully visible to every row of the Q tile and runs
mask-free (the steady-state loop). For today's causal top-left 128-row tiles that is one
masked tile (the diagonal); causal 192-row tiles two; a window of w keys about
ceil(tile_m / tile_n) + 1 at each edge. A masked tile can be fully masked for some rows
(their softmax then sees only -inf there: ``OnlineSoftmax.step`` handles it).
"""

from dataclasses import dataclass
import math

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr

from stages.fmha import common

ALIGNS = ("top_left", "bottom_right")
#: stage D's ``mask_bug`` variant, bugs injected on purpose (the GPU proof that the diagnosis
#: names them, stages/fmha/mutants.py): window_left_plus_one = the left edge's compare off
#: by one (key i + offset - window_left - 1 visible, mutant window-left-plus-one);
#: left_tile_skipped = n_min rounded up, the KV tile the left edge crosses never visited
#: (mutant window-left-tile-skipped). Both need a left window.
BUGS = ("none", "window_left_plus_one", "left_tile_skipped")


# diagonal_offset, kv_tile_range and mask_steps are plain Python over DSL integers (no
# dynamic branch): the kernel traces them, and tests/test_mask.py runs them on Python ints
# against a brute-force enumeration of the visible keys.


@dataclass(frozen=True)
class MaskSpec:
    """The compile-time mask of a kernel: Q/KV tile sizes, alignment and window (-1 =
    unbounded; ``window_right`` is already 0 for causal)."""

    tile_m: int
    tile_n: int
    window_left: int = -1
    window_right: int = -1
    bottom_right: bool = False
    bug: str = "none"  # stage D's mask_bug variant (BUGS; deliberately wrong kernels)

    @classmethod
    def make(cls, tile_m: int, tile_n: int, causal: bool, align: str = "top_left",
             window_left: int = -1, window_right: int = -1, bug: str = "none") -> "MaskSpec":
        if bug not in BUGS:
            raise ValueError(f"mask bug must be one of {', '.join(BUGS)}, not {bug!r}")
        if align not in ALIGNS:
            raise ValueError(f"align must be one of {', '.join(ALIGNS)}, not {align!r}")
        if window_left < -1 or window_right < -1:
            raise ValueError(f"window_left and window_right must be >= -1 (-1: unbounded), not {window_left}, {window_right}")
        if bug != "none" and window_left < 0:
            raise ValueError(f"mask_bug={bug} needs a left window (window_left >= 0)")
        if causal and window_right > 0:  # causal is the right edge: a wider one would be dropped unseen
            raise ValueError(f"causal sets window_right = 0: window_right={window_right} would be ignored (give -1 or 0, "
                             "or causal=false for a right window)")
        return cls(tile_m, tile_n, int(window_left), 0 if causal else int(window_right), align == "bottom_right", bug)

    @property
    def upper(self) -> bool:
        """A right edge (causal diagonal or right window) exists."""
        return self.window_right >= 0

    @property
    def lower(self) -> bool:
        """A left window edge exists."""
        return self.window_left >= 0

    @property
    def plain_causal(self) -> bool:
        """Today's causal: top-left diagonal (window_right 0, offset 0): the kernel keeps its
        exact code for it."""
        return self.window_right == 0 and not self.bottom_right

    @property
    def upper_loop(self) -> bool:
        """More than one visit may need the upper mask (everything but plain causal with
        square tiles, whose diagonal lies in one KV tile)."""
        return self.upper and not (self.plain_causal and self.tile_m == self.tile_n)

    @property
    def lower_loop(self) -> bool:
        """The last visits may need the left-window mask."""
        return self.lower


def diagonal_offset(spec: cutlass.Constexpr, seqlen_q: Int32, seqlen_k: Int32):
    """``offset`` of the module docstring: 0 (a Python int) or n - m."""
    off = 0
    if const_expr(spec.bottom_right):
        off = seqlen_k - seqlen_q
    return off


def kv_tile_range(spec: cutlass.Constexpr, m_block: Int32, seqlen_q: Int32, seqlen_k: Int32):
    """(n_min, n_max): the KV tiles n_min .. n_max - 1 a Q tile visits (see the module
    docstring), n_max - n_min >= 1. n_min is the Python int 0 without a left window."""
    tile_m, tile_n = spec.tile_m, spec.tile_n
    n_max = (seqlen_k + (tile_n - 1)) // tile_n
    n_min = 0
    if const_expr(spec.plain_causal):
        n_max = cutlass.min(n_max, ((m_block + 1) * tile_m + (tile_n - 1)) // tile_n)
    elif const_expr(spec.upper):
        off = diagonal_offset(spec, seqlen_q, seqlen_k)
        # one past the last key the tile's last row sees; at least 1: an empty range visits tile 0
        hi = (m_block + 1) * tile_m + off + spec.window_right
        n_max = cutlass.min(n_max, (cutlass.max(hi, 1) + (tile_n - 1)) // tile_n)
    if const_expr(spec.lower):
        off = diagonal_offset(spec, seqlen_q, seqlen_k)
        lo = m_block * tile_m + off - spec.window_left  # the first key the tile's first row sees
        if const_expr(spec.bug == "left_tile_skipped"):
            lo = lo + (tile_n - 1)  # rounded up: the edge tile is skipped (a deliberate bug)
        n_min = cutlass.min(cutlass.max(lo, 0) // tile_n, n_max - 1)
    return n_min, n_max


def mask_steps(spec: cutlass.Constexpr, m_block: Int32, n_min, n_max: Int32, seqlen_q: Int32, seqlen_k: Int32):
    """(n_up, n_lo) in visit order (visit i is tile n_max - 1 - i, n_max - n_min visits):
    visits 0 .. n_up - 1 need the mask (KV tail, upper edge; n_up >= 1), visits n_up ..
    n_lo - 1 run mask-free, visits n_lo .. the last need the left-window mask. Without a
    left window n_lo is n_max (no visit reaches it)."""
    tile_m, tile_n = spec.tile_m, spec.tile_n
    n_up = Int32(1)
    if const_expr(spec.plain_causal and tile_m != tile_n):
        n_up = cutlass.max(n_max - (m_block * tile_m) // tile_n, 1)
    elif const_expr(spec.upper_loop):
        off = diagonal_offset(spec, seqlen_q, seqlen_k)
        # tiles t >= t_up hold a key past the first row's last visible one
        t_up = cutlass.max(m_block * tile_m + off + spec.window_right + 1, 0) // tile_n
        if const_expr(spec.lower):
            t_up = cutlass.max(t_up, n_min)
        n_up = cutlass.max(n_max - t_up, 1)
    n_lo = n_max
    if const_expr(spec.lower):
        off = diagonal_offset(spec, seqlen_q, seqlen_k)
        # tiles t < t_lo hold a key before the last row's first visible one
        t_lo = (cutlass.max((m_block + 1) * tile_m - 1 + off - spec.window_left, 0) + (tile_n - 1)) // tile_n
        n_lo = cutlass.min(cutlass.max(n_max - t_lo, n_up), n_max - n_min)
    return n_up, n_lo


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
    lo_row_offset: Int32 = None,
):
    """Set acc_S elements to ``fill`` where the key is out of range or outside the window.

    ``tScS``: the identity (row, col) tensor of the tile partitioned like acc_S (thr_mma.
    partition_C); ``t0ScS`` the same for thread 0, whose coordinates are compile-time
    constants. Global row = local row + the row offsets, global col = col_offset + local
    col. Masked: col >= seqlen_k; (``causal``: the upper edge) col > row + ``row_offset``;
    (``lo_row_offset`` given: the left window edge) col < row + ``lo_row_offset``. The
    caller folds the alignment offset and the window sizes into the two row offsets (plain
    causal: row_offset is the first row, exactly as before windows). ``fill`` is -inf for
    softmax, 0 for the identity variant (a masked logit must contribute nothing to O).

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
        if const_expr(lo_row_offset is not None):
            # and columns [low, ...)
            low = lo_row_offset + c_mn[r, 0][0] - col_offset - col_shift
            for c in cutlass.range_constexpr(cute.size(s_mn, mode=[1])):
                col = c0_mn[r, c][1]
                s_mn[r, c] = Float32(fill) if col >= limit else (Float32(fill) if col < low else s_mn[r, c])
        else:
            for c in cutlass.range_constexpr(cute.size(s_mn, mode=[1])):
                # a select, not an ``if`` around the store: a conditional store into the
                # register tensor became a chain of selects over the whole row (933 FSEL in
                # the d=64 tile's first softmax, about 2.5 us of every work tile on an H200)
                s_mn[r, c] = Float32(fill) if c0_mn[r, c][1] >= limit else s_mn[r, c]
