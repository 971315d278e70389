"""Stage D's short work tile, shared by its consumer WGs (variant ``short_tile=split``).

A Q tile of three consumer WGs (192 rows) at the end of a sequence whose real rows fit the
first WG (m mod 192 in 1 ... 64: d = 64 at m = 1024 and 4096) takes a whole tile's time: a
WG is paced by its own S -> softmax -> PV chain, so the two WGs of padding rows idling does
not make the real one faster (docs/perf-notes.md rounds 3 and 19: about 11 % of the launch
at s = 1024). With ``split`` all three WGs take the real rows (the producer loads WG 0's Q
box into every WG's slot) and WG w visits the tile's KV tiles w, w + 3, w + 6, ... of its
visit order. With as many K/V ring slots as WGs, WG w's visits all land in one slot, so each
WG waits on every fill of its slot (no mbarrier phase is skipped) and releases each of them
for all WGs at once (the ring's empty barriers count an arrive of every WG). The pingpong
turns are off for the tile (the WGs visit different tiles).

After its last PV MMA, WGs 1 and 2 leave their partial (acc_O and the rows' max and sum, the
register image of ``split_kv``) in a shared-memory scratch; WG 0 adds them to its own, in WG
order (WG w's visits are fixed by w, so a launch gives the same bits every time), and runs
the epilogue alone; the two named-barrier meetings around its read keep the scratch from
being overwritten early. Needs a persistent scheduler that balances the CTAs' work
(``persistent=dynamic``: round robin hands a CTA the same Q tile of every head when the grid
is a multiple of the Q tiles per head, so the CTAs with the short tiles would just idle).
"""

import math

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr

from stages.fmha import common, geometry, split_kv


def is_short_rows(m: int, tile_m: int, wg_rows: int) -> bool:
    """Whether m query rows end in a short tile (the last Q tile's real rows fit one WG and
    the tile has more than one WG): plain Python, for the host and the tests."""
    rest = m - (m - 1) // tile_m * tile_m
    return tile_m > wg_rows and rest <= wg_rows


def image_floats(dv: int, rows: int = 2) -> int:
    """fp32 values of one thread's partial: acc_O's (64 x dv / 128 threads) and the max and
    sum of its ``rows`` rows."""
    return geometry.WG_ROWS * dv // common.WG_THREADS + 2 * rows


def scratch_floats(wgs: int, dv: int) -> int:
    """The scratch's fp32 values: one image per thread of every WG but the first."""
    return (wgs - 1) * common.WG_THREADS * image_floats(dv)


def is_short(m_block: Int32, seqlen_q: Int32, tile_m: int, wg_rows: int):
    """Whether work tile ``m_block``'s real rows fit its first WG (``is_short_rows`` in the
    kernel; plain arithmetic, on DSL or Python integers)."""
    return seqlen_q - m_block * tile_m <= wg_rows


def visits(n_steps: Int32, wg: Int32, wgs: int) -> Int32:
    """How many of the tile's ``n_steps`` visits WG ``wg`` takes (w, w + wgs, ...; none
    when the tile has wg visits or fewer; plain arithmetic, on DSL or Python integers)."""
    return (n_steps - wg + (wgs - 1)) // wgs


def _image_view(scratch: cute.Tensor, k: Int32, tidx_wg: Int32, per_thread: cutlass.Constexpr[int]) -> cute.Tensor:
    """Thread ``tidx_wg``'s (4, per_thread / 4) view of image ``k`` of the scratch: value e
    at (e // 4) 512 + 4 t + e mod 4 floats from the image's start (v4 accesses, a warp's 512
    bytes contiguous: no bank conflict)."""
    start = k * (common.WG_THREADS * per_thread) + tidx_wg * 4
    return cute.make_tensor(scratch.iterator + start, cute.make_layout((4, per_thread // 4), stride=(1, 4 * common.WG_THREADS)))


@cute.jit
def leave(o_rows: cute.Tensor, row_max: cute.Tensor, row_sum: cute.Tensor, scratch: cute.Tensor, k: Int32, tidx_wg: Int32):
    """A WG other than the first: its partial into image ``k`` of the scratch."""
    rows, cols = cute.size(o_rows, mode=[0]), cute.size(o_rows, mode=[1])
    image = split_kv.register_image(o_rows, row_max, row_sum)
    cute.autovec_copy(image, _image_view(scratch, k, tidx_wg, rows * cols + 2 * rows))


@cute.jit
def add_in(o_rows: cute.Tensor, row_max: cute.Tensor, row_sum: cute.Tensor, c: cutlass.Constexpr, scratch: cute.Tensor,
           others: cutlass.Constexpr[int], tidx_wg: Int32, exp: cutlass.Constexpr[bool] = True):
    """The first WG: the ``others`` images of the scratch added to its own partial, in WG
    order, each scaled to the rows' max over all (``c``: the exponent's scale of the max's
    units; M read as 0 for a row whose max is -inf everywhere: it keeps -inf). ``exp`` False
    (softmax=identity): the plain sum."""
    rows, cols = cute.size(o_rows, mode=[0]), cute.size(o_rows, mode=[1])
    per_thread = rows * cols + 2 * rows
    images = [cute.make_rmem_tensor((4, per_thread // 4), Float32) for _ in range(others)]
    for k in cutlass.range_constexpr(others):
        cute.autovec_copy(_image_view(scratch, k, tidx_wg, per_thread), images[k])
    if const_expr(exp):
        for r in cutlass.range_constexpr(rows):
            own_max = row_max[r]
            for k in cutlass.range_constexpr(others):
                row_max[r] = cute.arch.fmax(row_max[r], images[k][rows * cols + r])
            safe = row_max[r]
            if row_max[r] == Float32(-math.inf):
                safe = Float32(0.0)
            a = cute.math.exp2((own_max - safe) * c, fastmath=True)
            row_sum[r] = row_sum[r] * a
            for j in cutlass.range_constexpr(cols):
                o_rows[r, j] = o_rows[r, j] * a
            for k in cutlass.range_constexpr(others):
                a = cute.math.exp2((images[k][rows * cols + r] - safe) * c, fastmath=True)
                row_sum[r] = row_sum[r] + a * images[k][rows * cols + rows + r]
                for j in cutlass.range_constexpr(cols):
                    o_rows[r, j] = o_rows[r, j] + a * images[k][r * cols + j]
    else:
        for k in cutlass.range_constexpr(others):
            for r in cutlass.range_constexpr(rows):
                for j in cutlass.range_constexpr(cols):
                    o_rows[r, j] = o_rows[r, j] + images[k][r * cols + j]
