"""Persistent tile scheduler of the grouped (varlen) GEMM: linear tile -> (expert, m_tile, n_tile).

The grouped GEMM computes, for every expert e, the rows cu_seqlens[e] : cu_seqlens[e+1] of
the sorted routed rows times expert e's weights. Its work tiles are numbered

    expert by expert (expert 0 first); inside an expert, n_tile outer and m_tile inner:
    tile = base[e] + n_tile * mt[e] + m_tile,   mt[e] = ceil(rows of e / tile_m),
                                                 base[e] = sum over e' < e of mt[e'] * n_tiles

so the CTAs in flight at one time share an expert and, mostly, one B column slab (the
expert's weights, read once from L2 by many m tiles). An expert with no rows has mt = 0
and owns no tile. The total, sum of mt[e] * n_tiles, is not known on the host without a
synchronisation (the counts live on the GPU), so nothing on the host needs it:

* grid = min(number of SMs, an upper bound of the tile count): sum ceil(c_e / tile_m) <=
  ceil(R / tile_m) + E - 1 for R routed rows (each expert wastes less than one tile);
* each CTA walks tiles blockIdx.x, blockIdx.x + gridDim.x, ... (static round robin; the
  producer warpgroup and the consumer warpgroups walk the same sequence independently, so
  no tile id crosses shared memory), and finds each tile's expert by walking the experts
  forward from the last one it found (``ExpertWalk``: tiles only grow, so the walk is
  monotone and costs O(E) reads of cu_seqlens per CTA over the whole launch, not per tile);
  the walk ending past the last expert is the end of the CTA's work.

``walk_model`` is the pure-Python model of exactly this mapping (the same loop, the same
arithmetic); tests/test_moe_grouped.py checks on the CPU that it covers every tile exactly
once for empty experts, one-row experts, tails and grids larger than the tile count.

Bug hooks (stage C's ``bug`` variant):

* ``expert_offset_off_by_one``: an expert's first row is read from cu_seqlens[e + 1] instead
  of cu_seqlens[e] (the row count stays right): each expert computes rows of the next one
  (clamped to the end of the rows, so it stays in bounds); expert 0's rows are never written.
* ``tail_from_next``: the row tiles are cut every tile_m sorted rows over all experts, not
  per expert (the tail of an expert is not masked): a tile belongs to the expert of its
  first row and runs all its tile_m rows with that expert's weights, so the rows of the next
  expert inside an expert's last tile are read (rows[] of the next expert) and stored with
  the wrong weights. Every row is still written exactly once (no race: deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cutlass
import cutlass.cute as cute
from cutlass import Int32, const_expr


# --------------------------------------------------------------------------------------
# Host side: plain Python
# --------------------------------------------------------------------------------------
def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def max_tiles(num_rows: int, num_experts: int, n_tiles: int, tile_m: int) -> int:
    """An upper bound of the tile count, known without the per-expert counts."""
    if num_rows <= 0:
        return 0
    return (ceil_div(num_rows, tile_m) + num_experts - 1) * n_tiles


def grid_size(num_rows: int, num_experts: int, n_tiles: int, tile_m: int, num_sms: int) -> int:
    """CTAs of one launch: one per SM, fewer when there cannot be that many tiles (at least 1:
    a launch with no rows still runs, each CTA finds no tile)."""
    return max(1, min(num_sms, max_tiles(num_rows, num_experts, n_tiles, tile_m)))


@dataclass(frozen=True)
class TileCoord:
    expert: int
    m_tile: int
    n_tile: int
    row_start: int  # first sorted row of this tile
    rows: int  # rows of the tile that belong to the expert (1..tile_m)


def walk_model(
    cu_seqlens: Sequence[int], n_tiles: int, tile_m: int, grid: int, bug: str = "none"
) -> list[list[TileCoord]]:
    """The tiles each CTA 0..grid-1 works on, in order: the device walk, in Python."""
    cu = [int(c) for c in cu_seqlens]
    num_experts = len(cu) - 1
    total_rows = cu[-1]
    out: list[list[TileCoord]] = []
    for cta in range(grid):
        work = []
        e, base, mt = 0, 0, _m_tiles(cu, 0, tile_m, bug) if num_experts > 0 else 0
        tile = cta
        while True:
            # ExpertWalk.locate
            while e < num_experts and tile >= base + mt * n_tiles:
                base += mt * n_tiles
                e += 1
                mt = _m_tiles(cu, e, tile_m, bug) if e < num_experts else 0
            if e >= num_experts:
                break
            local = tile - base
            n_tile = local // mt
            m_tile = local - n_tile * mt
            start = cu[e + 1] if bug == "expert_offset_off_by_one" else cu[e]
            row_start = start + m_tile * tile_m
            rows = min(cu[e + 1] - cu[e] - m_tile * tile_m, tile_m, total_rows - row_start)
            if bug == "tail_from_next":
                row_start = (ceil_div(cu[e], tile_m) + m_tile) * tile_m
                rows = min(tile_m, total_rows - row_start)
            work.append(TileCoord(e, m_tile, n_tile, row_start, rows))
            tile += grid
        out.append(work)
    return out


def _m_tiles(cu: list[int], e: int, tile_m: int, bug: str = "none") -> int:
    if bug == "tail_from_next":
        return ceil_div(cu[e + 1], tile_m) - ceil_div(cu[e], tile_m)
    return ceil_div(cu[e + 1] - cu[e], tile_m)


# --------------------------------------------------------------------------------------
# Device side
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupedTiles:
    """Static facts of one launch's tile numbering (frozen: passed through the kernel's
    loops as it is). ``mCu`` is cu_seqlens (E + 1,) int32 in global memory."""

    tile_m: int
    n_tiles: Int32  # tiles along N (the same for every expert)
    num_experts: Int32
    total_rows: Int32
    mCu: cute.Tensor
    bug: str = "none"

    @staticmethod
    def create(mCu: cute.Tensor, tile_m: int, n_tiles: Int32, total_rows: Int32, bug: str = "none"):
        return GroupedTiles(tile_m, n_tiles, Int32(cute.size(mCu, mode=[0]) - 1), total_rows, mCu, bug)

    @cute.jit
    def m_tiles(self, e: Int32) -> Int32:
        """ceil(rows of expert e / tile_m); 0 for e >= E (past the last expert)."""
        mt = Int32(0)
        if e < self.num_experts:
            if const_expr(self.bug == "tail_from_next"):
                mt = self._ceil_m(self.mCu[e + 1]) - self._ceil_m(self.mCu[e])
            else:
                mt = self._ceil_m(self.mCu[e + 1] - self.mCu[e])
        return mt

    def _ceil_m(self, rows: Int32) -> Int32:
        return (rows + (self.tile_m - 1)) // self.tile_m

    def first(self):
        """(tile, expert, base, mt) before this CTA's first ``locate``."""
        tile, _, _ = cute.arch.block_idx()
        return Int32(tile), Int32(0), Int32(0), self.m_tiles(Int32(0))

    def step(self) -> Int32:
        grid, _, _ = cute.arch.grid_dim()
        return Int32(grid)

    @cute.jit
    def locate(self, tile: Int32, e: Int32, base: Int32, mt: Int32):
        """Walk the experts forward to the one owning ``tile``: (e, base, mt) of it; e >= E
        when ``tile`` is past the last tile."""
        while e < self.num_experts and tile >= base + mt * self.n_tiles:
            base = base + mt * self.n_tiles
            e = e + 1
            mt = self.m_tiles(e)
        return e, base, mt

    @cute.jit
    def coords(self, tile: Int32, e: Int32, base: Int32, mt: Int32):
        """(m_tile, n_tile, row_start, rows) of ``tile`` of expert ``e`` (valid e only):
        ``rows`` = the tile's rows that are expert e's (the tail tile has fewer)."""
        local = tile - base
        n_tile = local // mt
        m_tile = local - n_tile * mt
        first = self.mCu[e]
        if const_expr(self.bug == "expert_offset_off_by_one"):
            first = self.mCu[e + 1]
        row_start = first + m_tile * self.tile_m
        rows = cutlass.min(self.mCu[e + 1] - self.mCu[e] - m_tile * self.tile_m, self.tile_m)
        if const_expr(self.bug == "tail_from_next"):
            row_start = (self._ceil_m(self.mCu[e]) + m_tile) * self.tile_m
            rows = Int32(self.tile_m)
        rows = cutlass.min(rows, self.total_rows - row_start)
        return m_tile, n_tile, row_start, rows
