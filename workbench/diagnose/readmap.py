"""Read maps: which source row did each output row actually read? (e.g. fmha's one-hot P,
fixture onehot-p: which V row did each query read.) The kernel's read_source hook names the
source rows of an output's matrices (registry.Views); the words below are fmha's.

Every output row O[i] is matched to its nearest source row V[j] of the same matrix (for
fmha: same batch, the query head's KV head under GQA); it "matches" when
||O[i] - V[j]|| <= MATCH_REL * ||V[j]||. The row the
query SHOULD have read comes from matching the reference output the same way, so no
knowledge of Q/K is needed; when fewer than 90% of the reference rows match a V row, P is
not one-hot and there is no read map. A row the reference leaves all zero (a query that sees
no key) is not counted.

By tile: for each KV tile t, the tile most of the queries meant for it read; when that is
not t for every tile, the pairs are stated as a rule ("queries meant for KV tile t read V
rows of tile 3-t"). By column: when most rows match no V row, each O column is matched to
the V column it equals over the intended rows; a permutation shows a V/O column bug.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from workbench.diagnose import pictures
from workbench.diagnose.errormap import _ranges
from workbench.diagnose.result import ReadMap

KV_TILE = 128
Q_TILE = 128
MATCH_REL = 0.02  # bf16 rounding of O is 2^-9 relative; a mixture of two rows is far above
MIN_EXPECTED_MATCH = 0.9
COLUMN_ROWS = 8192  # rows enough to tell columns apart
CONSISTENT = 0.9  # share of an intended tile's queries that must read the same tile for a rule


def nearest_rows(o, v, chunk_elems: int = 1 << 25):
    """For (G, M, D) rows o and (G, N, D) rows v: index of the nearest v row (-1 when no
    row is within MATCH_REL), per (G, M)."""
    import torch

    G, M, D = o.shape
    N = v.shape[1]
    o = o.float()
    v = v.float().to(o.device)
    vn = (v * v).sum(-1)  # (G, N)
    out = torch.full((G, M), -1, dtype=torch.long, device=o.device)
    step = max(1, chunk_elems // max(1, G * N))
    for s in range(0, M, step):
        oc = o[:, s:s + step]
        finite = torch.isfinite(oc).all(-1)
        oc0 = torch.nan_to_num(oc, nan=0.0, posinf=0.0, neginf=0.0)
        dist = (oc0 * oc0).sum(-1, keepdim=True) - 2 * oc0 @ v.transpose(1, 2) + vn.unsqueeze(1)
        idx = dist.argmin(-1)
        best = torch.gather(v, 1, idx.unsqueeze(-1).expand(-1, -1, D))
        err = (oc0 - best).norm(dim=-1)
        ok = finite & (err <= MATCH_REL * best.norm(dim=-1).clamp(min=1e-6))
        out[:, s:s + step] = torch.where(ok, idx, torch.full_like(idx, -1))
    return out


def read_map(name, og, eg, vg, labels: list[str] | None = None, picture: Path | None = None) -> ReadMap | None:
    """The read map of output `name`: og / eg, its (G, M, D) matrices as the kernel wrote them
    and as the reference has them; vg, the (G, N, D) source rows each row should equal one of
    (the kernel's read_source hook); labels, one per matrix."""
    import torch

    labels = labels or [f"m{g}" for g in range(og.shape[0])]
    exp_rows = nearest_rows(eg, vg)
    valid = exp_rows >= 0
    # a row the reference leaves all zero read no source row (fmha: a query that sees no key)
    read_any = eg.float().abs().amax(-1) > 0
    if int(read_any.sum()) == 0 or int(valid.sum()) < MIN_EXPECTED_MATCH * int(read_any.sum()):
        return None
    got_rows = nearest_rows(og, vg)
    G, M = exp_rows.shape
    N = vg.shape[1]
    T = -(-N // KV_TILE)
    exp_t = torch.where(valid, exp_rows // KV_TILE, torch.full_like(exp_rows, -1))
    got_t = torch.where(got_rows >= 0, got_rows // KV_TILE, torch.full_like(got_rows, -1))
    correct = valid & (got_rows == exp_rows)
    unmatched = valid & (got_rows < 0)
    wrong_row = valid & ~correct & ~unmatched & (got_t == exp_t)
    wrong_tile = valid & ~correct & ~unmatched & (got_t != exp_t)
    qtile = (torch.arange(M, device=exp_rows.device) // Q_TILE).view(1, M).expand(G, M)

    per_tile = []
    for t in range(-(-M // Q_TILE)):
        sel = valid & (qtile == t)
        n = int(sel.sum())
        if n == 0:
            continue
        et = sorted({int(x) for x in exp_t[sel].unique()})
        gt = sorted({int(x) for x in got_t[sel & (got_rows >= 0)].unique()})
        per_tile.append({
            "q_tile": t,
            "queries": n,
            "correct": int((correct & sel).sum()),
            "wrong_row": int((wrong_row & sel).sum()),
            "wrong_tile": int((wrong_tile & sel).sum()),
            "unmatched": int((unmatched & sel).sum()),
            "expected_tiles": _ranges(et),
            "read_tiles": _ranges(gt),
        })
    key = (exp_t[valid] * (T + 1) + (got_t[valid] + 1)).flatten()
    counts = torch.bincount(key.cpu(), minlength=T * (T + 1)) if key.numel() else torch.zeros(0, dtype=torch.long)
    confusion = [[int(i) // (T + 1), int(i) % (T + 1) - 1, int(c)] for i, c in enumerate(counts.tolist()) if c]

    examples = []
    wrong_any = (valid & ~correct).nonzero().tolist()
    for g, i in wrong_any[:8]:
        examples.append({"head": labels[g], "query": i, "expected_row": int(exp_rows[g, i]), "read_row": int(got_rows[g, i])})

    total = int(valid.sum())
    n_ok, n_wr, n_wt, n_un = int(correct.sum()), int(wrong_row.sum()), int(wrong_tile.sum()), int(unmatched.sum())
    parts = [f"{n_ok}/{total} queries read the intended V row"]
    matched_wrong = valid & ~correct & ~unmatched
    if int(matched_wrong.sum()):
        deltas = Counter((got_rows[matched_wrong] - exp_rows[matched_wrong]).tolist())
        tiles = Counter(got_t[matched_wrong].tolist())
        d, dn = deltas.most_common(1)[0]
        tt, tn = tiles.most_common(1)[0]
        share = int(matched_wrong.sum())
        if n_wt:
            parts.append(f"{n_wt} read a row of another KV tile")
        if n_wr:
            parts.append(f"{n_wr} read another row of the right tile")
        if dn / share >= 0.5 and d % KV_TILE == 0:
            parts.append(f"{dn}/{share} wrong reads are exactly {d // KV_TILE:+d} tile(s) away (same row)")
        elif dn / share >= 0.5:
            parts.append(f"{dn}/{share} wrong reads are exactly {d:+d} rows away")
        elif tn / share >= 0.5:
            parts.append(f"{tn}/{share} wrong reads come from KV tile {tt}")
    columns = column_map(og, vg, exp_rows, valid) if n_un * 2 > total else None
    columns_moved = bool(column_rule(columns))
    if n_un:
        why = "but each of their columns equals a V column" if columns_moved else "(a mixture: P not one-hot, or NaN/unwritten)"
        parts.append(f"{n_un} equal no V row {why}")
    rm = ReadMap(
        output=name, queries=total, correct=n_ok, wrong_row=n_wr, wrong_tile=n_wt, unmatched=n_un,
        per_tile=per_tile, confusion=confusion, examples=examples, summary="; ".join(parts), kv_tiles=T,
        column_map=columns, column_summary=column_rule(columns),
    )
    same_row = bool(matched_wrong.any()) and bool(((got_rows - exp_rows)[matched_wrong] % KV_TILE == 0).all())
    if not columns_moved:  # else every row was read, only its columns moved
        rm.tile_pairs = tile_pairs(confusion, T)
        rm.tile_summary = tile_rule(rm.tile_pairs, T, same_row)
    if picture is not None and pictures.available():  # without matplotlib the diagnosis notes it once
        pictures.draw_read_map(picture, exp_rows, got_rows, N, KV_TILE, labels, title=f"read map of {name}: {rm.summary}")
        rm.picture = picture.name
    return rm


def tile_pairs(confusion, n_tiles: int) -> list[list[int]]:
    """[intended tile, the tile most of its queries read (-1: no V row)] for every intended
    tile whose queries agree (at least CONSISTENT of them); [] when any tile's do not."""
    by_tile: dict[int, Counter] = {}
    for exp_t, got_t, count in confusion:
        by_tile.setdefault(exp_t, Counter())[got_t] += count
    pairs = []
    for exp_t in sorted(by_tile):
        got_t, count = by_tile[exp_t].most_common(1)[0]
        if count < CONSISTENT * sum(by_tile[exp_t].values()):
            return []
        pairs.append([exp_t, got_t])
    return pairs


def tile_rule(pairs, n_tiles: int, same_row: bool) -> str:
    """The pairs as one sentence, or "" when every tile reads itself (or no rule holds)."""
    read = {e: g for e, g in pairs if g >= 0}
    lost = [e for e, g in pairs if g < 0]
    if not pairs or (all(e == g for e, g in read.items()) and not lost):
        return ""
    parts = []
    if read and any(e != g for e, g in read.items()):
        rule = _tile_formula(read, n_tiles)
        where = ", the same row within the tile" if same_row else ""
        parts.append(f"queries meant for KV tile t read V rows of {rule}{where} (KV tiles: {n_tiles})")
    if lost:
        parts.append(f"queries meant for KV tile(s) {_ranges(lost)} read no V row")
    return "; ".join(parts)


def _tile_formula(read: dict[int, int], n: int) -> str:
    if all(g == n - 1 - e for e, g in read.items()):
        return f"tile {n - 1}-t (the tiles in reverse order)"
    for k in range(1, n):
        if all(g == e + k - n for e, g in read.items()):
            return f"tile t-{n - k}"
        if all(g == e + k for e, g in read.items()):
            return f"tile t+{k}"
        if all(g == (e + k) % n for e, g in read.items()):
            return f"tile (t+{k}) mod {n}" if 2 * k <= n else f"tile (t-{n - k}) mod {n}"
    if len(set(read.values())) == 1:
        return f"tile {next(iter(read.values()))} (whatever t)"
    return "tiles " + ", ".join(f"{e}->{g}" for e, g in sorted(read.items()))


def column_map(og, vg, exp_rows, valid) -> list[int] | None:
    """For rows that should equal V rows: per O column, the V column it equals over all of
    them (within MATCH_REL of that column's norm), or None when some column equals none."""
    import torch

    idx = exp_rows.clamp(min=0)
    want = torch.gather(vg.float(), 1, idx.unsqueeze(-1).expand(-1, -1, vg.shape[-1]))[valid]  # (Q, D)
    got = og.float()[valid]
    keep = torch.isfinite(got).all(-1)
    want, got = want[keep][:COLUMN_ROWS].double(), got[keep][:COLUMN_ROWS].double()
    if want.shape[0] == 0:
        return None
    dist = torch.cdist(got.T.contiguous(), want.T.contiguous())  # (D out, D v)
    best = dist.argmin(-1)
    norms = want.norm(dim=0)[best]
    if not bool((dist.gather(1, best.view(-1, 1)).view(-1) <= MATCH_REL * norms.clamp(min=1e-6)).all()):
        return None
    return best.tolist()


def column_rule(cols: list[int] | None) -> str:
    if cols is None:
        return ""
    n = len(cols)
    if cols == list(range(n)):
        return ""
    what = "a permutation of" if sorted(cols) == list(range(n)) else "copies of"
    rule = next((f"V column c^{k}" for k in range(1, n) if all(c == (i ^ k) for i, c in enumerate(cols))), None)
    rule = rule or next((f"V column (c+{k}) mod {n}" for k in range(1, n) if all(c == (i + k) % n for i, c in enumerate(cols))), None)
    if rule is None and cols == list(range(n - 1, -1, -1)):
        rule = f"V column {n - 1}-c"
    rule = rule or "V column " + ", ".join(f"{i}<-{c}" for i, c in enumerate(cols) if i != c)[:300]
    return f"every query read its intended V row, but O's columns are {what} V's: O column c holds {rule}"
