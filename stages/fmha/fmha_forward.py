"""Stage D's kernel, ``FmhaForward``: full FMHA forward on Hopper: (batch, seqlen, heads, d), causal, windows,
GQA, tails, varlen, paged KV. The wb stage that launches it is stage_d_fmha.py.

Shapes (flash-attn layout): q (batch, m, heads, d), k and v (batch, n, kv_heads, d) (v and o
with ``dv`` < d: (.., dv); V tiles, the PV MMA, O's tiles and stores at dv; 192/128 verified on an H200), all
with d contiguous; o like q; lse (batch, heads, m) fp32 = logsumexp(S * scale) per row.
scale = 1/sqrt(d), d in {64, 96, 128, 192, 256}, heads a multiple of kv_heads (GQA: q head h
reads kv head h // (heads / kv_heads)), any m, n >= 1.

Head dims (``geometry.geometry``, one table for the kernel, the fixtures and the mutants):
KV tiles of ``tile_n`` = 128 keys (144 for d = 96 non-causal, 112 for d = 192 unless dv <= 128, 80 for
d = 256), K/V rings of 3 stages (d = 64, causal 96) or 2, 192-row Q tiles for d = 64 and 96
non-causal (96 with P through shared memory, ``p_smem``: stmatrix into a (64, tile_n) tile per
WG, read by descriptor, and O staged in Q), and for d = 192 and 256 the O epilogue staged in the consumer WG's own Q
slot (``o_in_q``: without it they do not fit 227 KiB; the slot is handed back to the
producer only after the O store has read it, so a persistent CTA loads the next tile's Q
after this tile's epilogue, its first K before). d = 64 and 128 are tuned on an H200, d = 96
and 192/128's tiles measured there (docs/perf-notes.md, round 6); d = 192 and 256's tile
shapes and the persistent / q_buffers / kv_stages ``auto`` choices, the same rules as d = 128,
are chosen on the CPU by fitting (shared memory, 0 spills in ``wb compile``).

It is stage C's kernel grown to the full problem: both subclass ``fmha_base.FmhaForwardBase``
(same warp-specialized CTA, same pipelines, same per-tile consumer step, same epilogue).

* Work tiles: one per (Q tile of 64 x consumer-WG rows, head, batch), numbered with the
  Q tile fastest or longest-first when causal; ``tile_scheduler`` hands them out, the
  same scheduler driving the producer warp and the consumer WGs. Persistent (the default,
  but for d = 256 non-causal with a window, paging or dv < d: ``tile_scheduler.persistence``):
  one CTA per SM walks the tiles -- every gridDim-th one (``StaticPersistent``), or the next
  one from a global counter (``persistent=dynamic``, the default when causal or varlen, at
  d = 96 and 128, and at d = 192 and 256 without those, ``DynamicCounter``: the producer warp
  takes it and posts it to the consumers through a 2-slot smem ring) -- so the next tile's K,
  Q and V loads overlap this tile's
  last PV and epilogue; with ``persistent=off`` (``SingleTile``) each CTA of a 1-D
  grid does one tile. TMA descriptors are built over (seq, d, head, batch) views of the
  tensors, so a box that runs past m (or n) is clipped by TMA at that head's end: loads
  zero-fill the rows past the end (the mbarrier still receives the full box's bytes),
  stores drop them.
* Tails: Q rows >= m are computed on zero rows and never stored (TMA store clipping; LSE
  stores are predicated; a consumer WG whose 64 rows all lie past m skips its store). KV
  columns >= n are masked to -inf before the softmax.
* Masks (``mask``, compiled in): ``align`` top_left (default; torch SDPA ``is_causal``,
  offset 0) or bottom_right (flash-attn's, offset n - m), ``window_left`` and
  ``window_right`` (-1 unbounded): query i sees key j < n iff j >= i + offset -
  window_left and j <= i + offset + window_right; ``causal`` is window_right = 0 (top-left
  causal: query i sees keys j <= i, also when m != n). Rows that see no key: O = 0,
  LSE = -inf. KV tiles no row of the Q tile sees are not loaded at all
  (``mask.kv_tile_range``: producer and consumers walk the same n_min .. n_max - 1, at
  least one tile, fully masked when the Q tile sees nothing).
* KV order: tiles are visited from the last needed one (n_max - 1) down to n_min. The
  first visits can need the upper mask (KV tail, causal diagonal or right window: one
  tile when tile_m = tile_n, causal with tile_m != tile_n the first few: two for 192-row Q
  tiles on 128-key tiles, up to three for 128-row Q tiles on 80-key tiles) and, with a left window,
  the last visits the left one (``mask.mask_steps``): the mask is applied on those steps
  only and the steady-state loop in between runs mask-free. ``mask_bug`` (variant)
  injects two mask bugs on purpose (mask.BUGS).
* Softcap (Gemma 2; flash-attn's ``softcap``), parameter ``softcap`` = c >= 0, compile-time
  (0 = off: the kernel is the one without it, PTX identical): each logit s = scale (q . k)
  becomes c tanh(s / c) before the mask and the softmax, so P = softmax(c tanh(s / c)) and
  LSE = logsumexp(c tanh(s / c)) per row. ``softmax.OnlineSoftmax.step`` folds the scale
  into the tanh and works in log2 units, L = c log2(e) tanh(S scale / c) (S = q . k raw),
  P = 2^(L - max L), with tanh from one ex2 and one rcp (``softmax.cap_logits``: ~1e-5
  absolute; tanh.approx.f32 would miss LSE's 1e-4 by far); masked keys stay -inf (a select
  on the masked tiles only). softmax=identity: P = c tanh(s / c) (masked: 0). Bug
  injection ``softcap_bug=before_scale``: c scale tanh(q . k / c) (mutant
  "softcap-before-scale").
* Varlen (``varlen=true``, compile-time; flash-attn's varlen API): q (total_q, heads, d),
  k and v (total_k, kv_heads, d), o like q, lse (heads, total_q), plus ``cu_seqlens_q/k``
  (int32, batch + 1). Work tiles are (entry, head) over a tile table (``varlen_tile_table``,
  built on the device from cu_seqlens, no host sync): one entry per (sequence, Q tile) that
  has rows, longest first (keys it sees), then no-work entries up to total_q // tile_m +
  batch; the dynamic scheduler hands them out (greedy longest-first across very unequal
  sequences). An entry whose sequence has no keys, or a padding one, loads and computes
  nothing (``tile_has_work``: both warp roles read the same two cu_seqlens entries, so no
  pipeline or Q phase moves for it).
  The TMA loads address the packed (total, d, heads) views at the sequence's offset
  (``cute.domain_offset``), so a box running past the sequence's end reads the next
  sequence's rows: those keys are masked by the sequence's own length (``apply_mask``), those
  Q rows compute garbage that is never stored -- a WG's O goes by one TMA store when its
  64-row box lies inside the sequence, else (the sequence's last rows) from registers to
  global memory in 32-bit column pairs, each row predicated (``store_o_rows``; the box would
  overwrite the next sequence's first rows); LSE always row by row. A sequence with no keys gets
  O = 0 and LSE = -inf (0 with softmax=identity); one with no queries gets nothing. The
  launch is sync-free (the table is built by torch ops on the device, and cached on
  cu_seqlens_q per version of both cu_seqlens). ``varlen_bug`` injects the
  bugs of the varlen mutants (tests/test_varlen_gpu.py). varlen=false builds exactly today's
  kernel (the same SASS).
* Paged KV (``page_size`` > 0, compile-time; verified on an H200 at 16, 32, 64, 128 and 256): k, v are caches
  (num_pages, page_size, kv_heads, d) read through ``block_table`` (batch, pages per
  sequence) int32; sequence b has ``cache_seqlens[b]`` keys (0 ... the table's pages; read per
  work tile by both roles, ``paged_seqlen``; none: one fully masked visit). The producer
  reads each KV tile's table entry (``load_paged_tile``) and TMAs one (tile_n, d) box at
  (page, row offset) of the cache's (page_size, d, kv_heads, num_pages) view when page_size
  is a multiple of tile_n (128/256 for d <= 128); when it divides tile_n (16/32/64; 16 for
  d = 192/256) one (page_size, d) box per page into that page's rows of the stage
  (``page_rows``). Other sizes are refused. With varlen (packed queries over the pages) the
  varlen path runs with these loads, its cu_seqlens_k made from cache_seqlens by the launch.
  ``paged_bug`` injects the paged mutants' bugs. page_size=0 builds exactly today's kernel.
* Warp specialization as C: WG0 producer (one warp issues the TMA: K of the first tile,
  Q, then the K/V ring), 2 consumer WGs (setmaxnreg 240/24) or 3 (``consumers=3``,
  192-row Q tiles, 160/32: the default for d=64 non-causal) of 64 rows each; K and V rings
  of 2 or 3 stages (see head dims above); no global round trip and no synchronous load in
  the main loop.

Variants (kernel.yaml; ``auto`` resolves to what measured fastest on an H200,
docs/perf-notes.md): ``softmax=exp|identity`` (identity: O = masked (Q K^T scale) V,
masked logits contribute 0; LSE written as 0); ``consumers``, ``tile_order``,
``persistent``, ``kv_stages``, ``kv_load``, ``k_release``, ``o_rescale``, ``p_sync``
(``hand_over_p``; see the constants below); and ``schedule``, the consumer's per-tile order (auto: pingpong):

* ``serial`` (the first verified kernel): per tile S = QK^T, wait, softmax, O += PV,
  wait (the base's ``consume_tile``, stage C's step): a WG's tensor-core work idles during its softmax.
* ``overlap`` (intra-warpgroup overlap, the technique of FlashAttention-3): the first
  (masked) tile's S and softmax are peeled; then per tile i the consumer issues
  S_i = Q K_i^T and O += P_{i-1} V_{i-1} (two WGMMA commit groups), waits only for the
  first group (``wait_group(1)``), releases K_i, runs the softmax of S_i while the PV MMA
  runs, waits for the PV group, converts P_i and rescales O by alpha_i. A last PV (P of
  the final tile) closes the loop. Registers: one S accumulator (64 fp32), P (32 x
  32-bit) and O (d/2 fp32) live at once -- the same set as ``serial``, provided each step
  makes a fresh S tensor (``overlap_tile``). Math identical to
  ``serial`` (O_t = alpha_t O_{t-1} + P_t V_t; only the moment of the multiply moves).
  ``k_release=pinned`` / ``o_rescale=mid`` give the round-1 order (see ``overlap_tile``).
* ``pingpong``: ``overlap`` plus FA3's warp-scheduler barriers between the consumer WGs
  (named barriers from ``SCHED_BARRIER_BASE``, round robin): a WG issues its tile's two
  MMAs only after the previous WG issued its own, so one WG's softmax tends to run while
  another's MMAs run. Every barrier arrive is matched by a sync (no arrival is left
  pending at exit).
"""

import math
from functools import partial
from typing import Type

import cutlass
import cutlass.cute as cute
import cutlass.memory
import cutlass.pipeline as pipeline
from cutlass import Float32, Int32, const_expr
from cutlass._mlir.dialects import llvm
from cutlass.cute.nvgpu import warpgroup
from cutlass.cutlass_dsl import T, dsl_user_op

from stages.fmha import common, geometry
from stages.fmha import mask as mk
from stages.fmha import softmax as sm
from stages.fmha import short_tile as short_tile_mod
from stages.fmha import split_kv
from stages.fmha import tile_scheduler as ts
from stages.fmha.trace import TRACE_LANES, TRACE_TILES, TRACED_STEP, trace_clock_word, trace_word
from stages.fmha.fmha_base import FmhaForwardBase, trace_print
from workbench.compile.probe import probe


#: paged KV: the page sizes (0 = off)
PAGE_SIZES = (0, 16, 32, 64, 128, 256)

#: paged bug injections: none, or the bug of the mutant paged-<name with - for _>
PAGED_BUGS = ("none", "page_off_by_one", "offset_ignored", "batch0_table", "first_length")

#: varlen bug injections: none; next_offset = Q/K/V loaded from sequence b + 1's start;
#: tail_unmasked = keys masked at the 128-key tile end, not at the sequence's length;
#: first_length = every sequence given sequence 0's lengths
VARLEN_BUGS = ("none", "next_offset", "tail_unmasked", "first_length")

#: registers per thread (consumer, producer) by consumer WG count: 64K registers per SM
REGISTERS = {2: (240, 24), 3: (160, 32)}
MAX_CONSUMER_WG = max(REGISTERS)
#: named barrier ids of the pingpong schedule (0: CTA barrier, 1..3: the epilogue's per-WG barrier)
SCHED_BARRIER_BASE = 1 + MAX_CONSUMER_WG
#: named barrier id of short_tile=split's meetings of the consumer WGs around the partials' scratch
SHARED_ROWS_BARRIER = SCHED_BARRIER_BASE + MAX_CONSUMER_WG
#: short_tile's choices: whole = the short tile as any other, split = its KV tiles shared by the WGs
SHORT_TILES = ("auto", "whole", "split")
#: lazy_rescale=on: a row's running max moves only when a tile's exceeds it by more than this
#: (log2 units, FlashAttention-4's threshold on Blackwell): P stays below 2^8, fine in bf16/fp16
LAZY_RESCALE_LOG2 = 8.0
# ``trace=True`` (wb run --trace, benchmarks/trace_tiles.py): the buffer layout is
# stages/fmha/trace.py's (TRACE_EVENTS stamps per CTA, lane and work tile, then the clocks)
assert TRACE_LANES == 1 + MAX_CONSUMER_WG, "stages/fmha/trace.py lays out one producer and MAX_CONSUMER_WG consumer lanes"


def no_stamp(event):
    """The stamp of an untraced kernel: nothing."""


def no_release():
    """``consume_overlap``'s Q release when O is staged in Q (``o_in_q``): none there, the
    epilogue releases the slot after the O store has read it."""


@dsl_user_op
def f32_bits(x: Float32, *, loc=None, ip=None) -> Int32:
    """The bits of an fp32 value as Int32 (no conversion)."""
    return Int32(llvm.bitcast(T.i32(), Float32(x).ir_value(loc=loc, ip=ip), loc=loc, ip=ip))


@cute.jit
def wgmma_issue(
    tiled_mma: cute.TiledMma,
    acc: cute.Tensor,
    tCrA: cute.Tensor,
    tCrB: cute.Tensor,
    zero_init: cutlass.Constexpr[bool],
):
    """acc (=|+=) A @ B over all k blocks: fence -> MMAs -> commit, *no wait* (the caller
    waits with ``warpgroup.wait_group``). The fence orders earlier register writes of acc
    and of a register-sourced A before the async MMAs."""
    warpgroup.fence()
    atom = cute.make_mma_atom(tiled_mma.op)
    atom.set(warpgroup.Field.ACCUMULATE, not zero_init)
    for k in cutlass.range_constexpr(cute.size(tCrA, mode=[2])):
        cute.gemm(atom, acc, tCrA[None, None, k], tCrB[None, None, k], acc)
        atom.set(warpgroup.Field.ACCUMULATE, True)
    warpgroup.commit_group()


def seq_d_head_batch(t: cute.Tensor) -> cute.Tensor:
    """(batch, seq, heads, d) -> (seq, d, heads, batch) view (no data movement)."""
    return cute.make_tensor(t.iterator, cute.select(t.layout, mode=[1, 3, 2, 0]))


def seq_d_head(t: cute.Tensor) -> cute.Tensor:
    """varlen: (total, heads, d) -> (total, d, heads) view (no data movement)."""
    return cute.make_tensor(t.iterator, cute.select(t.layout, mode=[0, 2, 1]))


@cute.jit
def seq_span(cu_seqlens: cute.Tensor, batch: Int32):
    """(first row, length) of sequence ``batch`` of a packed tensor (cu_seqlens[batch],
    cu_seqlens[batch + 1] - cu_seqlens[batch])."""
    start = cu_seqlens[batch]
    return start, cu_seqlens[batch + 1] - start


class FmhaForward(FmhaForwardBase):
    """Stage D kernel (see the module docstring)."""

    def __init__(
        self,
        dtype: Type[cutlass.Numeric],
        d: int,
        heads: int,
        kv_heads: int,
        *,
        causal: bool = False,
        align: str = "top_left",
        window_left: int = -1,
        window_right: int = -1,
        mask_bug: str = "none",
        softmax: str = "exp",
        kv_stages=None,
        kv_tile: int | None = None,
        p_operand: str = "auto",
        p_sync: str = "auto",
        lazy_rescale: str = "auto",
        row_sum: str = "fp32",
        sum_init: str = "auto",
        o_staging: str = "auto",
        schedule: str = "auto",
        consumers: int | None = None,
        tile_order: str = "auto",
        o_rescale: str = "end",
        kv_load: str = "paired",
        k_release: str = "early",
        persistent: str | None = None,
        q_buffers: int = 1,
        softcap: float = 0.0,
        softcap_bug: str = "none",
        trace: bool = False,
        varlen: bool = False,
        varlen_bug: str = "none",
        page_size: int = 0,
        paged_bug: str = "none",
        dv: int | None = None,
        split_tail: str = "auto",
        short_tile: str = "auto",
        cluster: int = 1,
    ):
        # What ``auto`` means (kernel.yaml lists the choices; docs/perf-notes.md the measurements).
        # The tile shape (KV tile, ring depth, consumer WGs, O staged in Q, P through shared
        # memory) is ``geometry.tiles``, its table and reasons in stages/fmha/geometry.py.
        # schedule: pingpong (with 3 consumer WGs it fits 160 registers only with a fresh S
        # accumulator per step, see ``overlap_tile``). persistent: ts.persistence.
        # tile_order: lpt when causal. lazy_rescale: on when dv = 256. sum_init: alpha with 3 consumer WGs.
        windowed, paged = window_left >= 0 or window_right >= 0, int(page_size) > 0
        capped_window = float(softcap) > 0 and windowed
        if schedule == "auto":
            schedule = "pingpong"
        # every auto of the tile shape resolved, and a combination that cannot be built refused
        # in one line (ValueError): geometry.tiles
        geom = geometry.tiles(
            d, causal=causal, capped_window=capped_window, dv=dv, paged=paged, softcap=float(softcap) > 0, schedule=schedule,
            consumers=consumers, kv_tile=kv_tile, kv_stages=kv_stages, p_operand=p_operand, o_staging=o_staging,
            q_buffers=q_buffers, elem_bytes=dtype.width // 8,
        )
        consumers, tile_n, kv_stages, o_in_q, p_smem = geom.consumers, geom.tile_n, geom.kv_stages, geom.o_in_q, geom.p_smem
        dv = d if dv is None else int(dv)
        assert consumers in REGISTERS, consumers
        # instance attributes shadow the base's class-level 2-WG geometry
        self.num_consumer_wg = consumers
        self.tile_m = consumers * self.wg_rows
        self.tile_n = tile_n
        self.o_in_q = o_in_q
        self.p_smem = p_smem
        # p_sync: the WG's barrier after P's store (wg) or the warp's own (warp). auto: warp in d = 96
        # non-causal's 192-row tile (H100, timed in turn: fp16 x0.98 -> x1.00-1.02 of FA4; on varlen,
        # paged and windowed launches equal or +1-5 %), wg in the other kernels with P in shared memory
        # (d = 128's and causal d = 96's 192-row ones: equal or -1-2 %): perf-notes rounds 27 and 28
        self.p_sync = ("warp" if p_smem and dv == 96 and not causal else "wg") if p_sync == "auto" else p_sync
        # lazy_rescale: on where O is 256 wide (its rescale is 128 FMULs per thread per KV tile;
        # +3-4% at d = 256 on an H200, a wash at d = 128: docs/perf-notes.md rounds 8 and 10)
        self.lazy_rescale = lazy_rescale == "on" or (lazy_rescale == "auto" and dv == 256)
        # row_sum=rounded: O is normalised by a second sum, of P as rounded for the PV MMA (with
        # lazy_rescale the top P is not exactly 1, so the fp32 sum and O's numerator disagree by
        # its rounding: perf-notes round 12); the LSE keeps the fp32 sum
        self.rounded_sum = row_sum == "rounded"
        # sum_init=alpha: a tile's row sum starts from alpha l (FlashAttention-4's order), so
        # alpha's exp2 and O *= alpha issue among the P exps, not after them. auto: alpha in the
        # 192-row kernels of 3 consumer WGs (d = 64 and 96; H100: +0-4 %), zero in the 128-row ones
        # (d = 128 non-causal -3 %, d = 64 causal s 1024 -1-2 %, a wash at 192 / 256): perf-notes round 15
        self.sum_from_alpha = sum_init == "alpha" or (sum_init == "auto" and consumers == 3)
        self.num_threads = common.WG_THREADS * (1 + consumers)
        self.consumer_regs, self.producer_regs = REGISTERS[consumers]
        super().__init__(dtype, d, softmax=softmax, kv_stages=kv_stages, dv=dv)
        self.schedule = schedule
        self.o_rescale = o_rescale
        self.kv_load = kv_load
        self.k_release = k_release
        # cluster=2: two CTAs on neighbouring Q tiles of a (batch, head) share each K and V
        # tile (each loads half and multicasts it; FlashAttention-3's cluster at d >= 128
        # non-causal): they must visit the same KV tiles in step, so no mask that depends on
        # the Q tile, fixed lengths, and a scheduler that hands a cluster's CTAs neighbouring
        # tiles (round robin over an even grid: auto is on; one CTA per tile: off)
        cluster = int(cluster)
        if cluster not in (1, 2):
            raise ValueError(f"cluster must be 1 or 2, not {cluster}")
        if cluster > 1:
            cluster_why = [
                reason for reason, bad in (
                    ("no causal mask or window", causal or windowed), ("fixed lengths (not varlen)", varlen),
                    ("no paged KV", paged), ("persistent=on or off", persistent == "dynamic"), ("no --trace", trace),
                ) if bad
            ]
            if cluster_why:
                raise ValueError(f"cluster={cluster} needs " + ", ".join(cluster_why))
            if persistent is None:
                persistent = "on"
        self.cluster_m = cluster
        # varlen: dynamic too (its tiles differ in work as much as the sequences in length)
        if persistent is None:
            persistent = ts.persistence(d, causal, varlen, windowed=windowed, paged=paged, dv=dv)
        self.persistent = persistent != "off"
        self.dynamic = persistent == "dynamic"
        self.lpt = tile_order == "lpt" or (tile_order == "auto" and causal)
        # round robin over the natural order: tile coordinates advance without division
        self.walk = self.persistent and not self.dynamic and not self.lpt
        # the mask (mask.py): alignment and window as compile-time constants; causal is
        # window_right = 0. two_masked: more than the first visit may need the upper mask
        # (causal 192-row Q tiles: two; bottom-right or a right window: the tiles the edge
        # crosses); left_masked: the last visits need the left-window mask
        self.mask = mk.MaskSpec.make(self.tile_m, self.tile_n, causal, align, window_left, window_right, mask_bug)
        self.two_masked = self.mask.upper_loop
        self.left_masked = self.mask.lower_loop
        # q_buffers=2: a second Q buffer lets the producer load the next work tile's Q
        # while this one's last steps run (persistent CTAs only; costs a Q tile of smem)
        self.q_stages = q_buffers * self.num_consumer_wg
        if kv_heads < 1 or heads % kv_heads:
            raise ValueError(f"kv_heads={kv_heads} must divide heads={heads} (GQA: each K/V head serves heads / kv_heads query heads)")
        self.heads = heads
        self.kv_heads = kv_heads
        self.qhead_per_kvhead = heads // kv_heads
        self.causal = causal
        self.mask_fill = -math.inf if self.is_exp else 0.0
        # softcap c (Gemma 2): logits s = S scale become c tanh(s / c) before the mask and the
        # softmax, compile-time (softmax.cap_logits); 0 = off, the kernel unchanged
        softcap = float(softcap)
        if not softcap >= 0.0:
            raise ValueError(f"softcap must be >= 0 (0 = off), not {softcap}")
        if softcap_bug != "none" and not softcap:
            raise ValueError(f"softcap_bug={softcap_bug} needs softcap > 0")
        self.softcap = softcap
        self.softcap_bug = softcap_bug
        self.trace = trace
        # varlen: packed (total, heads, d) tensors with cu_seqlens (``__call__``); O is stored
        # from registers with a per-row predicate (a TMA box would write the next sequence's rows)
        self.varlen = varlen
        # varlen bug injections (wb variant varlen_bug; tests/test_varlen_gpu.py): none, or the
        # bug of the mutant of the same name (stages/fmha/mutants.py, varlen-*)
        assert varlen_bug in VARLEN_BUGS and (varlen or varlen_bug == "none"), (varlen, varlen_bug)
        self.varlen_bug = varlen_bug
        # paged KV (page_size > 0, compile-time; verified on an H200 at every size): k/v are caches
        # (num_pages, page_size, kv_heads, d) addressed through a block table (batch,
        # max_pages_per_seq) int32, sequence b's KV length cache_seqlens[b]. One TMA box per KV tile
        # at (page, row offset in the page) when page_size is a multiple of tile_n; one box per
        # page into its rows of the tile when page_size divides tile_n (16/32/64)
        page_size = int(page_size)
        if page_size not in PAGE_SIZES:
            raise ValueError(f"page_size must be one of {PAGE_SIZES} (0 = off), not {page_size}")
        if page_size and page_size % self.tile_n and self.tile_n % page_size:
            raise ValueError(
                f"page_size={page_size} neither divides nor is a multiple of d={d}'s {self.tile_n}-key KV tile"
            )
        self.page_size = page_size
        # paged bug injections (wb variant paged_bug; tests/test_paged_gpu.py): none, or the bug
        # of the mutant of the same name (stages/fmha/mutants.py, paged-*)
        if paged_bug not in PAGED_BUGS:
            raise ValueError(f"paged_bug must be one of {PAGED_BUGS}, not {paged_bug}")
        if paged_bug != "none" and not page_size:
            raise ValueError(f"paged_bug={paged_bug} needs page_size > 0")
        if paged_bug == "first_length" and varlen:
            raise ValueError("paged_bug=first_length needs varlen=false (with varlen the lengths come from cu_seqlens)")
        if paged_bug == "offset_ignored" and page_size < self.tile_n:
            raise ValueError(f"paged_bug=offset_ignored needs pages of whole KV tiles (page_size={page_size} < {self.tile_n}: no offset in a page)")
        self.paged_bug = paged_bug
        # split_tail: the last partial wave's work tiles cut along the keys (split_kv; the dynamic
        # scheduler hands out the pieces; fixed-length, no causal mask or window). auto: on wherever
        # it can be (H100, batch 1 at s = 4096: d = 128 with 5 heads and d = 96 with 7 +33 %; +-0.5 %
        # on DESIGN.md's shapes; perf-notes round 18); never in the trace (its buffer is laid out
        # per CTA, not as the workspace); few: on, but a launch of split_kv.FEW_WAVES waves or more
        # cuts nothing
        # short_tile=split: a last Q tile whose real rows fit one consumer WG is shared by all of
        # them, each over every third KV tile (short_tile.py); auto: split wherever it can be (d = 64
        # non-causal, fixed lengths, no window; measured in round 22)
        if short_tile not in SHORT_TILES:
            raise ValueError(f"short_tile must be one of {', '.join(SHORT_TILES)}, not {short_tile}")
        scratch = geometry.smem_bytes(d, tile_n, kv_stages, consumers, q_buffers, o_in_q, dtype.width // 8, dv, p_smem)
        scratch += 4 * short_tile_mod.scratch_floats(consumers, dv)
        short_why = [
            reason for reason, bad in (
                ("3 consumer WGs", consumers != 3), ("as many K/V ring stages as consumer WGs", kv_stages != consumers),
                ("the overlap or pingpong schedule", schedule not in ("overlap", "pingpong")),
                ("k_release=early", k_release != "early"), ("o_rescale=end", o_rescale != "end"),
                ("no causal mask or window", self.mask.upper or self.mask.lower),
                ("fixed lengths (not varlen)", varlen), ("no paged KV", page_size), ("row_sum=fp32", self.rounded_sum),
                ("O staged in its own tile", o_in_q), ("P in registers", p_smem), ("no --trace", trace),
                (f"{scratch // 1024} KiB of shared memory with its scratch (a CTA has {geometry.SMEM_CAPACITY // 1024})",
                 scratch > geometry.SMEM_CAPACITY),
            ) if bad
        ]
        if short_tile == "split" and short_why:
            raise ValueError("short_tile=split needs " + ", ".join(short_why))
        self.short_split = (short_tile == "split" or (short_tile == "auto" and self.dynamic)) and not short_why
        if split_tail not in ("auto", "off", "on", "few"):
            raise ValueError(f"split_tail must be auto, off, on or few, not {split_tail}")
        why = [
            reason for reason, bad in (
                ("persistent=dynamic", not self.dynamic), ("no causal mask or window", self.mask.upper or self.mask.lower),
                ("fixed lengths (not varlen)", varlen), ("no paged KV", page_size), ("row_sum=fp32", self.rounded_sum),
                ("short_tile=whole", self.short_split),
            ) if bad
        ]
        if split_tail in ("on", "few") and why:
            raise ValueError(f"split_tail={split_tail} needs " + ", ".join(why))
        self.split_tail = split_tail != "off" and not why and not trace
        # auto at d >= 192 is few (H100: +30-33 % at batch 1 with 5 heads, s = 8192 within 1 % of the
        # old default; round 21)
        few = split_tail == "few" or (split_tail == "auto" and d >= 192)
        self.split_max_waves = split_kv.FEW_WAVES if few else 0

    def __str__(self) -> str:
        # the DSL names a kernel after str(self) and its arguments: with the tile shape in it,
        # the builds of one configuration (geometry.long_kernels) get kernel names of their own, and
        # ptxas's report, the cubins and a profiler tell them apart
        # (and the round-robin scheduler's: non-causal d = 64's two builds share a tile)
        return (f"{type(self).__module__}.{type(self).__name__}_{self.tile_m}x{self.tile_n}" + ("_rr" if self.walk else "")
                + (f"_c{self.cluster_m}" if self.cluster_m > 1 else ""))

    @cute.jit
    def __call__(
        self,
        mQ: cute.Tensor,  # (batch, m, heads, d)
        mK: cute.Tensor,  # (batch, n, kv_heads, d)
        mV: cute.Tensor,  # (batch, n, kv_heads, d)
        mO: cute.Tensor,  # (batch, m, heads, d)
        mLSE: cute.Tensor,  # (batch, heads, m)
        mTileCounter: cute.Tensor,  # (2,) int32 zeros, kept between launches (dynamic)
        max_ctas: Int32,  # persistent: CTAs to launch (the SM count); else unused
        stream,
        mCuSeqlensQ: cute.Tensor = None,  # varlen: (batch + 1,) int32 offsets into total_q
        mCuSeqlensK: cute.Tensor = None,  # varlen: (batch + 1,) int32 offsets into total_k
        mTileTable: cute.Tensor = None,  # varlen: (entries,) int32 work tiles, batch << 16 | m_block (varlen_tile_table)
        mBlockTable: cute.Tensor = None,  # paged: (batch, max_pages_per_seq) int32 page indices
        mCacheSeqlens: cute.Tensor = None,  # paged: (batch,) int32, the KV length of each sequence
    ):
        """Non-varlen: q (batch, m, heads, d), lse (batch, heads, m). varlen: q (total_q, heads, d),
        k, v (total_k, kv_heads, d), o like q, lse (heads, total_q), plus the cu_seqlens
        (sequence b is rows cu[b] .. cu[b + 1] - 1) and the tile table. Paged: k, v the caches
        and the block table, with cache_seqlens (fixed-length q) or cu_seqlens_k (varlen)."""
        extra = ()
        extra_kw = {}
        if const_expr(self.varlen):
            mQ, mO = seq_d_head(mQ), seq_d_head(mO)
            if const_expr(self.page_size > 0):  # packed queries over a paged cache
                mK, mV = seq_d_head_batch(mK), seq_d_head_batch(mV)
                extra_kw = {"mBlockTable": mBlockTable}
            else:
                mK, mV = seq_d_head(mK), seq_d_head(mV)
            tmas, mmas, layouts = self._host_setup(mQ, mK, mV, mO)
            tmas = self.page_tmas(tmas, mK, mV, layouts)
            num_tiles = cute.size(mTileTable, mode=[0]) * cute.size(mQ, mode=[2])
            # O: by TMA where a WG's 64-row box lies inside its sequence, else from registers
            # (store_o_rows) into the plain packed tensor
            extra = (mCuSeqlensQ, mCuSeqlensK, mTileTable, mO)
        elif const_expr(self.page_size > 0):
            # k/v caches (num_pages, page_size, kv_heads, d) -> (page_size, d, kv_heads, num_pages)
            mQ, mK, mV, mO = [seq_d_head_batch(t) for t in (mQ, mK, mV, mO)]
            tmas, mmas, layouts = self._host_setup(mQ, mK, mV, mO)
            tmas = self.page_tmas(tmas, mK, mV, layouts)
            num_tiles = cute.ceil_div(cute.size(mQ, mode=[0]), self.tile_m) * cute.size(mQ, mode=[2]) * cute.size(mQ, mode=[3])
            extra_kw = {"mBlockTable": mBlockTable, "mCacheSeqlens": mCacheSeqlens}
        else:
            mQ, mK, mV, mO = [seq_d_head_batch(t) for t in (mQ, mK, mV, mO)]
            tmas, mmas, layouts = self._host_setup(mQ, mK, mV, mO)
            # one work tile = one Q tile of one (batch, head); a 1-D grid walks them (tile_scheduler)
            num_m = cute.ceil_div(cute.size(mQ, mode=[0]), self.tile_m)
            if const_expr(self.cluster_m > 1):
                # the Q tiles of a (batch, head) rounded up to whole clusters (ts.WorkTiles.create:
                # a tile past the rows loads its cluster's slices and stores nothing; cluster=2 is
                # fixed-length only), and the persistent grid whole clusters, at least one
                c = self.cluster_m
                num_m = (num_m + (c - 1)) // c * c
                max_ctas = cutlass.max(max_ctas // c * c, c)
            num_tiles = num_m * cute.size(mQ, mode=[2]) * cute.size(mQ, mode=[3])
        grid = (num_tiles, 1, 1)
        if const_expr(self.persistent):
            grid = (cutlass.min(num_tiles, max_ctas), 1, 1)
        launch = {"cluster": [self.cluster_m, 1, 1]} if const_expr(self.cluster_m > 1) else {}
        self.kernel(*tmas, mLSE, mTileCounter, *mmas, *layouts, *extra, **extra_kw).launch(
            grid=grid, block=[self.num_threads, 1, 1], stream=stream, min_blocks_per_mp=1, **launch
        )

    def page_tmas(self, tmas: tuple, mK: cute.Tensor, mV: cute.Tensor, layouts: tuple) -> tuple:
        """``_host_setup``'s TMA atoms, K's and V's replaced where pages are smaller than a KV
        tile: one box per page, into its rows of the tile (the K/V mbarriers still expect the
        whole tile's bytes)."""
        if const_expr(self.page_size == 0 or self.page_size >= self.tile_n):
            return tmas
        atom_k, tma_k = common.make_tma_load(mK, self.page_rows(layouts[1], self.d), (self.page_size, self.d))
        atom_v, tma_v = common.make_tma_load(mV, self.page_rows(layouts[2], self.dv), (self.page_size, self.dv))
        return tmas[:2] + (atom_k, tma_k, atom_v, tma_v) + tmas[6:]

    @cute.kernel
    def kernel(
        self,
        tma_atom_q: cute.CopyAtom,
        mQ: cute.Tensor,  # TMA coordinate tensor over (m, d, heads, batch)
        tma_atom_k: cute.CopyAtom,
        mK: cute.Tensor,  # (n, d, kv_heads, batch)
        tma_atom_v: cute.CopyAtom,
        mV: cute.Tensor,
        tma_atom_o: cute.CopyAtom,
        mO: cute.Tensor,  # (m, d, heads, batch)
        mLSE: cute.Tensor,  # (batch, heads, m)
        mTileCounter: cute.Tensor,  # (2,) int32: tiles handed out, CTAs done (dynamic; zero between launches)
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        sQ_layout: cute.ComposedLayout,
        sK_layout: cute.ComposedLayout,
        sV_layout: cute.ComposedLayout,
        sO_layout: cute.ComposedLayout,
        mCuSeqlensQ: cute.Tensor = None,  # varlen only
        mCuSeqlensK: cute.Tensor = None,
        mTileTable: cute.Tensor = None,  # varlen only
        mO_rows: cute.Tensor = None,  # varlen: the plain (total_q, d, heads) O, for predicated row stores
        mBlockTable: cute.Tensor = None,  # paged only
        mCacheSeqlens: cute.Tensor = None,  # paged only
    ):
        tidx, _, _ = cute.arch.thread_idx()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg_idx = cute.arch.make_warp_uniform(tidx // common.WG_THREADS)
        (pipeline_q, pipeline_k, pipeline_v, tile_pipe, tile_ids), (sQ, sK, sV, sO, sP, sPart) = self._prologue(
            warp_idx, (tma_atom_q, tma_atom_k, tma_atom_v, tma_atom_o), (sQ_layout, sK_layout, sV_layout, sO_layout)
        )

        # work tiles (tile_scheduler): blockIdx.x, then, when persistent, the next ones (a
        # CTA per SM walks them; the next tile's loads overlap this epilogue)
        cu = None
        if const_expr(self.varlen):
            cu = (mCuSeqlensQ, mCuSeqlensK)
            sched = ts.make_tile_scheduler(self, mQ, mK, mTileCounter, tile_pipe, tile_ids, table=mTileTable)
        elif const_expr(self.page_size > 0):
            # (the scheduler's n: the table's capacity, an upper bound of every sequence's)
            sched = ts.make_tile_scheduler(
                self, mQ, mK, mTileCounter, tile_pipe, tile_ids,
                shape=(mQ.shape[0], mBlockTable.shape[1] * self.page_size, mQ.shape[2], mQ.shape[3]),
            )
        elif const_expr(self.split_tail):
            # the last wave's tiles in pieces where the cost model gains and mTileCounter has room
            plan = partial(
                split_kv.plan, n_blocks=(mK.shape[0] + (self.tile_n - 1)) // self.tile_n, capacity=cute.size(mTileCounter),
                wgs=self.num_consumer_wg, slot=self.split_slot_words(), max_waves=self.split_max_waves,
            )
            sched = ts.make_tile_scheduler(self, mQ, mK, mTileCounter, tile_pipe, tile_ids, split=plan)
        else:
            sched = ts.make_tile_scheduler(self, mQ, mK, mTileCounter, tile_pipe, tile_ids)
        seqlen_q, seqlen_k = mQ.shape[0], mK.shape[0]  # (paged: each tile reads its sequence's, paged_seqlen)
        tile_step = sched.step
        if const_expr(self.trace):
            self.trace_clocks(mTileCounter, sched.first, tile_step, 0)
        tile, m_block, head, batch = sched.initial()
        load_tile = partial(
            self.produce_work_tile, tma_atom_q, tma_atom_k, tma_atom_v, mQ, mK, mV, sQ, sK, sV,
            pipeline_q, pipeline_k, pipeline_v, seqlen_k, cu=cu, block_table=mBlockTable, cache_seqlens=mCacheSeqlens,
        )
        if wg_idx == 0:
            cute.arch.setmaxregister_decrease(self.producer_regs)
            if warp_idx == 0:
                q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.q_stages)
                kv_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.kv_stages)
                if const_expr(sched.persistent):
                    tile_state = sched.ring_state(producer=True)
                    j = Int32(0)
                    while tile < sched.tiles:
                        m_block, head, batch = sched.current(tile, m_block, head, batch)
                        if const_expr(self.varlen):
                            if self.tile_has_work(cu, m_block, batch):
                                q_state, kv_state = load_tile(
                                    m_block, head, batch, q_state, kv_state, stamp=self.stamp_fn(mTileCounter, 0, j)
                                )
                        elif const_expr(self.split_tail):
                            q_state, kv_state = load_tile(
                                m_block, head, batch, q_state, kv_state, piece=self.piece_of(sched, tile)
                            )
                        else:
                            q_state, kv_state = load_tile(
                                m_block, head, batch, q_state, kv_state, stamp=self.stamp_fn(mTileCounter, 0, j)
                            )
                        j += 1
                        tile, m_block, head, batch, tile_state = sched.advance(
                            tile, m_block, head, batch, tile_state, producer=True
                        )
                    sched.done()
                else:
                    if const_expr(self.varlen):
                        if self.tile_has_work(cu, m_block, batch):
                            load_tile(m_block, head, batch, q_state, kv_state, stamp=self.stamp_fn(mTileCounter, 0, Int32(0)))
                    else:
                        q_state, kv_state = load_tile(
                            m_block, head, batch, q_state, kv_state, stamp=self.stamp_fn(mTileCounter, 0, Int32(0))
                        )
                if const_expr(self.cluster_m > 1):
                    # the peers' consumers release slots in this CTA's ring to the end: it
                    # stays until every slot is free (no arrive on an exited CTA's mbarrier)
                    pipeline_k.producer_tail(kv_state.clone())
                    pipeline_v.producer_tail(kv_state.clone())
        else:
            cute.arch.setmaxregister_increase(self.consumer_regs)
            regs = self.consumer_registers(tiled_mma_qk, tiled_mma_pv, sQ, sK, sV, tidx % common.WG_THREADS, sP, wg_idx - 1)
            kv_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.kv_stages)
            compute_tile = partial(
                self.consume_work_tile, tiled_mma_qk, tiled_mma_pv, tma_atom_o, mO, mLSE, sQ, sK, sV, sO,
                pipeline_q, pipeline_k, pipeline_v, regs, tidx, wg_idx - 1, seqlen_q, seqlen_k, cu=cu, mO_rows=mO_rows,
                scratch=sPart, cache_seqlens=mCacheSeqlens,
            )
            if const_expr(sched.persistent):
                # (a loop around the pinned/mid overlap step makes ptxas serialize d=128's
                # wgmma, C7512: persistent wants k_release=early, o_rescale=end)
                q_buf, q_phase = Int32(0), Int32(0)  # this tile's Q buffer and its phase
                tile_state = sched.ring_state(producer=False)
                j = Int32(0)
                while tile < sched.tiles:
                    m_block, head, batch = sched.current(tile, m_block, head, batch)
                    if const_expr(self.varlen):
                        # a Q tile past its sequence's end: nothing; a sequence without keys:
                        # O = 0 and LSE = -inf rows, no pipeline touched (as the producer skips it)
                        if self.tile_has_work(cu, m_block, batch):
                            kv_state = compute_tile(
                                m_block, head, batch, kv_state, q_buf, q_phase, stamp=self.stamp_fn(mTileCounter, wg_idx, j)
                            )
                            q_buf, q_phase = self.next_q_buffer(q_buf, q_phase)
                        else:
                            self.store_empty_rows(cu, mO_rows, mLSE, regs, tidx, wg_idx - 1, m_block, head, batch)
                    elif const_expr(self.split_tail):
                        kv_state = compute_tile(
                            m_block, head, batch, kv_state, q_buf, q_phase, piece=self.piece_of(sched, tile),
                            split_io=(mTileCounter, tile_ids),
                        )
                        q_buf, q_phase = self.next_q_buffer(q_buf, q_phase)
                    else:
                        kv_state = compute_tile(
                            m_block, head, batch, kv_state, q_buf, q_phase, stamp=self.stamp_fn(mTileCounter, wg_idx, j)
                        )
                        q_buf, q_phase = self.next_q_buffer(q_buf, q_phase)
                    j += 1
                    tile, m_block, head, batch, tile_state = sched.advance(
                        tile, m_block, head, batch, tile_state, producer=False
                    )
                if tidx % common.WG_THREADS < 32:
                    cute.arch.cp_async_bulk_wait_group(0, read=True)  # the last O store, before exit
            else:
                if const_expr(self.varlen):
                    if self.tile_has_work(cu, m_block, batch):
                        compute_tile(
                            m_block, head, batch, kv_state, Int32(0), Int32(0), stamp=self.stamp_fn(mTileCounter, wg_idx, Int32(0))
                        )
                    else:
                        self.store_empty_rows(cu, mO_rows, mLSE, regs, tidx, wg_idx - 1, m_block, head, batch)
                else:
                    compute_tile(
                        m_block, head, batch, kv_state, Int32(0), Int32(0), stamp=self.stamp_fn(mTileCounter, wg_idx, Int32(0))
                    )
            if const_expr(self.trace):
                if wg_idx == 1:
                    self.trace_clocks(mTileCounter, cute.arch.block_idx()[0], tile_step, 2)

    def split_slot_words(self) -> int:
        """split_tail: fp32 words of one partial's slot (split_kv.slot_words: acc_O's dv / 2
        floats per thread of a 64-row WG, two rows)."""
        return split_kv.slot_words(self.wg_rows * self.dv // common.WG_THREADS, 2)

    def piece_of(self, sched, item: Int32):
        """split_tail: (piece, pieces, tail tile, tail tiles) of work item ``item``."""
        tile, split, pieces = sched.piece(item)
        return split, pieces, tile - sched.whole, sched.split_tiles

    def kv_span(self, m_block: Int32, seqlen_q: Int32, seqlen_k: Int32, piece: tuple = None):
        """(n_min, n_max): the KV tiles n_min .. n_max - 1 that work tile ``m_block`` visits
        (``mask.kv_tile_range``), or those of its ``piece`` (split_tail, ``piece_of``)."""
        if const_expr(self.page_size > 0):
            # a paged sequence with no keys visits one fully masked tile (O = 0, LSE = -inf), as a
            # Q tile that sees no key does (mask.py); the mask itself keeps the real length
            seqlen_k = cutlass.max(seqlen_k, 1)
        n_min, n_max = mk.kv_tile_range(self.mask, m_block, seqlen_q, seqlen_k)
        if const_expr(piece is not None):
            n_min, n_max = split_kv.kv_range(n_max, piece)
        return n_min, n_max

    def q_state_of(self, q_buf: Int32, q_phase: Int32, wg: Int32) -> pipeline.PipelineState:
        """The Q ring state of consumer WG ``wg``'s slot in Q buffer ``q_buf`` (always 0 with one
        buffer) at ``q_phase``."""
        q_slot = wg
        if const_expr(self.q_stages != self.num_consumer_wg):
            q_slot = q_buf * self.num_consumer_wg + wg
        return pipeline.PipelineState(self.q_stages, Int32(0), q_slot, q_phase)

    def next_q_buffer(self, q_buf: Int32, q_phase: Int32):
        """(Q buffer, phase) of a consumer's next work tile."""
        if const_expr(self.q_stages == self.num_consumer_wg):
            q_phase = q_phase ^ 1
        else:
            q_buf = q_buf ^ 1
            q_phase = q_phase ^ (1 - q_buf)
        return q_buf, q_phase

    # ---- varlen -------------------------------------------------------------------------
    @cute.jit
    def seq_spans(self, cu: tuple, batch: Int32):
        """(q offset, q length, k offset, k length) of sequence ``batch`` (``varlen_bug``:
        first_length gives every sequence sequence 0's lengths)."""
        off_q, len_q = seq_span(cu[0], batch)
        off_k, len_k = seq_span(cu[1], batch)
        if const_expr(self.varlen_bug == "first_length"):
            _, len_q = seq_span(cu[0], Int32(0))
            _, len_k = seq_span(cu[1], Int32(0))
        return off_q, len_q, off_k, len_k

    def store_limit(self, mO: cute.Tensor, off_q: Int32, len_q: Int32):
        """Rows of the sequence the O/LSE stores may write: its length (first_length: also
        clipped at the packed tensor's end, as the bug would write past it)."""
        if const_expr(self.varlen_bug == "first_length"):
            return cutlass.min(len_q, mO.shape[0] - off_q)
        return len_q

    @cute.jit
    def tile_has_work(self, cu: tuple, m_block: Int32, batch: Int32) -> cutlass.Boolean:
        """varlen: does work tile (m_block, batch) load and compute anything (its Q tile
        starts inside the sequence, which has keys)? Producer and consumers agree on it, so
        a skipped tile touches no pipeline (and no Q phase)."""
        _, len_q, _, len_k = self.seq_spans(cu, batch)
        return (m_block * self.tile_m < len_q) & (len_k > 0)

    @cute.jit
    def store_empty_rows(
        self, cu: tuple, mO: cute.Tensor, mLSE: cute.Tensor, regs: tuple, tidx: Int32, wg: Int32,
        m_block: Int32, head: Int32, batch: Int32,
    ):
        """varlen, a work tile without work: for a sequence with no keys, its rows get O = 0
        and LSE = -inf (the logsumexp of nothing; softmax=identity: 0); rows past the
        sequence's end are left alone."""
        thr_qk, thr_pv, tSrQ, tSrK, tOrVt, acc_S_shape, tOrP, acc_O, softmax, row_scale, _ = regs
        off_q, len_q, _, _ = self.seq_spans(cu, batch)
        len_q = self.store_limit(mO, off_q, len_q)
        row0 = m_block * self.tile_m + wg * self.wg_rows
        if row0 < len_q:
            acc_O.fill(0.0)
            lse = cute.make_rmem_tensor(softmax.num_rows, Float32)
            lse.fill(-math.inf if self.is_exp else 0.0)  # identity: LSE is 0 everywhere
            gO = cute.local_tile(cute.domain_offset((off_q, 0), mO[None, None, head]), (self.wg_rows, self.dv), (None, 0))
            self.store_lse_rows(lse, cute.domain_offset((off_q,), mLSE[head, None]), thr_pv, tidx, row0, len_q)
            self.store_o_rows(acc_O, gO[None, None, m_block * self.num_consumer_wg + wg], thr_pv, tidx, row0, len_q)

    @cute.jit
    def store_lse_rows(self, lse: cute.Tensor, mLSE: cute.Tensor, thr_pv, tidx: Int32, row0: Int32, seqlen_q: Int32):
        """LSE of this thread's rows (one lane of each quad writes), rows < seqlen_q only."""
        tOcO = common.acc_row_view(thr_pv.partition_C(cute.make_identity_tensor((self.wg_rows, self.dv))))
        if tidx % 4 == 0:
            for r in cutlass.range_constexpr(cute.size(lse)):
                row = row0 + tOcO[r, 0][0]
                if row < seqlen_q:
                    mLSE[row] = lse[r]

    @cute.jit
    def store_o_rows(self, acc_O: cute.Tensor, gO_wg: cute.Tensor, thr_pv, tidx: Int32, row0: Int32, seqlen_q: Int32):
        """varlen O store: acc_O (fp32) -> dtype -> global memory straight from registers, each
        row predicated on row0 + row < seqlen_q (a TMA box of 64 rows would overwrite the next
        sequence's first rows; FlashAttention-3 stores varlen O without TMA too)."""
        rO = cute.make_rmem_tensor_like(acc_O, self.dtype)
        rO.store(acc_O.load().to(self.dtype))
        r_mn = common.acc_row_view(rO)
        g_mn = common.acc_row_view(thr_pv.partition_C(gO_wg))
        c_mn = common.acc_row_view(thr_pv.partition_C(cute.make_identity_tensor((self.wg_rows, self.dv))))
        probe("tOgO_rows", g_mn)
        probe("tOrO_rows", r_mn)
        for r in cutlass.range_constexpr(cute.size(r_mn, mode=[0])):
            if row0 + c_mn[r, 0][0] < seqlen_q:
                # adjacent column pairs as one 32-bit store each
                # (a column pair starts at an even column of a row, and every row of the packed
                # (total, heads, d) tensor at a multiple of d elements: 4-byte aligned)
                g_row = g_mn[r, None]
                ptr32 = cute.make_ptr(Int32, g_row.iterator.toint(), cute.AddressSpace.gmem, assumed_align=4)
                dst = cute.make_tensor(ptr32, cute.recast_layout(32, self.dtype.width, g_row.layout))
                src = cute.recast_tensor(r_mn[r, None], Int32)
                for c in cutlass.range_constexpr(cute.size(src)):
                    dst[c] = src[c]

    def _make_pipelines(self, storage):
        """Stage C's Q, K and V pipelines, plus (used by ``persistent=dynamic``) the 2-slot
        ring through which the producer hands each next work-tile id to the consumers."""
        pipeline_q, pipeline_k, pipeline_v = super()._make_pipelines(storage)
        tile_pipe = pipeline.PipelineAsync.create(
            num_stages=2,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 1),
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 4 * self.num_consumer_wg),
            barrier_storage=storage.mbar_tile.data_ptr(),
            defer_sync=True,
        )
        tile_ids = storage.tile_ids.get_tensor(cute.make_layout(self.tile_id_words()))
        return pipeline_q, pipeline_k, pipeline_v, tile_pipe, tile_ids

    def stamp_fn(self, buf: cute.Tensor, wg_idx, j: Int32):
        """``stamp(event)`` for WG ``wg_idx``'s ``j``-th work tile of this CTA: ``no_stamp``
        (no code at all) unless tracing."""
        if const_expr(not self.trace):
            return no_stamp
        return partial(self.stamp, buf, trace_word(cute.arch.block_idx()[0], wg_idx, j), j < TRACE_TILES)

    @cute.jit
    def stamp(self, buf: cute.Tensor, word: Int32, keep: cutlass.Boolean, event: cutlass.Constexpr[int]):
        """trace: thread 0 of the calling WG writes clock() as ``event`` of its tile's words."""
        tidx, _, _ = cute.arch.thread_idx()
        if tidx % common.WG_THREADS == 0:
            if keep:
                buf[word + event] = cute.arch.clock()

    @cute.jit
    def stamp_step(self, stamp: cutlass.Constexpr, i: Int32, event: cutlass.Constexpr[int]):
        """trace: ``event`` inside steady step ``TRACED_STEP`` only (stages/fmha/trace.py);
        no code at all unless tracing."""
        if const_expr(self.trace):
            if i == TRACED_STEP:
                stamp(event)

    @cute.jit
    def trace_clocks(self, buf: cute.Tensor, cta: Int32, ctas: Int32, at: cutlass.Constexpr[int]):
        """trace: (globaltimer_lo, clock) of CTA ``cta`` at its start (at=0) or end (at=2),
        written by the calling WG's thread 0 (they convert clocks to nanoseconds)."""
        tidx, _, _ = cute.arch.thread_idx()
        if tidx % common.WG_THREADS == 0:
            base = trace_clock_word(ctas, cta) + at
            buf[base] = cute.arch.globaltimer_lo()
            buf[base + 1] = cute.arch.clock()

    @cute.jit
    def produce_work_tile(
        self, tma_atom_q, tma_atom_k, tma_atom_v, mQ, mK, mV, sQ, sK, sV, pipeline_q, pipeline_k, pipeline_v,
        seqlen_k: Int32, m_block: Int32, head: Int32, batch: Int32,
        q_state: pipeline.PipelineState, kv_state: pipeline.PipelineState,
        stamp: cutlass.Constexpr = no_stamp, cu: tuple = None, block_table: cute.Tensor = None, piece: tuple = None,
        cache_seqlens: cute.Tensor = None,
    ):
        """The producer's share of the work tile (m_block, head, batch); returns the ring
        states after it. varlen (``cu`` = the cu_seqlens): the sequence's rows of the packed
        tensors, its own KV length (a box past its end reads the next sequence's rows: those
        keys are masked, those Q rows never stored). paged: the sequence's KV length from
        ``cache_seqlens`` (``paged_seqlen``). ``piece`` (split_tail): ``piece_of``'s, the KV
        tiles of that piece only."""
        head_kv = head // self.qhead_per_kvhead
        seqlen_q = mQ.shape[0]
        if const_expr(self.varlen):
            off_q, seqlen_q, off_k, seqlen_k = self.seq_spans(cu, batch)
            if const_expr(self.varlen_bug == "next_offset"):
                off_q, off_k = cu[0][batch + 1], cu[1][batch + 1]
            gQ = cute.local_tile(cute.domain_offset((off_q, 0), mQ[None, None, head]), (self.wg_rows, self.d), (None, 0))
            if const_expr(self.page_size > 0):  # the cache of this KV head, as the fixed-length paged launch
                gK = mK[None, None, head_kv, None]
                gV = mV[None, None, head_kv, None]
            else:
                gK = cute.local_tile(cute.domain_offset((off_k, 0), mK[None, None, head_kv]), (self.tile_n, self.d), (None, 0))
                gV = cute.local_tile(cute.domain_offset((off_k, 0), mV[None, None, head_kv]), (self.tile_n, self.dv), (None, 0))
        elif const_expr(self.page_size > 0):
            # paged: the whole cache of this KV head, (page_size, d, num_pages); load_paged_tile
            # picks the page of each tile through the block table row of this batch
            gQ = cute.local_tile(mQ[None, None, head, batch], (self.wg_rows, self.d), (None, 0))
            gK = mK[None, None, head_kv, None]
            gV = mV[None, None, head_kv, None]
            seqlen_k = self.paged_seqlen(cache_seqlens, batch)
        else:
            gQ = cute.local_tile(mQ[None, None, head, batch], (self.wg_rows, self.d), (None, 0))  # (64, d, ceil(m/64))
            gK = cute.local_tile(mK[None, None, head_kv, batch], (self.tile_n, self.d), (None, 0))  # (128, d, ceil(n/128))
            gV = cute.local_tile(mV[None, None, head_kv, batch], (self.tile_n, self.dv), (None, 0))
        n_min, n_max = self.kv_span(m_block, seqlen_q, seqlen_k, piece)
        shared_rows = None
        if const_expr(self.short_split):
            shared_rows = short_tile_mod.is_short(m_block, seqlen_q, self.tile_m, self.wg_rows)
        pages = None
        if const_expr(self.page_size > 0):
            pages = (self.paged_row(block_table, batch), self.last_page(seqlen_k))
        return self.produce_d(
            tma_atom_q, tma_atom_k, tma_atom_v, gQ, gK, gV, sQ, sK, sV,
            pipeline_q, pipeline_k, pipeline_v, q_state, kv_state, m_block, n_max, stamp, n_min, pages, shared_rows,
        )

    @cute.jit
    def consume_work_tile(
        self, tiled_mma_qk, tiled_mma_pv, tma_atom_o, mO, mLSE, sQ, sK, sV, sO, pipeline_q, pipeline_k, pipeline_v,
        regs: tuple, tidx: Int32, wg: Int32, seqlen_q: Int32, seqlen_k: Int32,
        m_block: Int32, head: Int32, batch: Int32, kv_state: pipeline.PipelineState, q_buf: Int32, q_phase: Int32,
        stamp: cutlass.Constexpr = no_stamp, cu: tuple = None, mO_rows: cute.Tensor = None, piece: tuple = None,
        split_io: tuple = None, scratch: cute.Tensor = None, cache_seqlens: cute.Tensor = None,
    ) -> pipeline.PipelineState:
        """One consumer WG's share of the work tile (m_block, head, batch); returns the K/V
        ring state after it. varlen: the sequence's lengths; mO is O's TMA tensor over the
        packed rows, ``mO_rows`` the plain packed tensor. split_tail: ``piece`` (``piece_of``)
        and ``split_io`` (the workspace, the tile-id ring whose words 2 ... are the WGs' flags).
        short_tile=split: ``scratch``, the shared memory of the WGs' partials."""
        gO_rows = None
        if const_expr(self.varlen):
            off_q, seqlen_q, _, seqlen_k = self.seq_spans(cu, batch)
            gO = cute.local_tile(cute.domain_offset((off_q, 0), mO[None, None, head]), (self.wg_rows, self.dv), (None, 0))
            gO_rows = cute.local_tile(cute.domain_offset((off_q, 0), mO_rows[None, None, head]), (self.wg_rows, self.dv), (None, 0))
            mLSE_row = cute.domain_offset((off_q,), mLSE[head, None])
            n_min, n_max = self.kv_span(m_block, seqlen_q, seqlen_k)
            seqlen_q = self.store_limit(mO_rows, off_q, seqlen_q)  # (consume_d reads seqlen_q for the stores only)
            if const_expr(self.varlen_bug == "tail_unmasked"):
                seqlen_k = (seqlen_k + (self.tile_n - 1)) // self.tile_n * self.tile_n  # (and seqlen_k for the mask)
        else:
            gO = cute.local_tile(mO[None, None, head, batch], (self.wg_rows, self.dv), (None, 0))  # (64, dv, ceil(m/64))
            mLSE_row = mLSE[batch, head, None]
            if const_expr(self.page_size > 0):
                seqlen_k = self.paged_seqlen(cache_seqlens, batch)
            n_min, n_max = self.kv_span(m_block, seqlen_q, seqlen_k, piece)
        shared_rows = None
        if const_expr(self.short_split):
            shared_rows = (short_tile_mod.is_short(m_block, seqlen_q, self.tile_m, self.wg_rows), scratch)
        return self.consume_d(
            tiled_mma_qk, tiled_mma_pv, tma_atom_o, gO, mLSE_row, sQ, sK, sV, sO,
            pipeline_q, pipeline_k, pipeline_v, kv_state, q_buf, q_phase, regs,
            tidx, wg, m_block, n_max, seqlen_q, seqlen_k, stamp, n_min, gO_rows, piece, split_io, shared_rows,
        )

    def consumer_registers(self, tiled_mma_qk, tiled_mma_pv, sQ, sK, sV, tidx_wg, sP=None, wg=None):
        """A consumer WG's MMA fragments and register tensors (accumulators, P, softmax state)
        and, with ``p_smem``, the stmatrix copy of P into the WG's P tile (``hand_over_p``;
        tOrP is then that tile's A descriptors)."""
        thr_qk, thr_pv, tSrQ, tSrK, tOrVt, acc_S_shape, tOrP, acc_O = self._consumer_fragments(
            tiled_mma_qk, tiled_mma_pv, sQ, sK, sV, tidx_wg, sP
        )
        p_store = None
        if const_expr(self.p_smem):
            tOrP = tOrP[None, None, None, wg]
            tiled_store = common.make_stmatrix_store(self.dtype, tiled_mma_qk)  # P has S's accumulator layout
            thr_store = tiled_store.get_slice(tidx_wg)
            tPsP = thr_store.partition_D(sP[None, None, wg])
            probe("tPsP", tPsP)
            p_store = (tiled_store, thr_store, tPsP)
        trace_print(tSrS=acc_S_shape, tOrP=tOrP, tOrO=acc_O, p_check=self.p_check)
        softmax = self.online_softmax(acc_O)
        row_scale = cute.make_rmem_tensor(softmax.num_rows, Float32)
        return thr_qk, thr_pv, tSrQ, tSrK, tOrVt, acc_S_shape, tOrP, acc_O, softmax, row_scale, p_store

    def online_softmax(self, acc_O: cute.Tensor) -> sm.OnlineSoftmax:
        """The running row statistics of a consumer thread's rows of ``acc_O``."""
        return sm.OnlineSoftmax(
            self.scale_log2, cute.size(common.acc_row_view(acc_O), mode=[0]), softcap=self.softcap_constants(),
            lazy=LAZY_RESCALE_LOG2 if self.lazy_rescale else None, rounded_sum=self.rounded_sum and self.is_exp,
            sum_from_alpha=self.sum_from_alpha,
        )

    @cute.jit
    def hand_over_p(
        self, acc_S: cute.Tensor, tOrP: cute.Tensor, p_store: cutlass.Constexpr, wg: Int32, softmax: sm.OnlineSoftmax
    ):
        """P = acc_S as the PV MMA's A operand: converted into tOrP's registers, or (``p_smem``)
        converted and stored with stmatrix into the WG's P tile, fenced for the async proxy
        and synced: the WG's 128 threads (``p_sync=wg``), or the warp alone (``warp``: a
        warp's rows of the PV MMA are the rows of P it stored, as P has S's accumulator
        layout). The caller has waited for the previous PV MMA, which read the tile.
        ``rounded_sum`` through shared memory: the row sums add the stored 16-bit P here
        (in registers: ``add_p_sum`` after the PV MMA's issue)."""
        if const_expr(p_store is None):
            sm.convert_p(acc_S, tOrP)
        else:
            tiled_store, thr_store, tPsP = p_store
            rP = cute.make_rmem_tensor_like(acc_S, self.dtype)
            rP.store(acc_S.load().to(self.dtype))
            cute.copy(tiled_store, thr_store.retile(rP), tPsP)
            if const_expr(softmax.rounded_sum):
                softmax.add_rounded(rP, self.p_sum_rows)
            cute.arch.fence_view_async_shared()
            if const_expr(self.p_sync == "warp"):
                cute.arch.sync_warp()
            else:
                cute.arch.barrier(barrier_id=1 + wg, number_of_threads=common.WG_THREADS)

    @cute.jit
    def produce_d(
        self,
        tma_atom_q: cute.CopyAtom,
        tma_atom_k: cute.CopyAtom,
        tma_atom_v: cute.CopyAtom,
        gQ: cute.Tensor,
        gK: cute.Tensor,
        gV: cute.Tensor,
        sQ: cute.Tensor,
        sK: cute.Tensor,
        sV: cute.Tensor,
        pipeline_q: pipeline.PipelineAsync,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        q_state: pipeline.PipelineState,
        kv_state: pipeline.PipelineState,
        m_block: Int32,
        n_max: Int32,
        stamp: cutlass.Constexpr = no_stamp,
        n_min=0,
        pages: tuple = None,  # paged: (this batch's block table row, its last_page)
        shared_rows=None,  # short_tile=split: whether the tile's real rows fit WG 0 (a Boolean)
    ):
        """Warp 0 of WG0, one work tile: K_{n_max - 1}, the Q halves, then the other K_j,
        V_j down to j = n_min (``mask.kv_tile_range``: the consumers visit the same
        n_max - n_min >= 1 tiles). A short tile shared by the WGs (``shared_rows``): WG 0's
        Q box into every WG's slot. Returns the ring states after it."""
        tQsQ, tQgQ = common.tma_partition_tile(tma_atom_q, sQ, gQ)
        probe("tQsQ", tQsQ)
        probe("tQgQ", tQgQ)
        if const_expr(self.page_size > 0):
            load_k = partial(self.load_paged_tile, pipeline_k, tma_atom_k, gK, sK, pages, self.d)
            load_v = partial(self.load_paged_tile, pipeline_v, tma_atom_v, gV, sV, pages, self.dv)
        else:
            # a cluster: this CTA's slice of each K and V box, multicast into every CTA of it
            cta = (0, 1)
            if const_expr(self.cluster_m > 1):
                cta = (cute.arch.make_warp_uniform(cute.arch.block_idx_in_cluster()), self.cluster_m)
            tKsK, tKgK = common.tma_partition_tile(tma_atom_k, sK, gK, cta)
            tVsV, tVgV = common.tma_partition_tile(tma_atom_v, sV, gV, cta)
            probe("tKsK", tKsK)
            probe("tKgK", tKgK)
            probe("tVsV", tVsV)
            probe("tVgV", tVgV)
            load_k = partial(self.load_tile, pipeline_k, tma_atom_k, tKgK, tKsK)
            load_v = partial(self.load_tile, pipeline_v, tma_atom_v, tVgV, tVsV)
        # K of the first visited tile before Q: its ring slot frees earlier than the Q
        # slots, which a persistent CTA's consumers release only at the end of the last tile
        stamp(0)
        load_k(kv_state, n_max - 1)
        stamp(1)
        for w in cutlass.range_constexpr(self.num_consumer_wg):
            pipeline_q.producer_acquire(q_state)
            q_box = m_block * self.num_consumer_wg + w
            if const_expr(shared_rows is not None and w > 0):
                if shared_rows:
                    q_box = m_block * self.num_consumer_wg
            cute.copy(
                tma_atom_q,
                tQgQ[None, q_box],
                tQsQ[None, q_state.index],
                tma_bar_ptr=pipeline_q.producer_get_barrier(q_state),
            )
            q_state.advance()
        stamp(2)
        n_steps = n_max
        if const_expr(self.left_masked or self.split_tail):
            n_steps = n_max - n_min
        if const_expr(self.kv_load == "paired"):
            load_v(kv_state, n_max - 1)
            kv_state.advance()
            for i in cutlass.range(1, n_steps, unroll=1):
                load_k(kv_state, n_max - 1 - i)
                load_v(kv_state, n_max - 1 - i)
                kv_state.advance()
        else:
            # k_ahead: K of the next tile before V of this one, the order the overlap
            # schedules consume them in (S_i = Q K_i^T is issued with O += P_{i-1} V_{i-1})
            for i in cutlass.range(n_steps - 1, unroll=1):
                kv_prev = kv_state.clone()
                kv_state.advance()
                load_k(kv_state, n_max - 2 - i)
                load_v(kv_prev, n_max - 1 - i)
            load_v(kv_state, n_min)
            kv_state.advance()
        stamp(3)
        return q_state, kv_state

    @cute.jit
    def load_tile(
        self,
        pipe: pipeline.PipelineAsync,
        tma_atom: cute.CopyAtom,
        tXgX: cute.Tensor,
        tXsX: cute.Tensor,
        state: pipeline.PipelineState,
        tile: Int32,
    ):
        """Wait for ring slot ``state`` to be free, then TMA tile ``tile`` into it (in a
        cluster: this CTA's slice of it, into the slot of every CTA)."""
        pipe.producer_acquire(state)
        if const_expr(self.cluster_m > 1):
            cute.copy(
                tma_atom, tXgX[None, tile], tXsX[None, state.index], tma_bar_ptr=pipe.producer_get_barrier(state),
                mcast_mask=cutlass.Int16((1 << self.cluster_m) - 1),
            )
        else:
            cute.copy(tma_atom, tXgX[None, tile], tXsX[None, state.index], tma_bar_ptr=pipe.producer_get_barrier(state))

    def paged_seqlen(self, cache_seqlens: cute.Tensor, batch: Int32) -> Int32:
        """paged: the KV length of sequence ``batch`` (``paged_bug=first_length``: sequence 0's
        for every sequence)."""
        if const_expr(self.paged_bug == "first_length"):
            return cache_seqlens[0]
        return cache_seqlens[batch]

    def last_page(self, seqlen_k: Int32) -> Int32:
        """paged: the last block table entry the sequence's keys fill (0 with no keys). Pages
        smaller than a KV tile: the tail tile's entries past it are clamped to it (they hold
        only masked keys), so no entry past the sequence's own pages is read -- the row may
        end there (the table's last row: past the tensor)."""
        return cutlass.max((seqlen_k + (self.page_size - 1)) // self.page_size - 1, 0)

    def paged_row(self, block_table: cute.Tensor, batch: Int32) -> cute.Tensor:
        """paged: the block table row of ``batch`` (``paged_bug=batch0_table``: row 0 for all)."""
        if const_expr(self.paged_bug == "batch0_table"):
            return block_table[0, None]
        return block_table[batch, None]

    def page_rows(self, smem_layout, width: int):
        """The (page_size, width) rows 0 .. page_size - 1 of one stage of a K or V tile's
        swizzled smem layout: the smem layout of one page's TMA box (page_size < tile_n; a
        multiple of 8 rows, so each box starts on a swizzle atom)."""
        stage = cute.select(smem_layout, mode=[0, 1])
        return cute.composition(stage, cute.make_layout((self.page_size, width), stride=(1, self.tile_n)))

    @cute.jit
    def load_paged_tile(
        self,
        pipe: pipeline.PipelineAsync,
        tma_atom: cute.CopyAtom,
        gX: cute.Tensor,  # (page_size, d, num_pages): one KV head of the cache
        sX: cute.Tensor,
        pages: tuple,  # (this batch's block table row (max_pages_per_seq,) int32, its last_page)
        width: cutlass.Constexpr[int],  # d for K, dv for V
        state: pipeline.PipelineState,
        tile: Int32,
    ):
        """paged: logical KV tile ``tile`` (keys tile * tile_n ...) lies in page
        pages[tile * tile_n // page_size] at row offset tile * tile_n % page_size (page_size
        a multiple of tile_n: one box). The producer warp reads the table entry (a broadcast
        load), then TMAs the box like ``load_tile``. Pages smaller than a tile: one box per
        page, pages[tile * tile_n / page_size + j] into rows j * page_size ... of the stage,
        j past the sequence's last page clamped to it (``last_page``)."""
        pages, last = pages
        if const_expr(self.page_size < self.tile_n):
            per_tile = self.tile_n // self.page_size
            pipe.producer_acquire(state)
            sX_stage = sX[None, None, state.index]
            for j in cutlass.range(per_tile, unroll=1):  # (unrolled, the producer's 24 registers spill)
                entry = cutlass.min(tile * per_tile + j, last)
                if const_expr(self.paged_bug == "page_off_by_one"):
                    entry = entry + 1
                sX_page = cute.local_tile(sX_stage, (self.page_size, width), (j, 0))
                gX_page = cute.local_tile(gX[None, None, pages[entry]], (self.page_size, width), (0, 0))
                tXsX, tXgX = common.tma_partition_tile(tma_atom, sX_page, gX_page)
                cute.copy(tma_atom, tXgX, tXsX, tma_bar_ptr=pipe.producer_get_barrier(state))
            return
        row = tile * self.tile_n
        entry = row // self.page_size
        if const_expr(self.paged_bug == "page_off_by_one"):
            entry = entry + 1  # (the row's last entry reads the next row's first: flat row-major table)
        page = pages[entry]
        sub = (row % self.page_size) // self.tile_n
        if const_expr(self.paged_bug == "offset_ignored"):
            sub = 0
        gX_page = cute.local_tile(gX[None, None, page], (self.tile_n, width), (None, 0))  # (tile_n, width, page_size / tile_n)
        tXsX, tXgX = common.tma_partition_tile(tma_atom, sX, gX_page)
        pipe.producer_acquire(state)
        cute.copy(
            tma_atom, tXgX[None, sub], tXsX[None, state.index],
            tma_bar_ptr=pipe.producer_get_barrier(state),
        )

    @cute.jit
    def consume_d(
        self,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        tma_atom_o: cute.CopyAtom,
        gO: cute.Tensor,
        mLSE: cute.Tensor,  # (m,) of this (batch, head)
        sQ: cute.Tensor,
        sK: cute.Tensor,
        sV: cute.Tensor,
        sO: cute.Tensor,
        pipeline_q: pipeline.PipelineAsync,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        kv_state: pipeline.PipelineState,
        q_buf: Int32,
        q_phase: Int32,
        regs: tuple,
        tidx: Int32,
        wg: Int32,
        m_block: Int32,
        n_max: Int32,
        seqlen_q: Int32,
        seqlen_k: Int32,
        stamp: cutlass.Constexpr = no_stamp,
        n_min=0,
        gO_rows: cute.Tensor = None,  # varlen: the plain packed O's (64, d, m tiles) of this sequence
        piece: tuple = None,  # split_tail: consume_work_tile's
        split_io: tuple = None,
        shared_rows: tuple = None,  # short_tile=split: (whether the tile is short, the partials' scratch)
    ) -> pipeline.PipelineState:
        """One consumer WG, one work tile (its 64 Q rows), KV tiles n_max - 1 down to n_min
        (``mask``: the first n_up and, with a left window, the visits from n_lo on masked);
        returns the K/V ring state after it. ``q_buf``, ``q_phase``: the Q buffer of this work tile (0 unless ``q_buffers=2``) and
        its phase (parity of the buffer's uses); ``regs``:
        ``consumer_registers``, made once per CTA."""
        tidx_wg = tidx % common.WG_THREADS
        stamp(0)
        thr_qk, thr_pv, tSrQ, tSrK, tOrVt, acc_S_shape, tOrP, acc_O, softmax, row_scale, p_store = regs
        softmax.reset()
        acc_O.fill(0.0)

        row0 = m_block * self.tile_m + wg * self.wg_rows  # first global row of this WG
        tScS = thr_qk.partition_C(cute.make_identity_tensor((self.wg_rows, self.tile_n)))
        probe("tScS", tScS)
        t0ScS = tiled_mma_qk.get_slice(0).partition_C(cute.make_identity_tensor((self.wg_rows, self.tile_n)))
        # the first n_masked visited tiles (n_max - 1 downwards) need the tail / upper mask,
        # with a left window the visits n_lo .. n_steps - 1 the left one (mask.mask_steps)
        n_masked, n_lo = mk.mask_steps(self.mask, m_block, n_min, n_max, seqlen_q, seqlen_k)
        n_steps = n_max
        if const_expr(self.left_masked or self.split_tail):
            n_steps = n_max - n_min
        # the upper edge of row r is r + row_offset (plain causal: row0, as ever), the left
        # one r + lo_row_offset
        row_offset = row0
        lo_row_offset = None
        if const_expr(not self.mask.plain_causal):
            off = mk.diagonal_offset(self.mask, seqlen_q, seqlen_k)
            if const_expr(self.mask.upper):
                row_offset = row0 + off + self.mask.window_right
            if const_expr(self.mask.lower):
                lo_row_offset = row0 + off - self.mask.window_left
        elif const_expr(self.mask.lower):
            lo_row_offset = row0 - self.mask.window_left
        if const_expr(self.mask.bug == "window_left_plus_one"):
            lo_row_offset = lo_row_offset - 1  # a deliberate bug: one key too many on the left
        mask_fn = partial(
            mk.apply_mask,
            tScS=tScS,
            t0ScS=t0ScS,
            row_offset=row_offset,
            seqlen_k=seqlen_k,
            causal=self.mask.upper,
            fill=self.mask_fill,
            lo_row_offset=lo_row_offset,
        )

        q_state = self.q_state_of(q_buf, q_phase, wg)
        pipeline_q.consumer_wait(q_state)
        release_q = partial(pipeline_q.consumer_release, q_state)
        stamp(1)
        tSrQ_wg = tSrQ[None, None, None, q_state.index]

        if const_expr(self.schedule == "serial"):
            step = partial(
                self.consume_tile, pipeline_k=pipeline_k, pipeline_v=pipeline_v, tiled_mma_qk=tiled_mma_qk,
                tiled_mma_pv=tiled_mma_pv, tSrQ=tSrQ_wg, tSrK=tSrK, tOrVt=tOrVt, tOrP=tOrP, acc_O=acc_O,
                acc_S_shape=acc_S_shape, softmax=softmax, row_scale=row_scale,
            )
            kv_state = step(kv_state, is_first=True, mask_fn=partial(mask_fn, col_offset=(n_max - 1) * self.tile_n))
            if const_expr(self.two_masked):
                for i in cutlass.range(1, n_masked, unroll=1):
                    col_offset = (n_max - 1 - i) * self.tile_n
                    kv_state = step(kv_state, is_first=False, mask_fn=partial(mask_fn, col_offset=col_offset))
            if const_expr(self.left_masked):
                for i in cutlass.range(n_masked, n_lo, unroll=1):
                    kv_state = step(kv_state, is_first=False)
                for i in cutlass.range(n_lo, n_steps, unroll=1):
                    col_offset = (n_max - 1 - i) * self.tile_n
                    kv_state = step(kv_state, is_first=False, mask_fn=partial(mask_fn, col_offset=col_offset))
            else:
                for i in cutlass.range(n_masked, n_steps, unroll=1):
                    kv_state = step(kv_state, is_first=False)
        else:
            overlap_args = (
                pipeline_k, pipeline_v, tiled_mma_qk, tiled_mma_pv, tSrQ_wg, tSrK, tOrVt,
                tOrP, acc_O, acc_S_shape, softmax, row_scale, mask_fn, wg, n_max, n_masked,
                no_release if self.o_in_q else release_q, stamp,
            )
            overlap_kwargs = dict(n_lo=n_lo, n_steps=n_steps, p_store=p_store)

            if const_expr(shared_rows is not None):
                if shared_rows[0]:
                    # a short tile: every WG on WG 0's rows, each over every third KV tile
                    kv_state = self.consume_shared(
                        kv_state, pipeline_k, pipeline_v, tiled_mma_qk, tiled_mma_pv, tSrQ_wg, tSrK, tOrVt, tOrP, acc_O,
                        acc_S_shape, softmax, row_scale, mask_fn, wg, n_max, n_steps, release_q, p_store,
                    )
                else:
                    kv_state = self.consume_overlap(kv_state, *overlap_args, **overlap_kwargs)
            else:
                kv_state = self.consume_overlap(kv_state, *overlap_args, **overlap_kwargs)
        if const_expr(self.schedule == "serial" and not self.o_in_q):
            release_q()
        self.end_tile(
            acc_O, softmax, row_scale, thr_pv, tma_atom_o, tiled_mma_pv, gO, gO_rows, mLSE, sO, tidx_wg, wg, m_block,
            row0, seqlen_q, release_q, stamp, piece, split_io, shared_rows,
        )
        return kv_state

    @cute.jit
    def end_tile(
        self, acc_O, softmax: sm.OnlineSoftmax, row_scale, thr_pv, tma_atom_o, tiled_mma_pv, gO, gO_rows, mLSE, sO,
        tidx_wg: Int32, wg: Int32, m_block: Int32, row0: Int32, seqlen_q: Int32, release_q, stamp: cutlass.Constexpr,
        piece: tuple = None, split_io: tuple = None, shared_rows: tuple = None,
    ):
        """A consumer WG's end of a work tile once its last PV MMA is done: the epilogue, or for
        a piece of a split tile (split_tail) the merge and, by the last piece, the epilogue, or
        for a short tile shared by the WGs (short_tile=split) the gather and, by WG 0, the
        epilogue. ``softmax`` holds the tile's row statistics."""
        epilogue = partial(
            self.epilogue, acc_O, softmax, row_scale, thr_pv, tma_atom_o, tiled_mma_pv, gO, gO_rows, mLSE, sO,
            tidx_wg, wg, m_block, row0, seqlen_q, release_q, stamp,
        )
        if const_expr(self.split_tail):
            # a piece of a split tile: only the last of its pieces to arrive runs the epilogue,
            # with the others' partials added in (split_kv.merge)
            is_last = cutlass.Boolean(True)
            if piece[1] > 1:
                workspace, tile_ids = split_io
                flags = cute.make_tensor(tile_ids.iterator + 2, cute.make_layout(self.num_consumer_wg))
                is_last = split_kv.merge(
                    acc_O, softmax.row_max, softmax.row_sum, 1.0 if self.softcap else self.scale_log2, workspace, flags,
                    tidx_wg, wg, self.num_consumer_wg, piece[3], piece[2], piece[0], piece[1], 1 + wg, exp=self.is_exp,
                )
            if is_last:
                epilogue()
            elif const_expr(self.o_in_q):
                release_q()  # no O store: the Q slot is free since the last QK^T
        elif const_expr(shared_rows is not None):
            if shared_rows[0]:
                # WG 0 adds the others' partials in and alone stores the rows
                if self.gather_shared_rows(acc_O, softmax, shared_rows[1], tidx_wg, wg):
                    epilogue()
            else:
                epilogue()
        else:
            epilogue()

    @cute.jit
    def gather_shared_rows(self, acc_O: cute.Tensor, softmax: sm.OnlineSoftmax, scratch: cute.Tensor, tidx_wg: Int32,
                           wg: Int32) -> cutlass.Boolean:
        """A short tile's end (short_tile.py): WGs 1 and 2 leave their partials in the scratch,
        the consumer WGs meet, WG 0 adds them to its own, and they meet again (so the scratch
        is read before anyone writes it for the next short tile). True for WG 0."""
        o_rows = common.acc_row_view(acc_O)
        if wg > 0:
            short_tile_mod.leave(o_rows, softmax.row_max, softmax.row_sum, scratch, wg - 1, tidx_wg)
        consumers = self.num_consumer_wg * common.WG_THREADS
        cute.arch.barrier(barrier_id=SHARED_ROWS_BARRIER, number_of_threads=consumers)
        if wg == 0:
            short_tile_mod.add_in(
                o_rows, softmax.row_max, softmax.row_sum, 1.0 if self.softcap else self.scale_log2, scratch,
                self.num_consumer_wg - 1, tidx_wg, exp=self.is_exp,
            )
        cute.arch.barrier(barrier_id=SHARED_ROWS_BARRIER, number_of_threads=consumers)
        return wg == 0

    @cute.jit
    def epilogue(
        self, acc_O, softmax: sm.OnlineSoftmax, row_scale, thr_pv, tma_atom_o, tiled_mma_pv, gO, gO_rows, mLSE, sO,
        tidx_wg: Int32, wg: Int32, m_block: Int32, row0: Int32, seqlen_q: Int32, release_q, stamp: cutlass.Constexpr,
    ):
        """A consumer WG's end of a work tile: O / l and the LSE (``finish``), the LSE rows and the
        O box stored (varlen: a box that would cross into the next sequence row by row)."""
        lse = cute.make_rmem_tensor(softmax.num_rows, Float32)
        self.finish(softmax, acc_O, lse, row_scale)

        o_box = m_block * self.num_consumer_wg + wg
        if const_expr(self.varlen):
            self.store_lse_rows(lse, mLSE, thr_pv, tidx_wg, row0, seqlen_q)
            stamp(6)
            if row0 + self.wg_rows <= seqlen_q:  # the WG's whole box lies inside its sequence
                self.store_o_box(acc_O, sO, gO[None, None, o_box], tma_atom_o, tiled_mma_pv, tidx_wg, wg, True, release_q)
            else:  # the sequence's last rows: a box would write the next sequence's first rows
                self.store_o_rows(acc_O, gO_rows[None, None, o_box], thr_pv, tidx_wg, row0, seqlen_q)
                if const_expr(self.o_in_q):
                    release_q()  # O went from registers: the Q slot is free since the last QK^T
        else:
            tOcO = common.acc_row_view(thr_pv.partition_C(cute.make_identity_tensor((self.wg_rows, self.dv))))
            if tidx_wg % 4 == 0:
                for r in cutlass.range_constexpr(softmax.num_rows):
                    row = row0 + tOcO[r, 0][0]
                    if row < seqlen_q:
                        mLSE[row] = lse[r]
            stamp(6)
            self.store_o_box(acc_O, sO, gO[None, None, o_box], tma_atom_o, tiled_mma_pv, tidx_wg, wg, row0 < seqlen_q, release_q)
        stamp(7)

    @cute.jit
    def store_o_box(self, acc_O, sO, gO_box, tma_atom_o, tiled_mma_pv, tidx_wg: Int32, wg: Int32, do_store, release_q):
        """The WG's O through shared memory and one TMA store of its (64, d) box (rows past the
        tensor's end clipped by TMA; ``do_store``: warp-uniform, False skips the box)."""
        if const_expr(self.persistent and not self.o_in_q):
            # the previous tile's O store, issued a whole tile ago, must have read sO before
            # anyone writes it: its issuing warp waits only now, then all may write
            if tidx_wg < 32:
                cute.arch.cp_async_bulk_wait_group(0, read=True)
            cute.arch.barrier(barrier_id=1 + wg, number_of_threads=common.WG_THREADS)
        # o_in_q: sO[wg] is this WG's Q slot, free since its last QK^T completed; the store
        # is waited for at once and the slot handed back to the producer only after it
        self.store_o(
            acc_O, sO[None, None, wg], gO_box, tma_atom_o, tiled_mma_pv, tidx_wg, wg, do_store,
            wait_read=not self.persistent or self.o_in_q,
        )
        if const_expr(self.o_in_q):
            cute.arch.barrier(barrier_id=1 + wg, number_of_threads=common.WG_THREADS)  # the store has read sO
            release_q()


    # ---- overlap / pingpong schedules ---------------------------------------------------
    @cute.jit
    def softmax_tile(
        self,
        acc_S: cute.Tensor,
        softmax: sm.OnlineSoftmax,
        row_scale: cute.Tensor,
        is_first: cutlass.Constexpr[bool],
        masked: cutlass.Constexpr[bool] = True,
    ):
        """S -> P in place (exp: online softmax, row_scale <- alpha; identity: S scale).
        Softcap: the logits are capped first (``OnlineSoftmax.step``); ``masked`` says the
        tile went through ``mask_fn`` (its -inf must survive the cap): pass False only for
        tiles no mask touched."""
        if const_expr(self.is_exp):
            softmax.step(acc_S, row_scale, is_first=is_first, masked=masked)
        else:
            self.identity_logits(acc_S)

    @cute.jit
    def rescale_o(self, acc_O: cute.Tensor, row_scale: cute.Tensor, softmax: sm.OnlineSoftmax):
        """O *= alpha per row; with ``lazy_rescale`` only when some row of the warp moved its
        max (a warp-uniform branch: most tiles after the first few skip the multiplies)."""
        if const_expr(softmax.lazy is not None):
            if softmax.any_moved(row_scale):
                sm.rescale_rows(acc_O, row_scale)
        else:
            sm.rescale_rows(acc_O, row_scale)

    @cute.jit
    def softmax_done(self, softmax: sm.OnlineSoftmax, acc_S: cute.Tensor) -> cutlass.Boolean:
        """A predicate that is always true but reads every P value of the tile (through
        the row sums: a sum of exp2 results is +0, positive or the canonical NaN
        0x7fffffff, sign bit clear); identity: reads the first and last S values."""
        total = Float32(0.0)
        if const_expr(self.is_exp):
            for r in cutlass.range_constexpr(softmax.num_rows):
                total = total + softmax.row_sum[r]
        else:
            total = acc_S[0] * Float32(0.0) + acc_S[cute.size(acc_S) - 1] * Float32(0.0)
        return f32_bits(total) >= 0

    def sched_sync(self, wg):
        """pingpong: wait until the other consumer WG has issued its MMAs (own barrier)."""
        if const_expr(self.schedule == "pingpong"):
            cute.arch.barrier(barrier_id=SCHED_BARRIER_BASE + wg, number_of_threads=2 * common.WG_THREADS)

    def sched_arrive(self, wg):
        """pingpong: let the next consumer WG (round robin) issue its MMAs (arrive on its
        barrier)."""
        if const_expr(self.schedule == "pingpong"):
            next_wg = (wg + 1) % self.num_consumer_wg
            cute.arch.barrier_arrive(barrier_id=SCHED_BARRIER_BASE + next_wg, number_of_threads=2 * common.WG_THREADS)

    @cute.jit
    def overlap_tile(
        self,
        kv_state: pipeline.PipelineState,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        tSrQ: cute.Tensor,
        tSrK: cute.Tensor,
        tOrVt: cute.Tensor,
        acc_S_shape: cutlass.Constexpr,
        tOrP: cute.Tensor,
        acc_O: cute.Tensor,
        softmax: sm.OnlineSoftmax,
        row_scale: cute.Tensor,
        wg: Int32,
        i: Int32,
        n_max: Int32,
        mask_fn: cutlass.Constexpr = None,
        n_steps=None,
        p_store: cutlass.Constexpr = None,
        stamp: cutlass.Constexpr = no_stamp,
        shared: cutlass.Constexpr[bool] = False,
    ) -> pipeline.PipelineState:
        """Steady-state step i (1 <= i < n_steps in visit order: tile n_max - 1 - i; n_steps
        = n_max - n_min, None: n_max). On entry ``kv_state`` is
        the ring slot of tile i - 1, whose P is in ``tOrP`` and alpha in ``row_scale``; on
        exit the slot of tile i, whose P is in ``tOrP`` and alpha in ``row_scale``.

        Default order (FlashAttention-4's): issue S_i = Q K_i^T and O += P_{i-1} V_{i-1};
        wait for S_i only; release K_i; softmax of S_i; wait for the PV MMA; release
        V_{i-1}; P_i -> ``tOrP``; O *= alpha_i. In ``pingpong`` the stretch between a WG's
        scheduler sync and its arrive is only the two MMA issues.

        ``o_rescale="mid"`` multiplies O by alpha_{i-1} between the two issues instead;
        ``k_release="pinned"`` releases K_i after the softmax with a predicate that reads
        the finished row sums, which keeps ptxas from hoisting ``wgmma.wait_group 0`` above
        the exp2s (without it ptxas puts 48-57 of the 66 exp2s of a tile after the wait;
        tests/test_stage_d_speed.py checks the pinned SASS). On an H200 the pinned order
        was 2-3% slower all the same (docs/perf-notes.md).

        ``shared`` (a short tile's visit, ``consume_shared``): the WG's previous visit was i -
        (consumer WGs), the ring slot the same; each slot released for every WG; no pingpong
        turns."""
        # a fresh S accumulator each step: the wgmma's accumulator operands are in/out
        # registers, and a reused tensor would keep the fp32 P of the previous step alive
        # across the QK^T issue (LLVM then sank P's conversion below it: 64 more live
        # registers, spills at 160)
        self.stamp_step(stamp, i, 8)
        acc_S = cute.make_rmem_tensor(acc_S_shape, Float32)
        kv_prev = kv_state.clone()
        releases = self.num_consumer_wg if const_expr(shared) else 1
        kv_state.advance(releases)
        pipeline_k.consumer_wait(kv_state)
        if const_expr(not shared):
            self.sched_sync(wg)
        wgmma_issue(tiled_mma_qk, acc_S, tSrQ, tSrK[None, None, None, kv_state.index], True)
        if const_expr(self.is_exp and self.o_rescale == "mid"):
            if i > 1:
                self.rescale_o(acc_O, row_scale, softmax)  # alpha_{i-1}
        pipeline_v.consumer_wait(kv_prev)
        wgmma_issue(tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, kv_prev.index], False)
        if const_expr(self.schedule == "pingpong" and not shared):
            # the last WG's last arrive would meet no sync (WG 0 started on its own arrive)
            last = n_max
            if const_expr(n_steps is not None):
                last = n_steps
            if wg < self.num_consumer_wg - 1 or i < last - 1:
                self.sched_arrive(wg)
        self.add_p_sum(softmax, tOrP)  # P_{i-1}, before step i scales the sums by alpha_i
        warpgroup.wait_group(1)  # S_i ready; the PV MMA may still run
        self.stamp_step(stamp, i, 9)
        if const_expr(self.k_release == "early"):
            for _ in cutlass.range_constexpr(releases):
                pipeline_k.consumer_release(kv_state)  # as FlashAttention-4: no pin
        if const_expr(mask_fn is not None):
            mask_fn(acc_S, col_offset=(n_max - 1 - i) * self.tile_n)
        # touches acc_S and the row statistics only, never acc_O / tOrP
        self.softmax_tile(acc_S, softmax, row_scale, False, masked=mask_fn is not None)
        self.stamp_step(stamp, i, 10)
        if const_expr(self.k_release == "pinned"):
            # Release K_i *pinned behind the softmax*: ptxas keeps the wait below after this
            # mbarrier arrive, and the arrive's predicate reads the finished row sums (sign
            # bit clear: always true, but ptxas cannot know), so every exp2 of the tile must
            # be issued before the wait. The second release (after the wait, predicate
            # negated) makes the slot released exactly once whatever the value.
            pinned = self.softmax_done(softmax, acc_S)
            if pipeline_k.is_signaling_thread and pinned:
                pipeline_k.sync_object_empty.arrive(kv_state.index, pipeline_k.consumer_mask)
            warpgroup.wait_group(0)  # PV of tile i - 1 done: acc_O and tOrP free
            if pipeline_k.is_signaling_thread and not pinned:
                pipeline_k.sync_object_empty.arrive(kv_state.index, pipeline_k.consumer_mask)
        else:
            warpgroup.wait_group(0)
        self.stamp_step(stamp, i, 11)
        for _ in cutlass.range_constexpr(releases):
            pipeline_v.consumer_release(kv_prev)
        # P_i into the PV operand registers only now: LLVM does not know the PV MMA reads
        # them asynchronously, and a conversion before the wait was coalesced into them
        # (fp16), which made ptxas serialize every wgmma (C7513)
        self.hand_over_p(acc_S, tOrP, p_store, wg, softmax)
        if const_expr(self.is_exp and self.o_rescale == "end"):
            self.rescale_o(acc_O, row_scale, softmax)  # alpha_i, now that O holds P_{i-1} V_{i-1}
        self.stamp_step(stamp, i, 12)
        return kv_state

    @cute.jit
    def consume_overlap(
        self,
        kv_state: pipeline.PipelineState,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        tSrQ: cute.Tensor,
        tSrK: cute.Tensor,
        tOrVt: cute.Tensor,
        tOrP: cute.Tensor,
        acc_O: cute.Tensor,
        acc_S_shape: cutlass.Constexpr,
        softmax: sm.OnlineSoftmax,
        row_scale: cute.Tensor,
        mask_fn: cutlass.Constexpr,
        wg: Int32,
        n_max: Int32,
        n_masked: Int32,
        release_q: cutlass.Constexpr,
        stamp: cutlass.Constexpr = no_stamp,
        n_lo=None,
        n_steps=None,
        p_store: cutlass.Constexpr = None,
    ) -> pipeline.PipelineState:
        """All KV tiles of one consumer WG (n_steps of them from tile n_max - 1 down;
        n_steps None: n_max), the QK^T MMA and the softmax of tile i overlapping the PV MMA
        of tile i - 1 (see ``overlap_tile``). Prologue: the first visited tile n_max - 1
        (always masked): S, mask, softmax, P. Then the other n_masked - 1 masked visits, the
        mask-free ones and (left window) the masked ones from n_lo on.
        Epilogue: O = alpha O + P_last V_last. Returns the ring state after the last tile."""
        if const_expr(n_steps is None):
            n_steps = n_max
        # pingpong: consumer WG 0 goes first; only when some steady step runs (every
        # arrive on a scheduler barrier meets a sync)
        if const_expr(self.schedule == "pingpong"):
            if wg == 0 and n_steps > 1:
                cute.arch.barrier_arrive(barrier_id=SCHED_BARRIER_BASE, number_of_threads=2 * common.WG_THREADS)

        self.first_visit(
            kv_state, pipeline_k, tiled_mma_qk, tSrQ, tSrK, acc_S_shape, tOrP, softmax, row_scale, mask_fn, wg, n_max,
            p_store=p_store, stamp=stamp,
        )

        step = partial(
            self.overlap_tile, pipeline_k=pipeline_k, pipeline_v=pipeline_v, tiled_mma_qk=tiled_mma_qk,
            tiled_mma_pv=tiled_mma_pv, tSrQ=tSrQ, tSrK=tSrK, tOrVt=tOrVt, acc_S_shape=acc_S_shape, tOrP=tOrP,
            acc_O=acc_O, softmax=softmax, row_scale=row_scale, wg=wg, n_max=n_max, p_store=p_store, stamp=stamp,
        )
        if const_expr(self.left_masked or self.split_tail):
            step = partial(step, n_steps=n_steps)
        if const_expr(self.two_masked):
            for i in cutlass.range(1, n_masked, unroll=1):
                kv_state = step(kv_state, i=i, mask_fn=mask_fn)
        if const_expr(self.left_masked):
            for i in cutlass.range(n_masked, n_lo, unroll=1):
                kv_state = step(kv_state, i=i)
            # the left-window edge: the last visits (n_lo >= n_masked >= 1: never the peeled visit 0)
            for i in cutlass.range(n_lo, n_steps, unroll=1):
                kv_state = step(kv_state, i=i, mask_fn=mask_fn)
        else:
            for i in cutlass.range(n_masked, n_steps, unroll=1):
                kv_state = step(kv_state, i=i)

        stamp(4)
        release_q()  # every S of this Q tile is done: the producer may load the next Q
        if const_expr(self.is_exp and self.o_rescale == "mid"):
            if n_steps > 1:
                self.rescale_o(acc_O, row_scale, softmax)  # alpha of the last tile
        self.last_pv(kv_state, pipeline_v, tiled_mma_pv, tOrVt, tOrP, acc_O, softmax, stamp=stamp)
        kv_state.advance()
        return kv_state

    @cute.jit
    def first_visit(
        self, kv_state: pipeline.PipelineState, pipeline_k: pipeline.PipelineAsync, tiled_mma_qk: cute.TiledMma,
        tSrQ: cute.Tensor, tSrK: cute.Tensor, acc_S_shape: cutlass.Constexpr, tOrP: cute.Tensor,
        softmax: sm.OnlineSoftmax, row_scale: cute.Tensor, mask_fn: cutlass.Constexpr, wg: Int32, n_max: Int32,
        visit=None, p_store: cutlass.Constexpr = None, stamp: cutlass.Constexpr = no_stamp,
        releases: cutlass.Constexpr[int] = 1,
    ):
        """A WG's first visit of a work tile, masked: S, K released (``releases`` times: once
        per WG that would have waited on the slot), the mask, the softmax, P handed over.
        ``visit``: its index in the tile's visit order (None: 0, tile n_max - 1)."""
        acc_S = cute.make_rmem_tensor(acc_S_shape, Float32)
        pipeline_k.consumer_wait(kv_state)
        wgmma_issue(tiled_mma_qk, acc_S, tSrQ, tSrK[None, None, None, kv_state.index], True)
        warpgroup.wait_group(0)
        stamp(2)
        for _ in cutlass.range_constexpr(releases):
            pipeline_k.consumer_release(kv_state)
        last = n_max - 1
        if const_expr(visit is not None):
            last = last - visit
        mask_fn(acc_S, col_offset=last * self.tile_n)
        self.softmax_tile(acc_S, softmax, row_scale, True)
        self.hand_over_p(acc_S, tOrP, p_store, wg, softmax)
        stamp(3)

    @cute.jit
    def last_pv(
        self, kv_state: pipeline.PipelineState, pipeline_v: pipeline.PipelineAsync, tiled_mma_pv: cute.TiledMma,
        tOrVt: cute.Tensor, tOrP: cute.Tensor, acc_O: cute.Tensor, softmax: sm.OnlineSoftmax,
        stamp: cutlass.Constexpr = no_stamp, releases: cutlass.Constexpr[int] = 1,
    ):
        """A WG's last PV MMA of a work tile, O += P V of its last visit, waited for; V released
        (``releases`` times, as ``first_visit``'s K)."""
        pipeline_v.consumer_wait(kv_state)
        wgmma_issue(tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, kv_state.index], False)
        self.add_p_sum(softmax, tOrP)
        warpgroup.wait_group(0)
        stamp(5)
        for _ in cutlass.range_constexpr(releases):
            pipeline_v.consumer_release(kv_state)

    @cute.jit
    def consume_shared(
        self,
        kv_state: pipeline.PipelineState,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        tSrQ: cute.Tensor,
        tSrK: cute.Tensor,
        tOrVt: cute.Tensor,
        tOrP: cute.Tensor,
        acc_O: cute.Tensor,
        acc_S_shape: cutlass.Constexpr,
        softmax: sm.OnlineSoftmax,
        row_scale: cute.Tensor,
        mask_fn: cutlass.Constexpr,
        wg: Int32,
        n_max: Int32,
        n_steps: Int32,
        release_q: cutlass.Constexpr,
        p_store: cutlass.Constexpr = None,
    ) -> pipeline.PipelineState:
        """A short tile shared by the consumer WGs (short_tile.py): this WG's visits wg, wg + W,
        ... of the tile's n_steps (W consumer WGs = ring stages, so all in one ring slot), as
        ``consume_overlap``'s loop without the pingpong turns, each slot released for every WG;
        the first visit of each WG masked (only the tile's first, n_max - 1, has masked keys:
        non-causal, no window). Returns the common ring state after the tile's n_steps visits."""
        wgs = self.num_consumer_wg
        own = kv_state.clone()
        own.advance(wg)
        count = short_tile_mod.visits(n_steps, wg, wgs)
        if count > 0:
            self.first_visit(
                own, pipeline_k, tiled_mma_qk, tSrQ, tSrK, acc_S_shape, tOrP, softmax, row_scale, mask_fn, wg, n_max,
                visit=wg, p_store=p_store, releases=wgs,
            )
            for t in cutlass.range(1, count, unroll=1):
                own = self.overlap_tile(
                    own, pipeline_k, pipeline_v, tiled_mma_qk, tiled_mma_pv, tSrQ, tSrK, tOrVt, acc_S_shape, tOrP,
                    acc_O, softmax, row_scale, wg, wg + t * wgs, n_max, p_store=p_store, shared=True,
                )
            self.last_pv(own, pipeline_v, tiled_mma_pv, tOrVt, tOrP, acc_O, softmax, releases=wgs)
        release_q()  # every S of this Q tile is done: the producer may load the next Q
        kv_state.advance(n_steps)
        return kv_state
