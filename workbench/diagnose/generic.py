"""Generic mutants: bugs of the store / tile indexing that any tiled kernel can have.

They transform the reference outputs (they never look at the inputs), one matrix at a
time, as the kernel's view hooks see its outputs (registry.Views: a 2-D output is one
(rows, cols) matrix; e.g. fmha's 4-D (batch, seq, heads, d) is one (seq, d) matrix per
(batch, head)). Outputs of other ranks (1-D, 3-D: e.g. fmha's LSE) are left as the
reference. Tiles are 128 rows (e.g. fmha's Q tiles) and, for the column mutants, 128
columns (e.g. KV tiles of fmha's S and P).
"""

from __future__ import annotations

from workbench.diagnose.registry import NotApplicable, Pred, mutant

TILE = 128
HALF = 64  # rows per consumer warpgroup of a 128-row tile


def _each(cx, fn, ranks=(2, 4)):
    """Apply fn((G, R, C) float tensor) -> (values, unwritten, care) | None to every
    matrix output; returns {name: Pred} or raises NotApplicable when nothing changes."""
    import torch

    out = {}
    for name, ref in cx.expected.items():
        if ref.dim() not in ranks:
            continue
        view = cx.matrices(name, ref.float())
        if view is None:
            continue
        mats, back = view.values, view.back
        res = fn(mats)
        if res is None:
            continue
        values, unwritten, care = res
        values = back(values)
        unwritten = None if unwritten is None else back(unwritten)
        care = None if care is None else back(care)
        if unwritten is not None:
            values = torch.where(unwritten, torch.full_like(values, float("nan")), values)
        out[name] = Pred(values.contiguous(), unwritten, care)
    if not out:
        raise NotApplicable("no output of a shape this bug can affect")
    return out


def _tile_source(x, dim: int, tile: int, source_of):
    """Rebuild x along `dim` so that tile t holds tile source_of(t, T) (None: unwritten).
    Rows with no source row (a source tile shorter than the destination) are don't-care."""
    import torch

    size = x.shape[dim]
    T = -(-size // tile)
    idx = torch.arange(size, device=x.device)
    t, r = idx // tile, idx % tile
    src_tile = torch.tensor([(-1 if (s := source_of(k, T)) is None else s) for k in range(T)], device=x.device)[t]
    src = src_tile * tile + r
    unwritten = src_tile < 0
    care = ~unwritten & (src < size) | unwritten
    src = torch.where(unwritten | (src >= size), torch.zeros_like(src), src)
    values = x.index_select(dim, src)
    shape = [1] * x.dim()
    shape[dim] = size
    unwritten_m = unwritten.view(shape).expand_as(x)
    care_m = care.view(shape).expand_as(x)
    return values, (unwritten_m if bool(unwritten.any()) else None), (None if bool(care.all()) else care_m)


def _tiles_needed(x, dim, min_tiles=2):
    if -(-x.shape[dim] // TILE) < min_tiles:
        return False
    return True


@mutant("transposed", "output stored transposed / column-major: element (r, c) written at c·rows + r "
        "(the epilogue's store layout has its modes swapped)", outputs=("*",), family="layout")
def transposed(cx):
    def fn(x):
        G, R, C = x.shape
        if R < 2 or C < 2:
            return None
        return x.transpose(1, 2).reshape(G, R, C), None, None

    return _each(cx, fn)


@mutant("zeros", "output all zeros: the epilogue stored a cleared accumulator (MMA results never "
        "accumulated into it, or the store reads the wrong registers)", outputs=("*",), family="store")
def zeros(cx):
    import torch

    return _each(cx, lambda x: (torch.zeros_like(x), None, None))


@mutant("unwritten", "output never stored: it still holds the poison pattern (store predicated off, "
        "wrong pointer, or the kernel returned early)", outputs=("*",), family="store")
def unwritten(cx):
    import torch

    return _each(cx, lambda x: (x, torch.ones_like(x, dtype=torch.bool), None))


@mutant("q-tile0", "every 128-row Q tile stores the rows of tile 0 (the CTA's Q tile index is "
        "stuck at 0: blockIdx not used in the Q/O coordinate)", outputs=("*",), family="tiles")
def q_tile0(cx):
    return _each(cx, lambda x: _tile_source(x, 1, TILE, lambda t, T: 0) if _tiles_needed(x, 1) else None)


@mutant("q-tiles-swapped", "128-row Q tiles swapped in pairs (tile 2k <-> 2k+1: the tile "
        "coordinate's bits are mixed up)", outputs=("*",), family="tiles")
def q_tiles_swapped(cx):
    def src(t, T):
        s = t ^ 1
        return s if s < T else t

    return _each(cx, lambda x: _tile_source(x, 1, TILE, src) if _tiles_needed(x, 1) else None)


@mutant("q-tile-shift", "row tile t holds the rows of tile t-1 (Q/O tile index off by one); "
        "tile 0 is never written", outputs=("*",), family="tiles")
def q_tile_shift(cx):
    return _each(cx, lambda x: _tile_source(x, 1, TILE, lambda t, T: t - 1 if t else None) if _tiles_needed(x, 1) else None)


@mutant("q-tail-unwritten", "rows of the last, partial 128-row tile never stored (grid = "
        "floor(rows/128) instead of ceil)", outputs=("*",), family="tiles")
def q_tail_unwritten(cx):
    def fn(x):
        R = x.shape[1]
        if R % TILE == 0:
            return None
        return _tile_source(x, 1, TILE, lambda t, T: None if t == T - 1 else t)

    return _each(cx, fn)


@mutant("kv-col-tile0", "every 128-column KV tile of the output holds tile 0's columns (the K "
        "tile coordinate stuck at 0, or the store's column tile index)", outputs=("s", "p"), dims=(2,), family="tiles")
def kv_col_tile0(cx):
    return _each(cx, lambda x: _tile_source(x, 2, TILE, lambda t, T: 0) if _tiles_needed(x, 2) else None, ranks=(2,))


@mutant("kv-col-tiles-swapped", "128-column KV tiles of the output swapped in pairs (2k <-> 2k+1)",
        outputs=("s", "p"), dims=(2,), family="tiles")
def kv_col_tiles_swapped(cx):
    def src(t, T):
        s = t ^ 1
        return s if s < T else t

    return _each(cx, lambda x: _tile_source(x, 2, TILE, src) if _tiles_needed(x, 2) else None, ranks=(2,))


@mutant("kv-col-tile-shift", "KV column tile t holds tile t-1's columns (KV tile index off by one "
        "in the store); tile 0 never written", outputs=("s", "p"), dims=(2,), family="tiles")
def kv_col_tile_shift(cx):
    return _each(cx, lambda x: _tile_source(x, 2, TILE, lambda t, T: t - 1 if t else None) if _tiles_needed(x, 2) else None, ranks=(2,))


@mutant("kv-col-tail-unwritten", "columns of the last, partial 128-column KV tile never stored",
        outputs=("s", "p"), dims=(2,), family="tiles")
def kv_col_tail_unwritten(cx):
    def fn(x):
        C = x.shape[2]
        if C % TILE == 0 or C < TILE:
            return None
        return _tile_source(x, 2, TILE, lambda t, T: None if t == T - 1 else t)

    return _each(cx, fn, ranks=(2,))


@mutant("col-stride2", "columns read with stride 2: out[r, c] = ref[r, 2c] in the flat row-major "
        "order (c >= cols/2 reads the next row); a wrong column stride in a copy/store layout",
        outputs=("*",), family="layout")
def col_stride2(cx):
    import torch

    def fn(x):
        G, R, C = x.shape
        if C < 2:
            return None
        flat = x.reshape(G, R * C)
        r = torch.arange(R, device=x.device).view(R, 1)
        c = torch.arange(C, device=x.device).view(1, C)
        src = r * C + 2 * c
        care = (src < R * C).expand(R, C)
        src = torch.where(care, src, torch.zeros_like(src))
        values = flat[:, src.reshape(-1)].reshape(G, R, C)
        return values, None, (None if bool(care.all()) else care.unsqueeze(0).expand(G, R, C))

    return _each(cx, fn)


@mutant("half-rows-unwritten", "rows 64..127 of every 128-row tile never stored (the second "
        "consumer warpgroup skips its store)", outputs=("*",), family="warpgroups")
def half_rows_unwritten(cx):
    import torch

    def fn(x):
        R = x.shape[1]
        if R <= HALF:
            return None
        rows = torch.arange(R, device=x.device)
        mask = ((rows % TILE) >= HALF).view(1, R, 1).expand_as(x)
        return x, mask, None

    return _each(cx, fn)


@mutant("half-rows-dup", "rows 64..127 of every 128-row tile repeat rows 0..63 (both consumer "
        "warpgroups use warpgroup 0's row offset)", outputs=("*",), family="warpgroups")
def half_rows_dup(cx):
    import torch

    def fn(x):
        R = x.shape[1]
        if R <= HALF:
            return None
        rows = torch.arange(R, device=x.device)
        src = torch.where((rows % TILE) >= HALF, rows - HALF, rows)
        return x.index_select(1, src), None, None

    return _each(cx, fn)
