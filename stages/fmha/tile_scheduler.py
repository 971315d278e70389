"""Work-tile schedulers of stage D's kernel: which (m_block, head, batch) a CTA works on next.

A work tile is one Q tile (``tile_m`` rows) of one (batch, head); tiles are numbered with
the Q tile fastest (the CTAs in flight share one head's K and V) or, with ``lpt``,
longest-first (``WorkTiles.lpt_tile``). Three schedulers, one per ``persistent`` variant:

* ``SingleTile`` (off): a CTA per work tile, the tile is blockIdx.x.
* ``StaticPersistent`` (on): a CTA per SM walks blockIdx.x, then every gridDim.x-th tile.
  In the natural order the next tile's coordinates are a mixed-radix add of the step's
  (``next_coords``: no integer division at the tile boundary).
* ``DynamicCounter`` (dynamic): the producer warp takes each next tile from a global counter
  and posts it to the consumer WGs through a 2-slot smem ring (``tile_pipe``, ``tile_ids``);
  the last CTA done zeroes the counters for the next launch.

Both warp roles drive the same scheduler: ``initial`` (the first tile and its
coordinates), ``current`` (the coordinates of the tile in hand), ``advance`` (the next
tile; the producer fetches it, the consumers receive it), ``done`` (the producer's
clean-up). The loop state (tile, coordinates, the ring's pipeline state) stays with the
caller, in plain variables, and the scheduler is frozen (passed through loops and branches
as it is, never carried): the kernel traces the same operations in the same order as when
this was written inline in it, and its SASS is the same (benchmarks/sass_snapshot.sh).
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
from cutlass import Int32, const_expr

#: bytes of L2 the causal tile order plans to fill with the K and V of the heads in flight
L2_PLAN_BYTES = 40 * 1024 * 1024


def persistence(d: int, causal: bool, varlen: bool, windowed: bool = False, paged: bool = False,
                dv: int | None = None) -> str:
    """``persistent=auto``: dynamic when causal or varlen (longest-first tiles taken greedily:
    +7%; causal lost 8-11% with round robin), and for d = 128 and 96 non-causal. H100 against
    round robin at d = 128: +0.3-1.3 % at s = 1024 / 4096 / 8192, both dtypes (round 16); against
    one CTA per tile at d = 96 s = 8192, two rounds: fp16 +4.0 / +1.9 %, bf16 +0.4 / -0.1 %
    (round 17). d = 192 and 256 non-causal: dynamic where the launch is plain (fixed length,
    not paged, no window, V as wide as K: ``dv`` None or d), for the split-KV tail it allows (H100, batch
    1, 5 heads, s = 4096: +30 / +33 %; s = 8192 within 1 %, round 21). Else on (H200: +3-8%
    non-causal at d = 64 and 128 against off), except d = 256: off (H200, s = 8192: +1.6% twice
    against on). d = 64 non-causal: dynamic where the launch is fixed-length, not paged and
    without a window, for the short tile its three WGs share (short_tile.py; round robin would
    give the short tiles to the same CTAs; round 22); its long kernel from m = 8192 is round
    robin (geometry.long_kernels: +2 % bf16 there, round 28). docs/perf-notes.md has the rounds."""
    plain = not (varlen or windowed or paged) and dv in (None, d)
    if causal or varlen or d in (96, 128) or (plain and d in (64, 192, 256)):
        return "dynamic"
    return "off" if d == 256 else "on"


@dataclass(frozen=True)
class WorkTiles:
    """The numbering of the work tiles of one launch (shared by the schedulers): the grid
    position, the tile count and tile -> (m_block, head, batch). Frozen: the DSL then
    passes a scheduler through the kernel's loops and branches as it is (a mutable object
    would have to be carried as loop values)."""

    persistent: ClassVar[bool] = False
    tile_m: int
    d: int
    dtype: Any
    lpt: bool
    walk: bool
    first: Int32  # blockIdx.x: this CTA's first tile
    seqlen_k: Int32
    heads: Int32
    batches: Int32
    num_m: Int32  # Q tiles per (batch, head)
    tiles: Int32
    step: Int32  # gridDim.x
    first_coords: tuple = ()
    step_coords: Optional[tuple] = None  # walk: the step's own coordinates, for next_coords
    counter: Optional[cute.Tensor] = None  # DynamicCounter's
    tile_pipe: Any = None
    tile_ids: Optional[cute.Tensor] = None
    table: Optional[cute.Tensor] = None  # varlen: (entries,) int32, batch << 16 | m_block
    # split-KV tail (split_kv; dynamic only): the first ``whole`` tiles run whole, each later one
    # as ``pieces`` items; ``tiles`` then counts items
    whole: Optional[Int32] = None
    pieces: Optional[Int32] = None
    split_tiles: Optional[Int32] = None  # the tiles cut (the tail: the work tiles less ``whole``)

    @classmethod
    def create(cls, kernel, mQ: cute.Tensor, mK: cute.Tensor, walk: bool = False, shape: Optional[tuple] = None, **extra):
        """``shape``: (seqlen_q, seqlen_k, heads, batches) when not read from mQ, mK's
        (seq, d, heads, batch) views (paged: the cache's n). ``table`` (varlen, in ``extra``):
        the work tiles are (entry, head), head outer, entry e -> (batch, m_block) = table[e].
        ``split`` (in ``extra``): (tiles, grid) -> (whole, pieces), ``split_kv.plan``."""
        first, _, _ = cute.arch.block_idx()
        table = extra.get("table")
        split = extra.pop("split", None)
        if const_expr(table is not None):  # entries per head in place of Q tiles per (batch, head)
            num_m, seqlen_k, heads, batches = cute.size(table, mode=[0]), Int32(0), mQ.shape[2], Int32(1)
        else:
            if const_expr(shape is None):
                seqlen_q, seqlen_k = mQ.shape[0], mK.shape[0]
                heads, batches = mQ.shape[2], mQ.shape[3]
            else:
                seqlen_q, seqlen_k, heads, batches = shape
            num_m = (seqlen_q + (kernel.tile_m - 1)) // kernel.tile_m
            if const_expr(kernel.cluster_m > 1):
                # whole clusters of Q tiles per (batch, head): a cluster's CTAs share its K and V
                num_m = (num_m + (kernel.cluster_m - 1)) // kernel.cluster_m * kernel.cluster_m
        tiles = num_m * heads * batches
        step, _, _ = cute.arch.grid_dim()
        if const_expr(split is not None):
            whole, pieces = split(tiles, step)
            extra = {**extra, "whole": whole, "pieces": pieces, "split_tiles": tiles - whole}
            tiles = whole + pieces * (tiles - whole)
        sched = cls(kernel.tile_m, kernel.d, kernel.dtype, kernel.lpt, walk, first, seqlen_k, heads, batches,
                    num_m, tiles, step, **extra)
        first_coords = sched.coords(first)
        step_coords = sched.coords(step) if const_expr(walk) else None
        return dataclasses.replace(sched, first_coords=first_coords, step_coords=step_coords)

    def initial(self):
        """(tile, m_block, head, batch) of this CTA's first work tile."""
        return (self.first, *self.first_coords)

    def current(self, tile: Int32, m_block: Int32, head: Int32, batch: Int32):
        """(m_block, head, batch) of ``tile`` (``walk``: the coordinates already in hand)."""
        if const_expr(self.walk):
            return m_block, head, batch
        return self.coords(tile)

    @cute.jit
    def coords(self, tile: Int32):
        """(m_block, head, batch) of work tile ``tile``: m_block fastest, or the
        longest-first order (``lpt_tile``), or (varlen) the table's entry, head outer.
        Split-KV tail: ``tile`` is an item (``piece``)."""
        if const_expr(self.pieces is not None):
            tile, _, _ = self.piece(tile)
        if const_expr(self.table is not None):
            head = tile // self.num_m
            packed = self.table[tile - head * self.num_m]
            return packed & 0xFFFF, head, packed >> 16
        if const_expr(self.lpt):
            return self.lpt_tile(tile)
        hb = tile // self.num_m
        batch = hb // self.heads
        return tile - hb * self.num_m, hb - batch * self.heads, batch

    @cute.jit
    def piece(self, item: Int32):
        """Split-KV tail: (work tile, piece, pieces) of ``item``: a whole tile is its own
        piece 0 of 1; tile whole + t is items whole + pieces t ... + pieces - 1."""
        tile, split, pieces = item, Int32(0), Int32(1)
        if item >= self.whole:
            t = (item - self.whole) // self.pieces
            tile, split, pieces = self.whole + t, item - self.whole - t * self.pieces, self.pieces
        return tile, split, pieces

    @cute.jit
    def next_coords(self, m_block: Int32, head: Int32, batch: Int32):
        """(m_block, head, batch) of the tile ``step`` after this one in the natural order,
        from the step's own coordinates (each digit below its radix, so one carry at most
        per digit)."""
        step = self.step_coords
        m_block, head, batch = m_block + step[0], head + step[1], batch + step[2]
        if m_block >= self.num_m:
            m_block, head = m_block - self.num_m, head + 1
        if head >= self.heads:
            head, batch = head - self.heads, batch + 1
        return m_block, head, batch

    @cute.jit
    def lpt_tile(self, bid: Int32):
        """(m_block, head, batch) of work tile ``bid`` in the longest-first order.

        Causal Q tiles differ in work (tile m_block visits m_block + 1 KV tiles), and the
        hardware starts CTAs in grid order, so the longest tiles go first: the ones left
        for the end are the short ones (less idle time in the last wave). The (head, batch)
        pairs are taken in sections of ``sw`` heads whose K and V fit in L2 together
        (``L2_PLAN_BYTES``; ``sw`` a power of two): within a section the order is m_block
        descending, then head, so the CTAs in flight share few K/V tensors. When ``sw`` does
        not divide the pairs, the partial section goes first: taken last, its long tiles
        would start in the final wave and end after everything else (d = 96's 21 heads)."""
        num_m, heads = self.num_m, self.heads
        kv_bytes_per_head = 2 * self.seqlen_k * self.d * (self.dtype.width // 8)
        heads_fit = L2_PLAN_BYTES // cutlass.max(kv_bytes_per_head, 1)
        sw = Int32(1)
        for b in cutlass.range_constexpr(1, 12):
            if heads_fit >= (1 << b):
                sw = Int32(1 << b)
        hb_total = heads * self.batches
        partial = hb_total - (hb_total // sw) * sw  # pairs of the partial section (0: none)
        lead = partial * num_m  # its tiles, numbered first
        sw_here, hb_base, r = sw, partial, bid - lead
        if bid < lead:
            sw_here, hb_base, r = partial, Int32(0), bid
        section = r // (sw_here * num_m)
        r = r - section * (sw_here * num_m)
        m_rev = r // sw_here
        hb = hb_base + section * sw_here + (r - m_rev * sw_here)
        batch = hb // heads
        return num_m - 1 - m_rev, hb - batch * heads, batch

    def ring_state(self, producer: bool):
        """The caller's state of the tile-id ring (``DynamicCounter`` only; else None)."""
        return None

    def done(self):
        """The producer's clean-up after its last tile (``DynamicCounter`` only)."""


@dataclass(frozen=True)
class SingleTile(WorkTiles):
    """persistent=off: one work tile per CTA, blockIdx.x (``initial`` only)."""


@dataclass(frozen=True)
class StaticPersistent(WorkTiles):
    """persistent=on: blockIdx.x, then every gridDim.x-th tile (round robin; in the natural
    order, ``walk``, the coordinates advance without division)."""

    persistent: ClassVar[bool] = True

    def advance(self, tile: Int32, m_block: Int32, head: Int32, batch: Int32, ring, producer: bool):
        """(tile, m_block, head, batch, ring) of the next work tile: the same for both roles."""
        tile = tile + self.step
        if const_expr(self.walk):
            m_block, head, batch = self.next_coords(m_block, head, batch)
        return tile, m_block, head, batch, ring


@dataclass(frozen=True)
class DynamicCounter(WorkTiles):
    """persistent=dynamic: the producer warp takes the next tile from the global counter
    ``mTileCounter[0]`` (plus gridDim.x: the first wave is blockIdx.x) and posts it through
    the 2-slot ring ``tile_ids`` (pipeline ``tile_pipe``) to the consumer WGs."""

    persistent: ClassVar[bool] = True

    def ring_state(self, producer: bool):
        role = pipeline.PipelineUserType.Producer if producer else pipeline.PipelineUserType.Consumer
        return pipeline.make_pipeline_state(role, 2)

    def advance(self, tile: Int32, m_block: Int32, head: Int32, batch: Int32, ring, producer: bool):
        if const_expr(producer):
            return self._fetch(m_block, head, batch, ring)
        return self._receive(m_block, head, batch, ring)

    @cute.jit
    def _fetch(self, m_block: Int32, head: Int32, batch: Int32, ring: pipeline.PipelineState):
        """Producer warp: lane 0 takes the next tile from the counter, the warp posts it."""
        tile_pipe, tile_ids, mTileCounter, tile_step = self.tile_pipe, self.tile_ids, self.counter, self.step
        lane = cute.arch.lane_idx()
        nxt = Int32(0)
        if lane == 0:
            nxt = tile_step + cute.arch.atomic_add(mTileCounter.iterator, Int32(1), scope="gpu")
        nxt = cute.arch.shuffle_sync(nxt, 0)
        tile_pipe.producer_acquire(ring)
        if lane == 0:
            tile_ids[ring.index] = nxt
            tile_pipe.producer_commit(ring)
        ring.advance()
        return nxt, m_block, head, batch, ring

    @cute.jit
    def _receive(self, m_block: Int32, head: Int32, batch: Int32, ring: pipeline.PipelineState):
        """Consumer WG: the next tile from the ring, the slot released by each warp's lane 0."""
        tile_pipe = self.tile_pipe
        tile_pipe.consumer_wait(ring)
        tile = self.tile_ids[ring.index]
        cute.arch.sync_warp()
        if cute.arch.lane_idx() == 0:
            tile_pipe.consumer_release(ring)
        ring.advance()
        return tile, m_block, head, batch, ring

    @cute.jit
    def done(self):
        """The last CTA done taking tiles zeroes the counters for the next launch."""
        mTileCounter, tile_step = self.counter, self.step
        if cute.arch.lane_idx() == 0:
            cute.arch.fence_acq_rel_gpu()
            done = cute.arch.atomic_add(mTileCounter.iterator + 1, Int32(1), scope="gpu")
            cute.arch.fence_acq_rel_gpu()
            if done == tile_step - 1:
                mTileCounter[0] = Int32(0)
                mTileCounter[1] = Int32(0)


def make_tile_scheduler(kernel, mQ: cute.Tensor, mK: cute.Tensor, mTileCounter: cute.Tensor, tile_pipe, tile_ids, shape=None, table=None, split=None):
    """The scheduler of ``kernel``'s ``persistent`` mode (``kernel.persistent``, ``.dynamic``);
    ``shape``, ``table`` and ``split`` (dynamic only) as ``WorkTiles.create``'s."""
    if const_expr(kernel.dynamic):
        return DynamicCounter.create(
            kernel, mQ, mK, counter=mTileCounter, tile_pipe=tile_pipe, tile_ids=tile_ids, shape=shape, table=table, split=split
        )
    assert split is None, "the split-KV tail needs the dynamic scheduler"
    if const_expr(kernel.persistent):
        return StaticPersistent.create(kernel, mQ, mK, walk=not kernel.lpt and table is None, shape=shape, table=table)
    return SingleTile.create(kernel, mQ, mK, shape=shape, table=table)
