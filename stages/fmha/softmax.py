"""Online softmax on the Hopper WGMMA accumulator, and P's trip from accumulator to operand.

Device helpers shared by stages C and D (call them from a ``@cute.kernel``/``@cute.jit``).

Register ownership (one warpgroup, a 64 x N WGMMA accumulator, see ``common``): thread t of
the warpgroup holds, in fragment ((2, 2, N/8), 1, 1), rows r0 = t/4 % 8 + 16 (t/32) and
r0 + 8, and in each of them the column pairs 2 (t % 4) + {0, 1} + 8 j. A row therefore lives
in the 4 lanes of a quad; its max must be reduced across the quad (shuffle xor 1, 2). The
row sum need not be: each lane keeps a partial sum, all partial sums of a row are scaled by
the same factor (the max is quad-uniform), and ``finalize`` reduces them once.

Online softmax, for KV tiles j = 0, 1, ... (c = scale * log2(e), S in raw Q.K units):

    m_j = max(m_{j-1}, rowmax S_j)                 (quad-reduced; m_{-1} = -inf)
    P_j = 2^(S_j c - m_j c)
    alpha_j = 2^((m_{j-1} - m_j) c)                (row_scale: O and l are multiplied by it)
    l_j = alpha_j l_{j-1} + rowsum P_j
    O_j = alpha_j O_{j-1} + P_j V_j
    end: O = O / l,  LSE = (m c + log2 l) ln 2 = m * scale + ln l

A row whose max is still -inf (every column masked so far) uses 0 in place of the max, so
it gets P = 0 and alpha = 0 instead of NaN; at the end l = 0 gives O = 0 and LSE = -inf.

Softcap (Gemma 2, flash-attn's definition), cap = c > 0: the scaled logit s = S scale
becomes c tanh(s / c) before the mask and the softmax. ``step`` folds the scale into the
tanh and keeps the capped logits in log2 units, L = c log2(e) tanh(S scale / c), so
P = 2^(L - m) (m: row max of L) and LSE = (m + log2 l) ln 2. ``cap_logits`` computes
tanh(y) = 1 - 2 / (1 + e^(2y)) with one ex2 and one rcp (both MUFU.approx, ~2^-22
relative): L = c' - 2 c' / (1 + 2^(S k)), k = 2 scale log2(e) / c, c' = c log2(e), an
absolute error of a few 1e-7 c' (tanh.approx.f32, 2^-11 relative, would be ~0.015 at
c = 30: far above LSE's 1e-4 tolerance). A masked logit (-inf) would come out as -c', so
on masked tiles ``step`` puts -inf back (a select per element, masked tiles only).

P conversion. The PV WGMMA takes P from registers as its A operand; its fragment for a
64 x 16 k-block is ((2, 2, 2), 1, K/16): mode 0.0 = two adjacent k, mode 0.1 = rows +0/+8,
mode 0.2 = k +0/+8, mode 2 = k-block. For 16-bit P that is the accumulator's own register
order regrouped: acc mode 0.2 (16 column blocks of 8) splits into (2, 8) = (k +0/+8 within a
k-block, k-block). ``p_operand_layout`` builds that view and ``check_p_operand_mapping``
proves, at trace time and for every thread and register, that the (row, col) the QK
accumulator holds is the (row, k) the PV MMA expects there (tests run it).
"""


import math
from typing import Type

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import dsl_user_op

from stages.fmha import common

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------
# P: accumulator (fp32, QK^T C layout) -> A operand of the PV MMA (16-bit, registers)
# --------------------------------------------------------------------------------------
P_BUGS = ("none", "chunk", "rowmajor")


def p_operand_layout(acc_layout: cute.Layout, bug: str = "none") -> cute.Layout:
    """View of a Hopper accumulator ((2, 2, V), 1, 1) as the RS-WGMMA A fragment
    ((2, 2, 2), 1, V/2) over the same registers (16-bit A operand, k-block of 16 columns).

    Correct: acc mode 0.2 (V chunks of 8 columns) splits as (2, V/2) -- k-block j takes
    chunks (2j, 2j + 1). ``bug="chunk"`` (wb's ``bug=pv_layout``) splits it the other way,
    (V/2, 2): k-block j takes chunks (j, j + V/2), so the PV MMA reads P column
    8 (j + V/2 h) + e where it expects column 16 j + 8 h + e (stages/fmha/mutants.py models
    exactly this as "p-layout")."""
    shp, std = acc_layout.shape, acc_layout.stride
    assert cute.rank(shp[0]) == 3 and shp[1] == 1 and shp[2] == 1, f"unexpected acc {acc_layout}"
    v = shp[0][2]
    assert v % 2 == 0, "the QK tile width must be a multiple of 16"
    s0, s1, s2 = std[0]
    if bug == "chunk":
        return cute.make_layout(((2, 2, 2), 1, v // 2), stride=((s0, s1, s2 * (v // 2)), 0, s2))
    assert bug == "none", bug
    return cute.make_layout(((2, 2, 2), 1, v // 2), stride=((s0, s1, s2), 0, 2 * s2))


def p_operand_view(acc: cute.Tensor, bug: str = "none") -> cute.Tensor:
    return cute.make_tensor(acc.iterator, p_operand_layout(acc.layout, bug))


@cute.jit
def convert_p(acc_S: cute.Tensor, tOrP: cute.Tensor, bug: cutlass.Constexpr[str] = "none"):
    """tOrP (A operand of the PV MMA, 16-bit registers) <- acc_S (fp32 QK accumulator).

    ``bug`` (wb's bug-injection variants, off by default):
      "chunk"    -- the column chunks regrouped the wrong way (see ``p_operand_layout``);
      "rowmajor" -- P handed over in the (row, col) order the softmax works in
                    (``common.acc_row_view``), operand register i <- element i of that view:
                    swaps row bit 3 with column bit 0 inside each 16 x 16 block of P.
    """
    if const_expr(bug == "rowmajor"):
        acc_mn = common.acc_row_view(acc_S)
        assert cute.size(acc_mn) == cute.size(tOrP)
        for i in cutlass.range_constexpr(cute.size(tOrP)):
            tOrP[i] = acc_mn[i].to(tOrP.element_type)
    else:
        view = p_operand_view(acc_S, bug)
        k_blocks = cute.size(tOrP, mode=[2])
        if const_expr(k_blocks & (k_blocks - 1) == 0):
            tOrP.store(view.load().to(tOrP.element_type))
        else:
            # KV tiles of 80 or 112 columns (d = 256, 192): one conversion of the whole
            # (non-power-of-two) vector came out as scalar cvts plus 16-bit packing movs that
            # LLVM sank between the PV wgmmas (ptxas then injected a warpgroup.arrive before
            # each, C7519); per 16-column k-block it is paired cvts, all before the MMA
            for j in cutlass.range_constexpr(k_blocks):
                tOrP[None, None, j].store(view[None, None, j].load().to(tOrP.element_type))


def _flat(t):
    return sum((_flat(x) for x in t), ()) if isinstance(t, tuple) else (t,)


def _eval_mode(mode: tuple[tuple[int, int], ...], i: int) -> int:
    """Offset of linear index ``i`` (colexicographic) in one mode, given as its flattened
    (extent, stride) pairs."""
    off = 0
    for sh, st in mode:
        off += (i % sh) * st
        i //= sh
    return off


class _PyLayout:
    """A static CuTe layout copied into Python tuples once (reading .shape/.stride of a
    cute.Layout goes through MLIR every time: far too slow for the ~60k lookups of one
    compile's operand check), each mode flattened once."""

    def __init__(self, layout):
        shape, stride = layout.shape, layout.stride
        self.text = str(layout)
        self._whole = tuple(zip(_flat(shape), _flat(stride)))
        pairs = zip(shape, stride) if isinstance(shape, tuple) else ()
        self._modes = tuple(tuple(zip(_flat(sh), _flat(st))) for sh, st in pairs)

    def __call__(self, *idx: int) -> int:
        """Offset at one linear (colexicographic) index per top-level mode (or one index)."""
        if len(idx) == 1:
            return _eval_mode(self._whole, idx[0])
        return sum(_eval_mode(self._modes[i], x) for i, x in enumerate(idx))


def p_rows(acc_shape, operand: bool) -> tuple[int, ...]:
    """The row (of the thread's row view, ``common.acc_row_view``) of each register of P,
    in linear order: of the PV MMA's A operand (``operand``: the ``p_operand_layout`` view,
    tOrP's order) or of a 16-bit copy in the accumulator's own layout (P through shared
    memory). Pure Python over static layouts (call inside @cute.jit); the operand's is
    proven against the TV layouts by ``check_p_operand_mapping``."""
    acc = cute.make_layout(acc_shape)
    rows_l = common.acc_row_layout(acc)
    row_view = _PyLayout(rows_l)
    n_rows, n_cols = cute.size(rows_l, mode=[0]), cute.size(rows_l, mode=[1])
    row_of = {row_view(r, c): r for r in range(n_rows) for c in range(n_cols)}
    where = _PyLayout(p_operand_layout(acc)) if operand else (lambda i: i)
    return tuple(row_of[where(i)] for i in range(cute.size(acc)))


def p_source_map(tiled_mma_qk: cute.TiledMma, tiled_mma_pv: cute.TiledMma, acc_shape, p_shape, bug: str = "none"):
    """For every thread t and A-operand register of the PV MMA: ((row, k) the PV MMA
    expects there, (row, col) of S the conversion puts there). Pure Python over the static
    TV layouts (call inside @cute.jit). Returns (pairs, n_threads, view text)."""
    atom_m = tiled_mma_qk.shape_mnk[0]
    atom_k = tiled_mma_pv.shape_mnk[2]
    acc = cute.make_layout(acc_shape)  # the fragment's compact register order
    p_frag = cute.make_layout(p_shape)
    n_val_a = cute.size(tiled_mma_pv.tv_layout_A, mode=[1])
    n_kblk = cute.size(p_frag, mode=[2])
    n_thr = cute.size(tiled_mma_qk.tv_layout_C, mode=[0])
    tv_c = _PyLayout(tiled_mma_qk.tv_layout_C)  # (thr, val) -> m + 64 n   in the 64 x N atom
    tv_a = _PyLayout(tiled_mma_pv.tv_layout_A)  # (thr, val) -> m + 64 k   in the 64 x 16 atom
    if bug == "rowmajor":
        rows = _PyLayout(common.acc_row_layout(acc))  # operand register i <- acc_row_view[i]
        src = lambda va, kb: rows(va + n_val_a * kb)  # noqa: E731
        text = f"row view {rows.text}"
    else:
        view_l = p_operand_layout(acc, bug)
        assert view_l.shape == p_frag.shape, f"operand view {view_l.shape} != PV A fragment {p_frag.shape}"
        view = _PyLayout(view_l)
        src = lambda va, kb: view(va, 0, kb)  # noqa: E731
        text = view.text
    key = (tv_c.text, tv_a.text, text, n_kblk)
    if key not in _maps:
        pairs = []
        for t in range(n_thr):
            for kb in range(n_kblk):
                for va in range(n_val_a):
                    a_idx = tv_a(t, va)
                    c_idx = tv_c(t, src(va, kb))  # acc is compact: register offset == value index
                    pairs.append(
                        ((a_idx % atom_m, a_idx // atom_m + kb * atom_k), (c_idx % atom_m, c_idx // atom_m))
                    )
        _maps[key] = (pairs, n_thr, text)
    return _maps[key]


_maps: dict = {}


def check_p_operand_mapping(tiled_mma_qk: cute.TiledMma, tiled_mma_pv: cute.TiledMma, acc_shape, p_shape):
    """Trace-time proof that ``convert_p`` feeds the PV MMA the right P elements.

    For every thread of the warpgroup and every register of its A fragment, the (row, k)
    the PV atom's A TV-layout assigns there must equal the (row, col) that the QK atom's C
    TV-layout assigns to the accumulator register ``p_operand_layout`` points at. Also
    checks that row r of a thread's S row view (``common.acc_row_view``) is row r of its O
    row view (the O rescale relies on it). Returns a one-line summary; raises
    AssertionError on any mismatch. Call inside @cute.jit.
    """
    pairs, n_thr, text = p_source_map(tiled_mma_qk, tiled_mma_pv, acc_shape, p_shape)
    for i, (want, got) in enumerate(pairs):
        assert want == got, f"pair {i}: the PV MMA expects P{want} but the operand view holds P{got}"
    atom_m = tiled_mma_qk.shape_mnk[0]
    acc = cute.make_layout(acc_shape)
    s_rows = _PyLayout(common.acc_row_layout(acc))
    # the rounded row sum (OnlineSoftmax.add_rounded) adds operand register i to row rows[i]
    # of the thread's row view: that row must be the tile row the PV MMA multiplies it into
    tv_c = _PyLayout(tiled_mma_qk.tv_layout_C)
    rows = p_rows(acc_shape, operand=True)
    per_thr = len(pairs) // n_thr
    assert per_thr == len(rows), f"{per_thr} operand registers per thread, {len(rows)} row entries"
    for t in range(n_thr):
        for i, r in enumerate(rows):
            want_row = pairs[t * per_thr + i][0][0]
            got_row = tv_c(t, s_rows(r, 0)) % atom_m
            assert want_row == got_row, f"thread {t}: operand register {i} is of row {want_row}, p_rows says {got_row}"
    o_rows = _PyLayout(
        common.acc_row_layout(cute.make_layout(tiled_mma_pv.partition_shape_C((atom_m, tiled_mma_pv.shape_mnk[1]))))
    )
    tv_o = _PyLayout(tiled_mma_pv.tv_layout_C)
    n_rows = cute.size(common.acc_row_layout(acc), mode=[0])
    for t in range(n_thr):
        for r in range(n_rows):
            rs = tv_c(t, s_rows(r, 0)) % atom_m
            ro = tv_o(t, o_rows(r, 0)) % atom_m
            assert rs == ro, f"thread {t}: S row view row {r} is tile row {rs}, O row view row {r} is {ro}"
    return f"P operand view {text} verified: {n_thr} threads x {per_thr} registers, rows of S == rows of O == rows of the rounded sum"


# --------------------------------------------------------------------------------------
# Online softmax
# --------------------------------------------------------------------------------------
class OnlineSoftmax:
    """Running row max / row sum of one thread's rows (2 per thread for a 64-row WGMMA).

    Create it inside the kernel (it allocates register tensors). ``scale_log2`` is
    scale * log2(e); S stays in raw units, so every exponent is one FFMA away.
    ``softcap`` = (k_in, k_out) of ``cap_logits`` (``softcap_constants``) or None (off):
    ``step`` caps S first and works on the capped logits in log2 units.
    ``sum_from_alpha``: a tile's row sum starts from alpha l (FlashAttention-4's order) instead
    of 0 with alpha l added after it; the same sum up to fp32 rounding order, but alpha is
    then needed before the P exponents, so ptxas issues its exp2 (and O *= alpha, which waits
    only on it) among them instead of after the last (docs/perf-notes.md round 14).
    """

    def __init__(
        self, scale_log2: float, num_rows: int, softcap: tuple | None = None, lazy: float | None = None,
        rounded_sum: bool = False, sum_from_alpha: bool = False,
    ):
        self.scale_log2 = scale_log2
        self.softcap = softcap
        self.lazy = lazy
        self.rounded_sum = rounded_sum
        self.sum_from_alpha = sum_from_alpha
        self.num_rows = num_rows
        self.row_max = cute.make_rmem_tensor(num_rows, Float32)
        self.row_sum = cute.make_rmem_tensor(num_rows, Float32)
        # rounded_sum: a second sum, of P as rounded for the PV MMA, normalises O; the fp32
        # row_sum still gives the LSE (the rounded one would carry P's rounding into it:
        # 3e-4-3e-3 in bf16, against the LSE's 1e-4 tolerance)
        self.row_sum_p16 = cute.make_rmem_tensor(num_rows, Float32) if rounded_sum else None
        self.reset()

    def reset(self):
        """Back to no rows seen (a new Q tile)."""
        self.row_max.fill(-math.inf)
        self.row_sum.fill(0.0)
        if const_expr(self.rounded_sum):
            self.row_sum_p16.fill(0.0)

    @cute.jit
    def step(
        self,
        acc_S: cute.Tensor,
        row_scale: cute.Tensor,
        is_first: cutlass.Constexpr[bool] = False,
        rescale_sum: cutlass.Constexpr[bool] = True,
        masked: cutlass.Constexpr[bool] = True,
    ):
        """acc_S <- P = 2^(S c - m_new c) in place; row_scale[r] <- alpha (1 on the first
        tile); updates row_max and this lane's partial row_sum. ``rescale_sum=False`` skips
        multiplying the running sum by alpha (the deliberately wrong ``rescale=off``).
        ``lazy`` (a threshold t in log2 units, from the constructor): a row's running max
        moves only when the tile's exceeds it by more than t, else it stays, alpha is exactly
        1 and P stays below 2^t (O, the sum and the LSE all refer to the same max, so the
        result is the same); the caller may then skip O *= alpha (``any_moved``).
        Softcap: S is capped first (log2 units, c = 1); ``masked``: the tile may hold -inf
        (it went through a mask), which the cap must keep (no effect without softcap)."""
        c = self.scale_log2
        if const_expr(self.softcap is not None):
            cap_logits(acc_S, self.softcap[0], self.softcap[1], masked)
            c = 1.0
        s_mn = common.acc_row_view(acc_S)
        assert cute.size(s_mn, mode=[0]) == self.num_rows
        for r in cutlass.range_constexpr(self.num_rows):
            row = s_mn[r, None].load()
            m_prev = self.row_max[r]
            m_tile = row.reduce(cute.ReductionOp.MAX, Float32(-math.inf), 0)
            m_new = common.quad_allreduce(cute.arch.fmax(m_tile, m_prev), common.fmax)
            if const_expr(self.lazy is not None and not is_first):
                # a row that saw only -inf so far: -inf - -inf is NaN, so it keeps -inf either way
                if (m_new - m_prev) * c <= Float32(self.lazy):
                    m_new = m_prev
            self.row_max[r] = m_new
            m_safe = m_new
            if m_new == Float32(-math.inf):
                m_safe = Float32(0.0)
            if const_expr(self.softcap is not None):
                p = cute.math.exp2(row - m_safe, fastmath=True)
            else:
                p = cute.math.exp2(row * c - m_safe * c, fastmath=True)
            s_mn[r, None].store(p)
            if const_expr(is_first):
                row_scale[r] = Float32(1.0)
                self.row_sum[r] = p.reduce(cute.ReductionOp.ADD, Float32(0.0), 0)
                if const_expr(self.rounded_sum):
                    self.row_sum_p16[r] = Float32(0.0)  # the tile's P joins it in add_rounded
            else:
                if const_expr(not self.sum_from_alpha):
                    tile_sum = p.reduce(cute.ReductionOp.ADD, Float32(0.0), 0)  # before alpha: ptxas's order of old
                alpha = self.alpha(m_prev, m_new, m_safe, c)
                row_scale[r] = alpha
                if const_expr(self.rounded_sum and rescale_sum):
                    self.row_sum_p16[r] = self.row_sum_p16[r] * alpha
                kept = self.row_sum[r]
                if const_expr(rescale_sum):
                    kept = kept * alpha
                if const_expr(self.sum_from_alpha):
                    self.row_sum[r] = p.reduce(cute.ReductionOp.ADD, kept, 0)
                else:
                    self.row_sum[r] = kept + tile_sum

    @cute.jit
    def alpha(self, m_prev: Float32, m_new: Float32, m_safe: Float32, c: cutlass.Constexpr):
        """alpha = 2^((m_prev - m_new) c): what O and the row sum are multiplied by when the
        row's max moves (m_safe: m_new, or 0 while the row has seen only -inf); exactly 1
        under ``lazy`` when the max stayed, so that the O multiply can be skipped."""
        if const_expr(self.softcap is not None):
            alpha = cute.math.exp2(m_prev - m_safe, fastmath=True)
        else:
            alpha = cute.math.exp2((m_prev - m_safe) * c, fastmath=True)
        if const_expr(self.lazy is not None):
            if m_new == m_prev:
                alpha = Float32(1.0)  # exactly: the O multiply can be skipped
        return alpha

    @cute.jit
    def add_rounded(self, p16: cute.Tensor, rows: cutlass.Constexpr):
        """``rounded_sum``: row_sum_p16 += the tile's P as the PV MMA reads it (16-bit,
        rounded), so that O's numerator and its normaliser see the same numbers. ``p16``: the PV operand
        (tOrP) or P's 16-bit copy in the accumulator layout; ``rows``: ``p_rows`` for it.
        Call once per tile, after ``step`` of that tile and before ``step`` of the next (the
        PV MMA may be reading ``p16``: registers are only read here).

        Why: with ``lazy`` a row's top P is 2^delta (delta in (0, t]) instead of exactly 1, so
        its rounding no longer vanishes, and the fp32 sum over P before rounding disagrees
        with the rounded P that O sums (benchmarks/lazy_rescale_error.py; perf-notes round 12).

        P is read as the packed 32-bit words the MMA reads and widened in PTX that LLVM cannot
        look through (``widen_half``): reading the 16-bit values let LLVM pack the operand
        words late, between the PV wgmmas, and ptxas then put a warpgroup.arrive before each."""
        words = cute.recast_tensor(p16, Int32)
        assert cute.size(words) * 2 == len(rows)
        terms = [[] for _ in range(self.num_rows)]
        for j in cutlass.range_constexpr(cute.size(words)):
            assert rows[2 * j] == rows[2 * j + 1], "a packed word holds two columns of one row"
            w = words[j]
            terms[rows[2 * j]].append(widen_half(w, p16.element_type, high=False))
            terms[rows[2 * j]].append(widen_half(w, p16.element_type, high=True))
        for r in cutlass.range_constexpr(self.num_rows):
            self.row_sum_p16[r] = self.row_sum_p16[r] + _tree_sum(terms[r])

    @cute.jit
    def any_moved(self, row_scale: cute.Tensor) -> cutlass.Boolean:
        """Whether any row of this warp got an alpha other than 1 in the last ``step``: a
        warp-uniform answer, so the O multiply it guards does not diverge."""
        product = Float32(1.0)  # every alpha is in [0, 1]: the product is 1 only if each is
        for r in cutlass.range_constexpr(self.num_rows):
            product = product * row_scale[r]
        return cute.arch.vote_any_sync(product != Float32(1.0))

    @cute.jit
    def finalize(self, row_scale: cute.Tensor, lse: cute.Tensor, scale: float):
        """row_scale[r] <- 1 / l (1 where l is 0 or NaN), lse[r] <- m * scale + ln l
        (softcap: (m + log2 l) ln 2, m in log2 units; -inf where l is 0 or NaN). Reduces
        the partial sums across the quad first. ``rounded_sum``: 1 / l of the rounded P's
        sum, the LSE from the fp32 one."""
        for r in cutlass.range_constexpr(self.num_rows):
            l = common.quad_allreduce(self.row_sum[r], common.fadd)
            self.row_sum[r] = l
            l_o = l
            if const_expr(self.rounded_sum):
                l_o = common.quad_allreduce(self.row_sum_p16[r], common.fadd)
            degenerate = l == Float32(0.0) or l != l
            inv = Float32(1.0)
            out = Float32(-math.inf)
            if not degenerate:
                inv = cute.arch.rcp_approx(l_o)
                if const_expr(self.softcap is not None):
                    out = (self.row_max[r] + cute.math.log2(l, fastmath=True)) * LN2
                else:
                    out = (self.row_max[r] * (scale * math.log2(math.e)) + cute.math.log2(l, fastmath=True)) * LN2
            row_scale[r] = inv
            lse[r] = out


_WIDEN_PTX = {
    # bf16 is fp32's top half: shift or mask, exact for every value
    ("bf16", False): "{ .reg .b32 t; shl.b32 t, $1, 16; mov.b32 $0, t; }",
    ("bf16", True): "{ .reg .b32 t; and.b32 t, $1, 0xFFFF0000; mov.b32 $0, t; }",
    # fp16: the hardware conversion of one half (exact, subnormals included)
    ("fp16", False): "{ .reg .b16 l, h; mov.b32 {l, h}, $1; cvt.f32.f16 $0, l; }",
    ("fp16", True): "{ .reg .b16 l, h; mov.b32 {l, h}, $1; cvt.f32.f16 $0, h; }",
}


@dsl_user_op
def widen_half(word: Int32, dtype, high: bool, *, loc=None, ip=None) -> Float32:
    """One 16-bit half (low or ``high``) of a packed word as fp32, exactly, in inline PTX."""
    kind = "bf16" if dtype is cutlass.BFloat16 else "fp16"
    assert dtype in (cutlass.BFloat16, cutlass.Float16), dtype
    out = llvm.inline_asm(
        Float32.mlir_type, [Int32(word).ir_value(loc=loc, ip=ip)], _WIDEN_PTX[kind, high], "=f,r",
        has_side_effects=False, is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip,
    )
    return Float32(out)


def _tree_sum(terms: list):
    """Sum in a pairwise tree (a short dependency chain). Plain Python, unrolled at trace time:
    inside a @cute.jit body the DSL would turn the loop into device control flow."""
    while len(terms) > 1:
        terms = [terms[j] + terms[j + 1] if j + 1 < len(terms) else terms[j] for j in range(0, len(terms), 2)]
    return terms[0]


@cute.jit
def rescale_rows(acc: cute.Tensor, row_scale: cute.Tensor):
    """acc[row, :] *= row_scale[row] for a Hopper accumulator (O)."""
    acc_mn = common.acc_row_view(acc)
    for r in cutlass.range_constexpr(cute.size(acc_mn, mode=[0])):
        acc_mn[r, None].store(acc_mn[r, None].load() * row_scale[r])


@cute.jit
def cap_logits(
    acc_S: cute.Tensor,
    k_in: cutlass.Constexpr[float],
    k_out: cutlass.Constexpr[float],
    keep_neg_inf: cutlass.Constexpr[bool],
):
    """acc_S[i] <- k_out tanh(acc_S[i] k_in / (2 log2 e)) in place, as
    k_out - 2 k_out / (1 + 2^(acc_S[i] k_in)) (ex2 + rcp, see the module docstring).
    ``keep_neg_inf``: an element that was -inf (masked) stays -inf (else it becomes -k_out)."""
    for i in cutlass.range_constexpr(cute.size(acc_S)):
        x = acc_S[i]
        e = cute.math.exp2(x * Float32(k_in), fastmath=True)
        t = cute.arch.rcp_approx(e + Float32(1.0)) * Float32(-2.0 * k_out) + Float32(k_out)
        if const_expr(keep_neg_inf):
            acc_S[i] = x if x == Float32(-math.inf) else t
        else:
            acc_S[i] = t


def softcap_constants(scale: float, softcap: float, bug: str = "none") -> tuple[float, float]:
    """(k_in, k_out) of ``cap_logits`` for the softmax (log2 units): k_in = 2 scale log2(e) / c,
    k_out = c log2(e). ``bug="before_scale"`` (wb's ``softcap_bug`` variant, deliberately
    wrong): the cap applied to the raw S, then the scale: c scale log2(e) tanh(S / c)."""
    log2e = math.log2(math.e)
    if bug == "before_scale":
        return 2.0 * log2e / softcap, softcap * scale * log2e
    assert bug == "none", bug
    return 2.0 * scale * log2e / softcap, softcap * log2e


def dtype_bits(dtype: Type[cutlass.Numeric]) -> int:
    return dtype.width
