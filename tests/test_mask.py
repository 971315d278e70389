"""Stage D's mask: alignment (top_left | bottom_right) and sliding window (window_left,
window_right), stages/fmha/mask.py and reference.py, on the CPU.

* The kernel's own tile arithmetic (mask.kv_tile_range, mask.mask_steps: the code the
  kernel traces, run here on Python ints) against a brute-force list of the keys each row
  sees: every visible key lies in a visited tile, no visited tile is useless (the skipped
  tiles are exactly those nobody sees), every tile the kernel runs mask-free is fully
  visible to every row, and a Q tile that sees nothing still visits exactly one tile.
* The reference (streamed, fp32) against an independent dense float64 computation of the
  same definition, including rows that see no key (O = 0, LSE = -inf), and its
  low-precision (SDPA per block) path.
"""

import itertools
import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stages.fmha import mask as mk  # noqa: E402
from stages.fmha import reference as R  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def visible(m, n, causal=False, align="top_left", wl=-1, wr=-1):
    """(m, n) bool, the module docstring's definition written out directly."""
    off = 0 if align == "top_left" else n - m
    i = torch.arange(m)[:, None]
    j = torch.arange(n)[None, :]
    ok = torch.ones(m, n, dtype=torch.bool)
    right = 0 if causal else wr
    if right >= 0:
        ok &= j <= i + off + right
    if wl >= 0:
        ok &= j >= i + off - wl
    return ok


# (causal, align, window_left, window_right): flash-attn's usual windows, empty ones, edges
MASKS = [
    (False, "top_left", -1, -1), (True, "top_left", -1, -1), (True, "bottom_right", -1, -1),
    (False, "top_left", 128, 0), (False, "bottom_right", 128, 0), (True, "bottom_right", 256, -1),
    (False, "top_left", 0, 0), (False, "bottom_right", 0, 0), (False, "top_left", 1000, 1000),
    (False, "bottom_right", 37, 5), (False, "top_left", -1, 200), (False, "bottom_right", 300, -1),
    (True, "top_left", 4096, -1), (False, "top_left", 127, 129),
]
SIZES = [(1000, 1000), (17, 1000), (1000, 17), (384, 1024), (1024, 384), (1, 1), (300, 5000)]


@pytest.mark.parametrize("tile_m", [128, 192])
@pytest.mark.parametrize("causal,align,wl,wr", MASKS)
def test_kernel_tile_range_and_masked_steps(tile_m, causal, align, wl, wr):
    """For every Q tile of every size: the visited KV tiles n_min .. n_max - 1 hold every key
    a row of the tile sees (nothing needed is skipped), n_max - 1 and n_min each hold a key
    some row of the (unclamped) tile sees (nothing useless is loaded), unless no row sees any
    key, when exactly one tile is visited; and the visits the kernel runs mask-free (n_up ..
    n_lo - 1) are tiles every stored row sees entirely."""
    tile_n = 128
    spec = mk.MaskSpec.make(tile_m, tile_n, causal, align, wl, wr)
    for m, n in SIZES:
        n_tiles = -(-n // tile_n)
        num_m = -(-m // tile_m)
        rows_all = num_m * tile_m
        # the kernel's rows include those past m (computed, never stored): judge loads on them
        off = 0 if align == "top_left" else n - m
        i = torch.arange(rows_all)[:, None]
        j = torch.arange(n)[None, :]
        seen = torch.ones(rows_all, n, dtype=torch.bool)
        right = 0 if causal else wr
        if right >= 0:
            seen &= j <= i + off + right
        if wl >= 0:
            seen &= j >= i + off - wl
        assert torch.equal(seen[:m], visible(m, n, causal, align, wl, wr))
        for mb in range(num_m):
            n_min, n_max = (int(x) for x in mk.kv_tile_range(spec, mb, m, n))
            n_up, n_lo = (int(x) for x in mk.mask_steps(spec, mb, n_min, n_max, m, n))
            steps = n_max - n_min
            where = f"m={m} n={n} m_block={mb}: range [{n_min}, {n_max}) n_up={n_up} n_lo={n_lo}"
            assert 0 <= n_min < n_max <= n_tiles, where
            rows = seen[mb * tile_m:(mb + 1) * tile_m]
            cols = rows.any(dim=0).nonzero().flatten()
            if len(cols):
                assert n_min * tile_n <= int(cols.min()) and int(cols.max()) < n_max * tile_n, where
                assert rows[:, (n_max - 1) * tile_n:n_max * tile_n].any(), f"{where}: tile n_max - 1 is useless"
                assert rows[:, n_min * tile_n:(n_min + 1) * tile_n].any(), f"{where}: tile n_min is useless"
            else:
                assert steps == 1, f"{where}: a Q tile that sees nothing must visit exactly one tile"
            assert 1 <= n_up <= steps and n_up <= n_lo <= max(steps, n_up), where
            if not spec.lower:
                assert n_lo == n_max, where
            stored = rows[: max(0, min(m - mb * tile_m, tile_m))]
            for v in range(n_up, min(n_lo, steps)):
                t = n_max - 1 - v
                assert (t + 1) * tile_n <= n, f"{where}: mask-free visit {v} is the KV tail"
                assert stored[:, t * tile_n:(t + 1) * tile_n].all(), f"{where}: mask-free visit {v} (tile {t}) is not fully visible"


def test_default_masks_keep_todays_kernel_constants():
    """Plain causal and no mask keep the kernel's old paths (one masked visit for square
    tiles, no left loop): the compile-time flags the kernel branches on."""
    assert not mk.MaskSpec.make(128, 128, False).upper and not mk.MaskSpec.make(128, 128, False).lower
    causal = mk.MaskSpec.make(128, 128, True)
    assert causal.plain_causal and not causal.upper_loop and not causal.lower_loop
    assert mk.MaskSpec.make(192, 128, True).upper_loop
    assert mk.MaskSpec.make(128, 128, True, "bottom_right").upper_loop
    assert mk.MaskSpec.make(128, 128, False, "top_left", 64, -1).lower_loop
    assert mk.MaskSpec.make(128, 128, True, "top_left", -1, 0).window_right == 0  # causal is window_right 0
    with pytest.raises(ValueError, match="causal sets window_right = 0: window_right=7 would be ignored"):
        mk.MaskSpec.make(128, 128, True, "top_left", -1, 7)  # a wider right edge was dropped unseen
    with pytest.raises(ValueError, match="align"):
        mk.MaskSpec.make(128, 128, True, "top-right")


def dense64(q, k, v, mask, softmax="exp"):
    """Independent float64 attention over an explicit (m, n) mask; rows with no visible key:
    O = 0, LSE = -inf (identity: O = (masked S) V, LSE = 0)."""
    q, k, v = (x.double() for x in (q, k, v))
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if softmax == "identity":
        return s.masked_fill(~mask, 0.0) @ v, torch.zeros(s.shape[:-1], dtype=torch.float64)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
    return p @ v, lse


def _qkv(lead, m, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*lead, r, d, generator=g) * sd for r, sd in ((m, 1.5), (n, 1.5), (n, 1.0))]


REF_CASES = [(m, n, *mask) for (m, n), mask in itertools.product([(70, 90), (90, 70), (33, 200), (200, 33)], MASKS)]


@pytest.mark.parametrize("m,n,causal,align,wl,wr", REF_CASES)
def test_reference_equals_dense_float64(m, n, causal, align, wl, wr):
    """reference.attention (fp32, streamed over 16 x 24 blocks) gives the dense float64
    result of the definition within fp32 rounding, for exp and identity; every row that
    sees no key has O = 0 exactly and LSE = -inf."""
    q, k, v = _qkv((2,), m, n, 32, seed=m * n + wl)
    mask = visible(m, n, causal, align, wl, wr)
    empty = ~mask.any(dim=1)
    for softmax in ("exp", "identity"):
        o_want, lse_want = dense64(q, k, v, mask, softmax)
        o, lse = R.attention(q, k, v, torch.float32, softmax=softmax, causal=causal, align=align,
                             window_left=wl, window_right=wr, block=(16, 24))
        assert not o.isnan().any() and not lse.isnan().any()
        tol = 64 * torch.finfo(torch.float32).eps * max(1.0, float(o_want.abs().max()))
        assert float((o.double() - o_want).abs().max()) <= tol, softmax
        if softmax == "exp":
            assert not o[:, empty].any() and bool((lse[:, empty] == float("-inf")).all())
            fin = ~empty
            assert float((lse[:, fin].double() - lse_want[:, fin]).abs().max()) <= 1e-4


def test_low_precision_reference_with_windows():
    """The bf16 calibration reference with a window (SDPA per block of Q rows on the keys it
    sees) is the fp32 result within bf16 error, never NaN, 0 on rows that see no key."""
    m, n = 700, 600
    q, k, v = _qkv((1, 2), m, n, 64, seed=3)
    for causal, align, wl, wr in [(False, "bottom_right", 128, 0), (False, "top_left", 0, 0), (True, "bottom_right", 50, -1),
                                  (False, "top_left", 100, -1)]:
        o32, _ = R.attention(q, k, v, torch.float32, causal=causal, align=align, window_left=wl, window_right=wr)
        olo, lselo = R.attention(q, k, v, torch.bfloat16, causal=causal, align=align, window_left=wl, window_right=wr)
        empty = ~visible(m, n, causal, align, wl, wr).any(dim=1)
        assert olo.dtype == torch.bfloat16 and not olo.isnan().any()
        assert float((olo.float() - o32).abs().max()) < 0.05
        assert not olo[..., empty, :].any() and bool((lselo[..., empty] == float("-inf")).all())


def test_bshd_gqa_window_and_aliases():
    """attention_bshd passes align and the window through (GQA heads, flash-attn layout);
    causal_align's old spelling and align's agree; visible_pairs counts the mask."""
    g = torch.Generator().manual_seed(11)
    b, m, n, h, hk, d = 2, 150, 260, 4, 2, 32
    q = torch.randn(b, m, h, d, generator=g)
    k, v = torch.randn(b, n, hk, d, generator=g), torch.randn(b, n, hk, d, generator=g)
    o, lse = R.attention_bshd(q, k, v, torch.float32, align="bottom_right", window_left=40, window_right=3)
    mask = visible(m, n, False, "bottom_right", 40, 3)
    kk, vv = (x.transpose(1, 2).repeat_interleave(h // hk, dim=1) for x in (k, v))
    o_want, lse_want = dense64(q.transpose(1, 2), kk, vv, mask)
    assert float((o.transpose(1, 2).double() - o_want).abs().max()) < 1e-4
    assert float((lse.double() - lse_want).abs().max()) < 1e-4
    a, _ = R.attention_bshd(q, k, v, torch.float32, causal=True, causal_align="bottom-right")
    c, _ = R.attention_bshd(q, k, v, torch.float32, causal=True, align="bottom_right")
    assert torch.equal(a, c)
    for args in [(m, n, "top_left", -1, -1), (m, n, "bottom_right", 40, 3), (n, m, "bottom_right", 0, 0), (m, n, "top_left", 5, -1)]:
        assert R.visible_pairs(args[0], args[1], align=args[2], window_left=args[3], window_right=args[4]) == int(
            visible(args[0], args[1], False, args[2], args[3], args[4]).sum())


def test_stage_flops_count_the_window():
    """StageD.flops: the standard count without a window (halved for causal), 4·b·h·d·pairs
    with one (s = 32768, window 4096: about window / s of the full count)."""
    from stages.fmha.stage_d_fmha import StageD
    from workbench.kernels.stage import Params

    base = {"batch": 1, "heads": 2, "m": 4096, "n": 4096, "d": 64, "causal": False}
    full = StageD().flops(Params(base))
    assert full == 4.0 * 2 * 4096 * 4096 * 64
    assert StageD().flops(Params({**base, "causal": True})) == full / 2
    p = Params({**base, "m": 32768, "n": 32768, "causal": True, "align": "bottom_right", "window_left": 4096, "window_right": -1})
    ratio = StageD().flops(p) / StageD().flops(Params({**base, "m": 32768, "n": 32768}))
    assert abs(ratio - 4097 / 32768) < 0.01


# --------------------------------------------------------------------------------------
# fixtures and mutants: each window bug is seen on window-edges and named by the diagnosis
# --------------------------------------------------------------------------------------
# (name, params, mutants that must be seen and named on window-edges)
WINDOW_CASES = [
    ("br-window", dict(m=300, n=520, d=64, causal=False, align="bottom_right", window_left=100, window_right=20),
     ["window-left-plus-one", "window-left-minus-one", "window-right-plus-one", "window-right-minus-one",
      "window-misaligned", "window-ignored", "window-left-tile-skipped"]),
    ("causal-local", dict(m=400, n=400, d=128, causal=True, align="top_left", window_left=150, window_right=-1),
     ["window-left-plus-one", "window-left-minus-one", "window-ignored", "window-left-tile-skipped",
      "causal-diag-excluded", "causal-missing"]),
    ("tl-window-m>n", dict(m=520, n=300, d=64, causal=False, align="top_left", window_left=64, window_right=0),
     ["window-left-plus-one", "window-left-minus-one", "window-right-plus-one", "window-right-minus-one",
      "window-misaligned", "window-ignored"]),
]


def _window_case(params, fixture="window-edges", seed=0):
    from stages.fmha.stage_d_fmha import StageD
    from workbench.kernels.fixtures import get_fixture, load_fixtures
    from workbench.kernels.stage import Params

    p = Params({"batch": 1, "heads": 2, "kv_heads": 1, "dtype": "bf16", **params})
    stage = StageD()
    ins, outs = stage.inputs(p), stage.outputs(p)
    fx = get_fixture(load_fixtures(ROOT / "fixtures"), fixture, ins)
    inputs = fx.make(ins, p, seed, "cpu")
    expected = stage.reference(inputs, p, {}, torch.float32)
    return p, inputs, {k: v.float() for k, v in expected.items()}, outs


@pytest.mark.parametrize("name,params,wanted", WINDOW_CASES, ids=[c[0] for c in WINDOW_CASES])
def test_window_mutants_are_named_on_window_edges(name, params, wanted):
    """On the window-edges fixture each window bug's output (its mutant's prediction with
    bf16-kernel-like noise) FAILs clearly (>= 0.05 from the reference) and the diagnosis
    names that mutant first (or a twin that lists it); the correct output, with the same
    noise, is explained by no mutant. Also: the mutants reproduce the stage's reference
    (calibrated) with the window."""
    import attention_cases as A
    from workbench.diagnose import MutantContext, diagnose, mutants_for, views_for
    from workbench.diagnose import core

    mutants = mutants_for(ROOT / "stages" / "fmha")
    p, inputs, expected, outs = _window_case(params)
    cx = MutantContext(inputs=inputs, expected=expected, params=p, variants={}, fixture="window-edges",
                       views=views_for(ROOT / "stages" / "fmha"))
    names = list(outs)
    refc = {n: core.classify(expected[n]) for n in names}
    ok = diagnose(A.kernel_like(expected, outs, seed=99), expected, inputs, p, {}, "window-edges", mutants)
    assert ok.status == "ok" and not ok.explanations, ok.headline
    cache: dict = {}
    for i, m in enumerate(wanted):
        pred = mutants[m].fn(cx)
        assert "o" in pred, f"{m}: the mutants could not calibrate against the windowed reference"
        cls = {n: core._pred_classes(core._as_pred(pred[n]), expected[n].shape, expected[n].device) for n in names if n in pred}
        dist = core._pred_distance(cls, {}, refc, names)
        assert dist >= 0.05, f"{name}: {m} is not clearly visible on window-edges (dist {dist:.3f})"
        out = A.kernel_like({**expected, **pred}, outs, seed=i)
        d = diagnose(out, expected, inputs, p, {}, "window-edges", mutants, prediction_cache=cache)
        assert d.explanations, f"{name}: {m} not explained: {d.headline}"
        top = d.explanations[0]
        assert top.name == m or m in top.same_as, f"{name}: {m} explained as {top.name} (same as {top.same_as})"


@pytest.mark.parametrize("bug,mutant_name", [("left_tile_skipped", "window-left-tile-skipped"),
                                             ("window_left_plus_one", "window-left-plus-one")])
@pytest.mark.parametrize("d", [64, 128])
def test_injected_bug_emulated_from_the_kernels_tile_math_is_named(bug, mutant_name, d):
    """The GPU proof's bugs (variant mask_bug), emulated on the CPU from the kernel's own tile
    arithmetic (mask.kv_tile_range with the bug: which KV tiles each Q tile loads; the
    element mask one key wider for window_left_plus_one): on window-edges the diagnosis names
    the mutant that tests/test_gpu_mask.py expects on the GPU."""
    import attention_cases as A
    from workbench.diagnose import diagnose, mutants_for

    params = dict(m=700, n=1000, d=d, causal=False, align="bottom_right", window_left=250, window_right=64)
    p, inputs, expected, outs = _window_case(params)
    variants = {"mask_bug": bug, "consumers": "auto"}
    tile_m = 192 if d == 64 else 128  # consumers=auto: 3 WGs for d = 64 non-causal
    spec = mk.MaskSpec.make(tile_m, 128, False, "bottom_right", 250, 64, bug)
    m, n = 700, 1000
    allowed = visible(m, n, False, "bottom_right", 251 if bug == "window_left_plus_one" else 250, 64)
    loaded = torch.zeros(m, n, dtype=torch.bool)
    for mb in range(-(-m // tile_m)):
        n_min, n_max = (int(x) for x in mk.kv_tile_range(spec, mb, m, n))
        loaded[mb * tile_m:(mb + 1) * tile_m, n_min * 128:n_max * 128] = True
    mask = allowed & loaded
    q, k, v = (inputs[x].float().transpose(1, 2) for x in ("q", "k", "v"))
    k, v = (x.repeat_interleave(2, dim=1) for x in (k, v))  # heads 2, kv_heads 1
    o, lse = dense64(q, k, v, mask)
    out = A.kernel_like({"o": o.transpose(1, 2).float(), "lse": lse.float()}, outs, seed=5)
    diag = diagnose(out, expected, inputs, p, variants, "window-edges", mutants_for(ROOT / "stages" / "fmha"))
    assert diag.explanations, diag.headline
    assert diag.explanations[0].name == mutant_name or mutant_name in diag.explanations[0].same_as, diag.headline


@pytest.mark.slow  # two cold sm_90a compiles of stage D
@pytest.mark.parametrize("args", [
    ["--d", "128", "-p", "causal=true", "-p", "align=bottom_right", "-p", "window_left=4096"],  # the speed goal's kernel
    # 192-row tiles at 160 registers (d=64 non-causal's default), with the softcap's tanh on every
    # logit (tests/test_softcap.py). Causal with consumers=3 (not a default) spills 28 B with both.
    ["--d", "64", "-p", "window_left=256", "-p", "window_right=64", "-p", "softcap=30"],
])
def test_windowed_kernels_compile_without_spills_or_serialized_wgmma(fmha_ws, wb, args):
    """A windowed stage D (masked steps at both ends of the KV walk) fits its registers and
    keeps ptxas's wgmma pipelining: no spill, and WARPGROUP syncs stay at one per four HGMMA
    or fewer, as in the default kernels (serialization puts one behind every HGMMA). With a
    softcap the cap is in the SASS: one MUFU.RCP per logit (64 per S tile, 2 call sites at least)."""
    import json

    proc = wb("compile", "d", *args, "--keep", "sass", "--json", cwd=fmha_ws, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rec = json.loads(proc.stdout)
    (kernel,) = rec["resources"]["kernels"]
    assert (kernel["spill_store_bytes"], kernel["spill_load_bytes"]) == (0, 0), kernel
    found = rec["sass"]["instructions"]
    hgmma = sum(v for k, v in found.items() if k.startswith("HGMMA"))
    assert hgmma and found.get("WARPGROUP", 0) * 3 <= hgmma, found
    if "softcap=30" in args:
        (sass,) = [fmha_ws / v for k, v in rec["artifacts"].items() if k.endswith(".sass")]
        assert sass.read_text().count("MUFU.RCP") >= 2 * 64, "the cap's rcp is missing"


def test_peers_refuse_masks_they_cannot_express():
    """wb bench's SDPA peers have no sliding window and no bottom-right alignment: asked for
    one they refuse (the bench shows the reason) instead of timing another mask."""
    from stages.fmha import peers

    q = torch.zeros(1, 64, 2, 64)
    k = torch.zeros(1, 96, 2, 64)
    inputs = {"q": q, "k": k, "v": k}
    for params in ({"window_left": 16}, {"causal": True, "align": "bottom_right"}, {"window_right": 8}):
        with pytest.raises(ValueError, match="no sliding window"):
            peers.make_peer("sdpa-math", inputs, params)
    assert peers._mask({"causal": True, "align": "bottom_right"}, 64, 64)[3]  # m == n: is_causal is that mask


def test_gpu_verify_mask_section_plans_and_covers_the_axes():
    """benchmarks/gpu_verify_parity.sh's mask section, read on the CPU: every `wb sweep` line
    plans (kernel.yaml accepts each case, as `wb sweep` checks before running anything), the
    case count in its comment is the true one, and it covers both alignments, causal both
    ways, m < n, m == n, m > n, tails, d 64/128, bf16/fp16, GQA and MQA, a left-only, a
    right-only and a two-sided window, (0, 0), and the injected bugs' pytest file."""
    import re
    import shlex

    from test_gpu_verify_matrix import _parse
    from workbench.kernels.registry import load_kernels, resolve_stage
    from workbench.remote import sweep
    from workbench.workspace import find_workspace

    text = (ROOT / "benchmarks" / "gpu_verify_parity.sh").read_text()
    section = text.split("    mask)", 1)[1].split(";;", 1)[0]
    ws = find_workspace(ROOT)
    spec = resolve_stage(ws, "d", load_kernels(ws))
    cases = []
    for raw in section.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("wb sweep "):
            stage, axes, variants, _ = _parse(shlex.split(line.replace('"$T"', "60")))
            cases += [c.params for c in sweep.plan(spec, axes, variants)]
    stated = re.search(r"(\d+) cases", section)
    assert stated and int(stated.group(1)) == len(cases) + 1  # + the one long `wb run`
    values = lambda key: {p[key] for p in cases}  # noqa: E731
    assert values("align") == {"top_left", "bottom_right"} and values("causal") == {False, True}
    assert values("d") == {64, 128} and values("dtype") == {"bf16", "fp16"}
    assert {(p["m"] > p["n"]) - (p["m"] < p["n"]) for p in cases} == {-1, 0, 1}
    assert any(p["n"] % 128 for p in cases) and {1} <= values("kv_heads") and any(p["heads"] // p["kv_heads"] == 4 for p in cases)
    windows = {(p["window_left"], p["window_right"]) for p in cases if not p["causal"]}
    assert {(0, 0), (-1, 200), (1000, 1000)} <= windows and any(wl >= 0 and wr < 0 for wl, wr in
                                                                 {(p["window_left"], p["window_right"]) for p in cases})
    assert "tests/test_gpu_mask.py" in section and "window_left=4096" in section
