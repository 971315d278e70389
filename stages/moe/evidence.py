"""MoE evidence for the diagnosis: what a failing run's fixtures imply (an evidence hook), a
read map for the onehot-routing fixture, and error-map grids for MoE outputs.

The grids reach the diagnosis through evidence_maps.py's view hooks. The onehot read map
decodes each row's (expert, column) from the reference, which the generic read map (output
rows matched against source rows, @read_source_hook) cannot express, so it is a plain
function for now, called by tests and by hand:

  onehot_read_map(out, expected, inputs, params)   which expert and token each row read
  token_grid(shape)                                tiles of a (tokens, hidden) output y
  expert_row_blocks(cu_seqlens, tile_m)            (routed rows, N) outputs: rows grouped by
  expert_error_grid(err, bad, cu_seqlens, ...)     expert, one grid row per expert m-tile

Outputs: stage D's y (T, H); stage C's up-projection (R, I) over the routed rows sorted by
expert (stages/moe/plan.py). No torch at import time.
"""

from __future__ import annotations

from collections import Counter

from workbench.diagnose import evidence_hook

#: the code of fixtures/moe.py's onehot-routing (kept equal to ONEHOT_GATE, ONEHOT_EXPERT_STRIDE)
ONEHOT_VALUE = 16.0
ONEHOT_STRIDE = 7
TOKEN_TILE, HIDDEN_TILE, M_TILE = 128, 256, 128


# --------------------------------------------------------------------------------------
# evidence hook: what the other fixtures of the run say
# --------------------------------------------------------------------------------------
def _all_right(ev, fixture):
    outs = ev.outputs_right if fixture == ev.fixture else ev.fixtures.get(fixture)
    if not outs:
        return None
    return all(outs.values())


@evidence_hook
def moe_evidence(ev):
    """Hints from which MoE fixtures pass (fixture names of fixtures/moe.py)."""
    ran = {f: _all_right(ev, f) for f in set(ev.fixtures) | {ev.fixture}}
    ran = {f: ok for f, ok in ran.items() if ok is not None}
    if not ran or all(ran.values()):
        return []
    hints = []
    bad = sorted(f for f, ok in ran.items() if not ok)
    good = sorted(f for f, ok in ran.items() if ok)
    if ran.get("unit-topk-weights") and ran.get("random") is False:
        hints.append("the expert path is right when every top-k weight is 1 (unit-topk-weights passes) and wrong with "
                     "softmax weights: the weights are applied wrongly (skipped, twice, or to the wrong choice)")
    if ran.get("onehot-routing") and ran.get("random") is False:
        hints.append("every token reads its intended expert and x row (onehot-routing passes): routing, plan and "
                     "gather are right; look at the arithmetic (activation, accumulation, weights)")
    if ran.get("identity-w2") and ran.get("random") is False:
        hints.append("with W2 a copy (identity-w2) the output is right: the up-projection and the combine work; the "
                     "error is in the down-projection (its W2 expert, layout or rows)")
    tails = [f for f in ("tail-plus-one", "one-token-per-expert") if ran.get(f) is False]
    if tails and ran.get("random") is not False and ran.get("all-to-one-expert") is not False:
        hints.append(f"only the fixtures with partial m-tiles fail ({', '.join(tails)}): row tails of an expert "
                     "(the masked last tile: stored, unstored, or stored into the next expert's rows)")
    if ran.get("empty-experts") is False and ran.get("random"):
        hints.append("random routing passes but empty experts fail: an expert with no rows still gets (or shifts) "
                     "work: the tile scheduler or cu_seqlens offsets")
    if ran.get("all-to-one-expert") is False and ran.get("random"):
        hints.append("balanced routing passes but one expert with all tokens fails: an expert with many m-tiles "
                     "(the m-tile loop, or a per-expert row limit)")
    if ran.get("large-gates") is False and good and "large-gates" in bad and len(bad) == 1:
        hints.append("only large gates fail: the activation at saturation (exp overflow in the sigmoid, or "
                     "gpt-oss's clamp)")
    return hints


# --------------------------------------------------------------------------------------
# read map of onehot-routing
# --------------------------------------------------------------------------------------
def onehot_code(tokens, experts, H: int, I: int, kind: str):
    """The hot column of expert e's output row for token t under onehot-routing: h index
    i = ((t mod H) + 7e) mod I; y column i mod H (kind "y") or i itself (kind "up")."""
    i = ((tokens % H) + ONEHOT_STRIDE * experts) % I
    return i % H if kind == "y" else i


def decode_rows(rows):
    """Per row of (N, C): (expert, hot column, clean) where clean says the row is one value
    16(e+1) (to 1%) at one column and 0 elsewhere; expert -1 when not clean."""
    import torch

    r = rows.float()
    finite = torch.isfinite(r).all(-1)
    r0 = torch.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
    col = r0.abs().argmax(-1)
    val = r0.gather(1, col.view(-1, 1)).squeeze(1)
    code = torch.round(val / ONEHOT_VALUE)
    nonzero = (r0.abs() > 1e-3 * ONEHOT_VALUE).sum(-1)
    clean = finite & (nonzero == 1) & (code >= 1) & ((val - code * ONEHOT_VALUE).abs() <= 0.01 * val.abs())
    expert = torch.where(clean, code.long() - 1, torch.full_like(col, -1))
    return expert, col, clean


def onehot_read_map(out, expected, inputs, params=None, max_examples: int = 8) -> dict | None:
    """Which expert and which token each output row read, under onehot-routing.

    out / expected: one output of the stage as the kernel wrote it and as the reference has
    it, either y (T, H) (row = token) or the up-projection (R, I) (row = sorted routed
    row). The intended (expert, column) of each row is decoded from the reference, so no
    routing needs to be known; a row that decodes to another expert read the wrong
    expert's weights (or the wrong routed row); one with the right expert but another
    column read another token's x row (the candidate tokens are those whose code is that
    column). Returns plain data (summary, counts, expert confusion, examples) or None when
    the reference does not decode (not the onehot-routing fixture)."""
    import torch

    x = inputs.get("x")
    w1 = inputs.get("w1")
    if x is None or w1 is None or out.dim() != 2:
        return None
    T, H = x.shape
    I = w1.shape[-1] // 2
    kind = "y" if tuple(out.shape) == (T, H) and "w2" in inputs else "up"
    e_exp, c_exp, ok_exp = decode_rows(expected)
    if float(ok_exp.float().mean()) < 0.9:
        return None
    e_got, c_got, ok_got = decode_rows(out.to(expected.device))
    valid = ok_exp
    correct = valid & ok_got & (e_got == e_exp) & (c_got == c_exp)
    unmatched = valid & ~ok_got
    wrong_expert = valid & ok_got & (e_got != e_exp)
    wrong_token = valid & ok_got & (e_got == e_exp) & (c_got != c_exp)
    total = int(valid.sum())
    what = "tokens" if kind == "y" else "routed rows"
    parts = [f"{int(correct.sum())}/{total} {what} read the intended expert and x row"]
    confusion = Counter()
    for a, b in zip(e_exp[wrong_expert].tolist(), e_got[wrong_expert].tolist()):
        confusion[(a, b)] += 1
    if int(wrong_expert.sum()):
        deltas = Counter((e_got - e_exp)[wrong_expert].tolist())
        d, n = deltas.most_common(1)[0]
        parts.append(f"{int(wrong_expert.sum())} read another expert's weights" +
                     (f" ({n} of them expert {d:+d})" if n * 2 >= int(wrong_expert.sum()) else ""))
    examples = []
    if int(wrong_token.sum()):
        parts.append(f"{int(wrong_token.sum())} read the right expert but another token's x row")
        tokens = torch.arange(T, device=expected.device)
        rows = wrong_token.nonzero().flatten()[:max_examples]
        for r in rows.tolist():
            e = int(e_got[r])
            codes = onehot_code(tokens, torch.tensor(e, device=tokens.device), H, I, kind)
            cand = (codes == c_got[r]).nonzero().flatten().tolist()
            examples.append({"row": r, "expert": e, "read_tokens": cand[:4]})
    if int(unmatched.sum()):
        parts.append(f"{int(unmatched.sum())} hold no single expert's value (a mixture, several choices, "
                     f"NaN or unwritten)")
    for r in (wrong_expert.nonzero().flatten()[:max_examples]).tolist():
        examples.append({"row": r, "expected_expert": int(e_exp[r]), "read_expert": int(e_got[r])})
    return {
        "output_kind": kind,
        "rows": total,
        "correct": int(correct.sum()),
        "wrong_expert": int(wrong_expert.sum()),
        "wrong_token": int(wrong_token.sum()),
        "unmatched": int(unmatched.sum()),
        "expert_confusion": [[a, b, n] for (a, b), n in sorted(confusion.items())],
        "examples": examples,
        "summary": "; ".join(parts),
    }


# --------------------------------------------------------------------------------------
# error-map grids
# --------------------------------------------------------------------------------------
def token_grid(shape) -> dict:
    """The error-map grid of a (tokens, hidden) output: tiles of 128 tokens (the combine's and
    the grouped kernels' row tile) x 256 hidden columns."""
    T, H = shape
    return {"tile": (min(TOKEN_TILE, T), min(HIDDEN_TILE, H)), "row_label": "128-token tile",
            "col_label": "256-column tile"}


def expert_row_blocks(cu_seqlens, tile_m: int = M_TILE) -> list[tuple[int, int, str]]:
    """(first row, end row, label) of each expert's m-tile over the sorted routed rows: the
    blocks a grouped kernel works on. Empty experts have none; labels "e3 t1" = expert 3,
    its m-tile 1 (the last one of an expert may be partial: its tail)."""
    cu = [int(c) for c in (cu_seqlens.tolist() if hasattr(cu_seqlens, "tolist") else cu_seqlens)]
    blocks = []
    for e in range(len(cu) - 1):
        for t, lo in enumerate(range(cu[e], cu[e + 1], tile_m)):
            blocks.append((lo, min(lo + tile_m, cu[e + 1]), f"e{e} t{t}"))
    return blocks


def expert_error_grid(err, bad, cu_seqlens, tile_m: int = M_TILE, tile_n: int = HIDDEN_TILE, ok_level: float = 0.0) -> dict:
    """Per (expert m-tile, column tile) of a (routed rows, N) output: max |error| and the
    count of NaN/Inf/unwritten elements. err: |actual - reference| (0 where not comparable),
    bad: bool mask of NaN/Inf/unwritten elements. Returns {"rows": labels, "grid",
    "bad", "summary"}; the summary names the expert tiles over ok_level (absolute)."""
    import torch

    blocks = expert_row_blocks(cu_seqlens, tile_m)
    N = err.shape[1]
    cols = list(range(0, N, tile_n))
    grid, badg, wrong = [], [], []
    for lo, hi, label in blocks:
        e_rows = err[lo:hi].float()
        b_rows = bad[lo:hi]
        g_row = [float(e_rows[:, c:c + tile_n].max()) if hi > lo else 0.0 for c in cols]
        b_row = [int(b_rows[:, c:c + tile_n].sum()) for c in cols]
        grid.append(g_row)
        badg.append(b_row)
        if max(g_row, default=0.0) > ok_level or sum(b_row):
            wrong.append(label)
    tails = [lab for (lo, hi, lab) in blocks if hi - lo < tile_m]
    if not wrong:
        summary = f"all {len(blocks)} expert m-tiles within {ok_level:.2g}"
    else:
        summary = f"{len(wrong)} of {len(blocks)} expert m-tiles have errors: {', '.join(wrong[:12])}" + ("…" if len(wrong) > 12 else "")
        if set(wrong) <= set(tails) and tails:
            summary += " (only partial tail tiles)"
    return {"rows": [b[2] for b in blocks], "cols": [f"c{c}" for c in cols], "grid": grid, "bad": badg,
            "summary": summary}
