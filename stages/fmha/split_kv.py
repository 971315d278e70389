"""Stage D's split-KV tail: the last, partial wave of work tiles cut along the keys.

T equal work tiles on G persistent CTAs run as T // G full waves and a last one of T mod G
tiles while the other CTAs idle (d = 128 s = 4096: 2048 tiles on 132 SMs, 15.5 waves, 3 % of
the launch; docs/perf-notes.md round 17). Cut in k pieces of about n_blocks / k KV tiles each,
the last tiles spread over the idle CTAs. Each piece writes its partial O and row statistics
to a workspace; the piece that arrives last adds them all in, in piece order (so a launch
gives the same bits whichever piece is last), and runs the usual epilogue (O / l, the LSE, the
O store). Nobody waits on another CTA: no spin, no deadlock. Measured
on an H100 (docs/perf-notes.md round 18): +33 % at batch 1 with 5 or 7 heads at s = 4096 (160
or 154 tiles on 132 CTAs), within 0.5 % either way on DESIGN.md's shapes.

The dynamic scheduler hands the pieces out after the whole tiles (``tile_scheduler``'s items):
a tile's k pieces are items whole + k t ... whole + k t + k - 1, taken back to back.

The workspace is the tile counters' int32 buffer (``workspace_words`` says how long it must
be; with a shorter one the kernel cuts less or not at all; the exported op sizes its buffer by
``workspace_bound``, enough for any launch): words 0 and
1 the scheduler's counters, then one arrival count per (tail tile, consumer WG), then from
``PARTIALS_BASE`` one slot per (tail tile, piece, consumer WG) of ``slot_words``. The counts
have words of their own, as many as any launch can use: each launch's last arrivers reset the
counts it used, so they are all zero between launches whatever the shape; had the slots begun
right after one launch's counts, the next launch's counts (a larger tail, more WGs) would land
on the stale partials of the last (an H100, d = 96 after d = 128: 130 WGs' rows never written).
A slot holds per thread acc_O's floats then (row max, row sum)
of its rows, the thread's 4 words at a time (element e of thread t at (e // 4) 512 + 4 t +
e mod 4: v4 stores, a warp's 512 bytes contiguous). The WG of the same index in another CTA
holds the same rows in the same layout, so pieces combine register by register.
"""

import math

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr

from stages.fmha import common

#: the most pieces a tile is cut in
MAX_PIECES = 4
#: the cost model's units are half KV steps: a whole tile is 2 n_blocks + TILE_FIXED (the tile
#: boundary, 1.5 steps in the H100 trace of round 16); a piece 2 ceil(n_blocks / k) + PIECE_FIXED
#: (the boundary, its partial's stores and the count); the last arriver's combine COMBINE
TILE_FIXED = 3
PIECE_FIXED = 4
COMBINE = 2
#: ``split_tail=few``: a launch of this many waves of work tiles or more cuts nothing (at d = 64
#: s = 1024, 23 waves, the cut the cost model chose lost 3 % on an H100, round 20; with 1.2 waves
#: it gained 37 %)
FEW_WAVES = 8
#: words before the arrival counts: the dynamic scheduler's two counters
COUNTERS = 2
#: first word of the partials' slots: the arrival counts take the words between (one per tail
#: tile and consumer WG: tail < grid <= the SMs, at most 3 WGs), 16-byte aligned
PARTIALS_BASE = 2048
#: the most (tail tile, WG) counts a launch may use; a launch with more cuts nothing
MAX_COUNTS = PARTIALS_BASE - COUNTERS


def slot_words(acc_floats: int, rows: int) -> int:
    """fp32 words of one (tail tile, piece, WG) slot: 128 threads x (acc_O's floats + row max
    and row sum of each of the thread's rows), a multiple of 4 per thread."""
    per_thread = acc_floats + 2 * rows
    assert per_thread % 4 == 0, per_thread
    return common.WG_THREADS * per_thread


def slots_end(tail, k, wgs: int, slot: int):
    """The word after the last slot of ``tail`` tiles cut in ``k`` pieces (Python ints or DSL
    Int32): the workspace's length, which ``capacity`` must reach."""
    return PARTIALS_BASE + tail * (k * wgs * slot)


def workspace_words(tiles: int, grid: int, n_blocks: int, wgs: int, slot: int, max_waves: int = 0) -> int:
    """int32 words the buffer needs for the kernel to cut ``tiles`` work tiles on ``grid`` CTAs
    as it would with room to spare (``pieces_for``): the counters alone where it would not cut."""
    tail = tail_of(tiles, grid)
    k = pieces_for(tiles, grid, n_blocks, 1 << 62, wgs, slot, max_waves)
    if k == 1:
        return COUNTERS
    return slots_end(tail, k, wgs, slot)


def workspace_bound(grid: int, wgs: int, slot: int) -> int:
    """The most int32 words any launch on ``grid`` CTAs can use, whatever its shape: the largest
    tail (grid - 1 tiles) in ``MAX_PIECES`` pieces. The exported op sizes its buffer by it once
    per stream, so it never replaces a buffer a CUDA graph captured."""
    return slots_end(grid - 1, MAX_PIECES, wgs, slot)


def room(wgs: int, slot: int) -> dict:
    """How the exported op sizes a kernel's workspace (its piece info): ``split_base`` +
    (SMs - 1) ``split_per_sm`` int32 words, ``workspace_bound`` on that many SMs."""
    base = workspace_bound(1, wgs, slot)
    return {"split_base": base, "split_per_sm": workspace_bound(2, wgs, slot) - base}


def tail_of(tiles: int, grid: int) -> int:
    """Work tiles of the last, partial wave (0: the tiles fill whole waves or one partial one)."""
    return tiles % grid if tiles > grid else 0


def whole_cost(n_blocks):
    """The cost model's time of one whole tile (half KV steps)."""
    return 2 * n_blocks + TILE_FIXED


def split_cost(tail, k: int, grid, n_blocks):
    """The cost model's time of the last wave cut in ``k`` pieces: ceil(tail k / grid) waves of
    pieces, then the combine (half KV steps; Python ints or DSL Int32)."""
    waves = (tail * k + grid - 1) // grid
    return waves * (2 * ((n_blocks + k - 1) // k) + PIECE_FIXED) + COMBINE


def pieces_for(tiles: int, grid: int, n_blocks: int, capacity: int, wgs: int, slot: int, max_waves: int = 0) -> int:
    """The k ``plan`` picks, in Python (the host's and the tests' view of the kernel's choice).
    ``max_waves`` (0: no limit): a launch of that many waves or more cuts nothing."""
    tail = tail_of(tiles, grid)
    best_k, best = 1, whole_cost(n_blocks)
    if max_waves and tiles >= max_waves * grid:
        return best_k
    for k in range(2, MAX_PIECES + 1):
        fits = tail * wgs <= MAX_COUNTS and slots_end(tail, k, wgs, slot) <= capacity
        cost = split_cost(tail, k, grid, n_blocks)
        if tail > 0 and k <= n_blocks and fits and cost < best:
            best, best_k = cost, k
    return best_k


@cute.jit
def _tail_dsl(tiles: Int32, grid: Int32) -> Int32:
    """``tail_of`` in the kernel."""
    tail = Int32(0)
    if tiles > grid:
        tail = tiles - (tiles // grid) * grid
    return tail


@cute.jit
def plan(tiles: Int32, grid: Int32, n_blocks: Int32, capacity: Int32, wgs: cutlass.Constexpr[int],
         slot: cutlass.Constexpr[int], max_waves: cutlass.Constexpr[int] = 0):
    """(whole, k): the work tiles run whole (the first ``whole``) and the pieces each of the
    others is cut in (1: no split), as ``pieces_for`` picks k: the least ``split_cost`` below
    ``whole_cost``, k <= n_blocks (a piece visits at least one KV tile), the counts within
    ``MAX_COUNTS``, the slots within ``capacity`` words; nothing from ``max_waves`` waves on
    (0: no limit)."""
    tail = _tail_dsl(tiles, grid)
    if const_expr(max_waves > 0):
        if tiles >= max_waves * grid:
            tail = Int32(0)
    best_k = Int32(1)
    best = whole_cost(n_blocks)
    for k in cutlass.range_constexpr(2, MAX_PIECES + 1):
        cost = split_cost(tail, k, grid, n_blocks)
        fits = slots_end(tail, k, wgs, slot) <= capacity
        if tail > 0 and tail * wgs <= MAX_COUNTS and k <= n_blocks and fits and cost < best:
            best, best_k = cost, Int32(k)
    whole = tiles
    if best_k > 1:
        whole = tiles - tail
    return whole, best_k


@cute.jit
def kv_range(n_max: Int32, piece: tuple):
    """(n_min, n_max) of ``piece`` (piece, pieces, ...) of a tile visiting KV tiles 0 .. n_max - 1:
    balanced, each at least one tile while pieces <= n_max; a whole tile's without a division."""
    split, pieces = piece[0], piece[1]
    n_min = Int32(0)
    if pieces > 1:
        n_min, n_max = split * n_max // pieces, (split + 1) * n_max // pieces
    return n_min, n_max


def _slot_tensor(workspace: cute.Tensor, word: Int32, tidx_wg: Int32, per_thread: int) -> cute.Tensor:
    """This thread's (4, per_thread / 4) fp32 view of the slot starting at ``word``."""
    addr = workspace.iterator.toint() + (word + tidx_wg * 4) * 4
    ptr = cute.make_ptr(Float32, addr, cute.AddressSpace.gmem, assumed_align=16)
    return cute.make_tensor(ptr, cute.make_layout((4, per_thread // 4), stride=(1, 4 * common.WG_THREADS)))


@cute.jit
def register_image(o_rows: cute.Tensor, row_max: cute.Tensor, row_sum: cute.Tensor) -> cute.Tensor:
    """A thread's partial as (4, per_thread / 4) floats: acc_O's rows, then the rows' max, then
    this lane's share of their sums (the slot's layout; short_tile.py keeps the same image)."""
    rows, cols = cute.size(o_rows, mode=[0]), cute.size(o_rows, mode=[1])
    per_thread = rows * cols + 2 * rows
    image = cute.make_rmem_tensor((4, per_thread // 4), Float32)
    for r in cutlass.range_constexpr(rows):
        for j in cutlass.range_constexpr(cols):
            image[r * cols + j] = o_rows[r, j]
        image[rows * cols + r] = row_max[r]
        image[rows * cols + rows + r] = row_sum[r]
    return image


@cute.jit
def merge(
    acc_O: cute.Tensor,
    row_max: cute.Tensor,
    row_sum: cute.Tensor,
    c: cutlass.Constexpr,
    workspace: cute.Tensor,
    flag: cute.Tensor,
    tidx_wg: Int32,
    wg: Int32,
    wgs: cutlass.Constexpr[int],
    tail: Int32,
    tail_idx: Int32,
    split: Int32,
    pieces: Int32,
    barrier_id: Int32,
    exp: cutlass.Constexpr[bool] = True,
) -> cutlass.Boolean:
    """One consumer WG's end of piece ``split`` of tail tile ``tail_idx``: store the partial
    (acc_O, the rows' max in raw S units, c = the exponent's scale, and this lane's share of
    their sums), count it in; the WG of the last piece to arrive adds every piece's in, in piece order
    (acc_O, row_max, row_sum then stand as if it had visited every KV tile, the same bits
    whichever piece arrived last) and returns True, the others False (their epilogue is
    skipped). ``flag``: a shared-memory int32 per WG. ``exp``
    False (softmax=identity): O is the plain sum of the pieces'."""
    o_rows = common.acc_row_view(acc_O)
    rows, cols = cute.size(o_rows, mode=[0]), cute.size(o_rows, mode=[1])
    per_thread = rows * cols + 2 * rows
    slot = common.WG_THREADS * per_thread
    first_slot = PARTIALS_BASE + ((tail_idx * pieces) * wgs + wg) * slot  # piece j's: first_slot + j wgs slot
    image = register_image(o_rows, row_max, row_sum)
    cute.autovec_copy(image, _slot_tensor(workspace, first_slot + split * (wgs * slot), tidx_wg, per_thread))
    # every thread's stores, then the WG's one count: release by fence + barrier, acquire by the
    # count's acq_rel and the last arriver's fence
    cute.arch.fence_acq_rel_gpu()
    cute.arch.barrier(barrier_id=barrier_id, number_of_threads=common.WG_THREADS)
    if tidx_wg == 0:
        count = workspace.iterator + (COUNTERS + tail_idx * wgs + wg)
        arrived = cute.arch.atomic_add(count, Int32(1), sem="acq_rel", scope="gpu")
        last = Int32(0)
        if arrived == pieces - 1:
            last = Int32(1)
            workspace[COUNTERS + tail_idx * wgs + wg] = Int32(0)  # the next launch's
        flag[wg] = last
    cute.arch.barrier(barrier_id=barrier_id, number_of_threads=common.WG_THREADS)
    is_last = flag[wg] != 0
    if is_last:
        cute.arch.fence_acq_rel_gpu()
        _sum_pieces(o_rows, row_max, row_sum, c, exp, workspace, first_slot, tidx_wg, wgs, slot, pieces)
    return is_last


@cute.jit
def _sum_pieces(o_rows, row_max, row_sum, c: cutlass.Constexpr, exp: cutlass.Constexpr[bool], workspace, first_slot: Int32,
                tidx_wg: Int32, wgs: cutlass.Constexpr[int], slot: cutlass.Constexpr[int], pieces: Int32):
    """The last arriver's combine (``merge``): every piece's O and row sums, this WG's own read
    back from its slot like the others', rescaled to the rows' max over the pieces and added in
    piece order. So the sum does not depend on which piece arrived last: a launch gives the
    same bits every time (the exported op's against the in-tree kernel's, `wb run --exported`).
    ``exp`` False (softmax=identity): O is the plain sum of the pieces'."""
    rows, cols = cute.size(o_rows, mode=[0]), cute.size(o_rows, mode=[1])
    per_thread = rows * cols + 2 * rows
    # the rows' max over the pieces (this WG's included: fmax is exact in any order), each piece
    # then scaled by 2^((m_j - M) c) (M read as 0 for a row that saw only -inf everywhere: it
    # keeps -inf, finalize's degenerate row)
    safe = cute.make_rmem_tensor(rows, Float32)
    if const_expr(exp):
        for p in cutlass.range(pieces, unroll=1):
            stats = _slot_tensor(workspace, first_slot + p * (wgs * slot), tidx_wg, per_thread)
            for r in cutlass.range_constexpr(rows):
                row_max[r] = cute.arch.fmax(row_max[r], stats[rows * cols + r])
        for r in cutlass.range_constexpr(rows):
            safe[r] = row_max[r]
            if row_max[r] == Float32(-math.inf):
                safe[r] = Float32(0.0)
            row_sum[r] = Float32(0.0)
    for i in cutlass.range_constexpr(rows * cols):
        o_rows[i // cols, i % cols] = Float32(0.0)
    other = cute.make_rmem_tensor((4, per_thread // 4), Float32)
    for p in cutlass.range(pieces, unroll=1):
        cute.autovec_copy(_slot_tensor(workspace, first_slot + p * (wgs * slot), tidx_wg, per_thread), other)
        for r in cutlass.range_constexpr(rows):
            a = Float32(1.0)
            if const_expr(exp):
                a = cute.math.exp2((other[rows * cols + r] - safe[r]) * c, fastmath=True)
                row_sum[r] = row_sum[r] + a * other[rows * cols + rows + r]
            for j in cutlass.range_constexpr(cols):
                o_rows[r, j] = o_rows[r, j] + a * other[r * cols + j]
