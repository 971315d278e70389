"""Per-tile error maps of an output against its reference, and their pictures.

An output is seen as matrices through the kernel's view hooks (registry.Views; the generic
view: a 2-D output is one matrix, an N-D one a matrix per index of its leading axes). One
matrix: tiles of 64 rows x all columns, or 128 x 128 when it is wider than 256 columns (the
kernel may set the tile, e.g. fmha's S and P: Q tile x KV tile). Several matrices: side by
side, one grid column per matrix (e.g. fmha's (batch, head)), 64-row blocks. Vectors: 64-row
blocks.
"""

from __future__ import annotations

from workbench.diagnose.registry import Views
from workbench.diagnose.result import ErrorMap

WIDE_TILE, BLOCK = 128, 64


def canvas(t, name: str, params=None, views: Views | None = None):
    """A 2-D (rows, cols) view of an output for maps and pictures, the tile size (rows, cols),
    labels, the names of column groups (one per matrix) and the width of one group."""
    if t.dim() <= 1:
        return t.reshape(-1, 1), (BLOCK, 1), "64-row block", "", None, None
    mats = (views or Views()).as_matrices(name, t, params)
    if mats is None:
        flat = t.reshape(-1, 1)
        return flat, (BLOCK, 1), "64-element block", "", None, None
    G, R, C = mats.values.shape
    if G == 1:
        tile = mats.tile or ((WIDE_TILE, WIDE_TILE) if C > 256 else (BLOCK, C))
        wide = tile[1] < C
        row_label = mats.row_label or (f"{tile[0]}-row tile" if wide else f"{tile[0]}-row block")
        col_label = mats.col_label or (f"{tile[1]}-column tile" if wide else "all columns")
        return mats.values[0], tile, row_label, col_label, None, None
    c = mats.values.permute(1, 0, 2).reshape(R, G * C)
    names = mats.labels or [f"m{i}" for i in range(G)]
    tile = mats.tile or (BLOCK, C)
    return c, tile, mats.row_label or f"{tile[0]}-row block", mats.col_label or "matrix", names, C


def _tile_reduce(x, tr, tc, op):
    import torch

    R, C = x.shape
    Rp, Cp = -(-R // tr) * tr, -(-C // tc) * tc
    pad = torch.zeros((Rp, Cp), dtype=x.dtype, device=x.device)
    pad[:R, :C] = x
    v = pad.view(Rp // tr, tr, Cp // tc, tc)
    return v.amax(dim=(1, 3)) if op == "max" else v.sum(dim=(1, 3))


def _ranges(idx: list[int], limit: int = 10) -> str:
    if not idx:
        return "none"
    out, start, prev = [], idx[0], idx[0]
    for i in idx[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    if len(out) > limit:
        out = out[:limit] + ["…"]
    return ",".join(out)


def error_map(name, actual_vals, actual_cls, ref_vals, ref_cls, eps: float, params=None, views: Views | None = None) -> tuple[ErrorMap, dict]:
    """The ErrorMap of one output plus the canvases needed to draw it (kept out of the data)."""
    import torch

    both = (actual_cls == 0) & (ref_cls == 0)
    err = torch.where(both, (actual_vals - ref_vals).abs(), torch.zeros_like(actual_vals)).float()
    bad = (actual_cls != ref_cls) & (ref_cls == 0)
    unwritten = actual_cls == 2
    ref_abs = torch.where(ref_cls == 0, ref_vals.abs(), torch.zeros_like(ref_vals))
    ref_max = float(ref_abs.max()) if ref_abs.numel() else 0.0
    scale = ref_max if ref_max > 0 else 1.0
    e2, (tr, tc), row_label, col_label, names, group = canvas(err, name, params, views)
    b2 = canvas(bad, name, params, views)[0]
    grid = _tile_reduce(e2, tr, tc, "max")
    badgrid = _tile_reduce(b2.to(torch.int32), tr, tc, "sum")
    ok_level = 4 * max(eps, 2.0**-16)
    wrong = (grid / scale > ok_level) | (badgrid > 0)
    rows_bad = [int(i) for i in torch.nonzero(wrong.any(dim=1)).flatten()]
    cols_bad = [int(i) for i in torch.nonzero(wrong.any(dim=0)).flatten()]
    nr, nc = grid.shape
    n_wrong = int(wrong.sum())
    if n_wrong == 0:
        summary = f"all {nr * nc} tiles within rounding ({ok_level:.2g} of max |ref|)"
    elif n_wrong == nr * nc:
        summary = f"every tile ({nr * nc}) has errors"
    else:
        summary = f"{n_wrong} of {nr * nc} tiles have errors: {row_label}s {_ranges(rows_bad)}"
        if nc > 1:
            summary += f"; {col_label or 'column'}s " + (
                _ranges(cols_bad) if names is None else ",".join(names[i] for i in cols_bad[:12]) + ("…" if len(cols_bad) > 12 else "")
            )
        if tr == BLOCK and rows_bad and len(rows_bad) > 1 and all(r % 2 == 1 for r in rows_bad):
            summary += " (rows 64-127 of 128-row tiles: the second warpgroup)"
        elif tr == BLOCK and rows_bad and len(rows_bad) > 1 and all(r % 2 == 0 for r in rows_bad):
            summary += " (rows 0-63 of 128-row tiles: the first warpgroup)"
    n_bad = int(badgrid.sum())
    if n_bad:
        summary += f"; {n_bad} element(s) NaN/Inf/unwritten where the reference is finite"
    flat = torch.where(badgrid > 0, torch.full_like(grid, float("inf")), grid).flatten()
    worst = int(flat.argmax()) if flat.numel() else 0
    emap = ErrorMap(
        output=name,
        shape=list(actual_vals.shape),
        tile=[tr, tc if names is None else 1],
        row_label=row_label,
        col_label=col_label,
        grid=[[float(v) for v in row] for row in grid.tolist()],
        bad=[[int(v) for v in row] for row in badgrid.tolist()],
        ref_max=ref_max,
        max_err=float(err.max()) if err.numel() else None,
        ok_level=ok_level,
        worst_tile=[worst // nc, worst % nc] if nc else [0, 0],
        col_names=names,
        summary=summary,
    )
    drawing = {"err": e2, "bad": b2, "unwritten": canvas(unwritten, name, params, views)[0], "scale": scale, "tile": (tr, tc), "group": group}
    return emap, drawing
