"""Stage D's head dims 64, 96, 128, 192, 256 on the CPU (no GPU here; the kernel itself is
verified by benchmarks/gpu_verify_parity.sh's headdim section on a GPU):

  * the geometry per d (stages/fmha/geometry.py) fits shared memory, keeps d = 64 / 128 as
    measured, refuses what cannot fit, and is what kernel.yaml and the kernel use;
  * fixtures build their per-KV-tile patterns in the kernel's tiles for that d (80 keys for
    d = 256, 112 for d = 192), and the reference and every stage D fixture work for every d;
  * the tile-by-tile mutants simulate the kernel's tile width, and the two bugs of code that
    still assumes d <= 128 (QKᵀ or O cut at 128 columns) are named by the diagnosis;
  * two sm_90a compiles: d = 256 causal (80-column tiles, three masked visits, O staged in Q)
    and d = 96 (64-byte swizzle): the probed fragments have the new shapes.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_cases as A  # noqa: E402

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")

from stages.fmha import geometry as G  # noqa: E402
from workbench.kernels.stage import Params, TensorSpec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------
def test_geometry_fits_and_keeps_the_measured_dims():
    """Every d's auto geometry fits 227 KiB, its KV tile is a multiple of 16 (the PV MMA's
    k-step) and its consumer registers hold O, S and P (d/2 + tile_n/2 + tile_n/4 32-bit
    values) with room to spare; d = 64 and 128 are the measured ones, unchanged."""
    for d in G.HEAD_DIMS:
        for causal in (False, True):
            g = G.geometry(d, causal)
            assert g.tile_n % 16 == 0 and g.tile_n <= 256
            assert G.smem_bytes(d, g.tile_n, g.kv_stages, g.consumers, 1, g.o_in_q) <= G.SMEM_CAPACITY
            regs = {2: 240, 3: 160}[g.consumers]
            p_regs = 0 if g.p_smem else g.tile_n // 4  # P through shared memory holds no registers
            assert d // 2 + g.tile_n // 2 + p_regs <= regs - 32, (d, causal)
            assert G.smem_bytes(d, g.tile_n, g.kv_stages, g.consumers, 1, g.o_in_q, p_smem=g.p_smem) <= G.SMEM_CAPACITY
    assert G.geometry(64, False) == G.Geometry(64, 128, 3, 3, False)
    assert G.geometry(64, True) == G.Geometry(64, 128, 3, 2, False)
    # a softcap with a sliding window spilled 28 B at 3 WGs' 160 registers: 2 WGs then
    assert G.geometry(64, False, capped_window=True) == G.Geometry(64, 128, 3, 2, False)
    assert G.geometry(128, False) == G.geometry(128, True) == G.Geometry(128, 128, 2, 2, False)
    # d = 96 non-causal: 192-row tiles with P through shared memory, 2 stages beside its tiles
    # (measured +3-5%); causal, or P kept in registers: 128's shape with a third stage
    # d = 96 non-causal: FA4's 192 x 144 tiles with P through shared memory and O staged in Q,
    # 2 stages (measured +6% bf16 over 128 x 128 with P in registers); paged: 192 x 128 (the
    # pages divide 128), O in its own tile; causal, or P kept in registers: 128's shape with a
    # third stage
    assert G.geometry(96, False) == G.Geometry(96, 144, 2, 3, True, p_smem=True)
    assert G.geometry(96, False, paged=True) == G.Geometry(96, 128, 2, 3, False, p_smem=True)
    assert G.geometry(96, True) == G.geometry(96, False, p_smem_ok=False) == G.Geometry(96, 128, 3, 2, False)
    assert G.smem_bytes(96, 144, 2, 3, 1, True, p_smem=True) == 204800 + 1024
    assert G.smem_bytes(96, 128, 2, 3, 1, False, p_smem=True) == 223232 + 1024
    assert [G.kv_tile(d) for d in G.HEAD_DIMS] == [128, 144, 128, 112, 80]
    assert [G.kv_tile(d, causal=True) for d in G.HEAD_DIMS] == [128, 128, 128, 112, 80]
    # what wb compile reported for the defaults (bytes, dynamic + static)
    assert G.smem_bytes(128, 128, 2, 2, 1, False) == 199680
    assert G.smem_bytes(64, 128, 3, 3, 1, False) == 150528
    assert G.smem_bytes(256, 80, 2, 2, 1, True) == 231424
    assert G.smem_bytes(192, 112, 2, 2, 1, True) == 223232
    # d = 192 and 256 fit only with O staged in Q
    assert G.smem_bytes(256, 80, 2, 2, 1, False) > G.SMEM_CAPACITY
    assert G.smem_bytes(192, 112, 2, 2, 1, False) > G.SMEM_CAPACITY
    with pytest.raises(ValueError, match="d=12"):
        G.geometry(12)


def test_tiles_resolves_each_auto_to_what_fits():
    """geometry.tiles (plain Python): the variants' autos for d = 96, where the 192 x 144 tile
    needs P in shared memory, O staged in Q and one Q buffer, and falls back to 128's shape
    whenever one of those is taken away; an explicit choice that cannot be built is refused."""
    t = G.tiles
    assert t(96) == G.Geometry(96, 144, 2, 3, True, True)
    assert t(96, paged=True) == G.Geometry(96, 128, 2, 3, False, True)
    two_wgs = G.Geometry(96, 128, 3, 2, False, False)
    for kw in ({"causal": True}, {"schedule": "serial"}, {"p_operand": "regs"}, {"q_buffers": 2}, {"consumers": 2},
               {"o_staging": "own"}):
        assert t(96, **kw) == two_wgs, kw
    assert t(96, kv_tile=176) == G.Geometry(96, 176, 2, 2, False, False)  # no room beside P's tiles
    assert t(192, dv=128) == G.Geometry(192, 128, 2, 2, True, False)
    assert t(64) == G.Geometry(64, 128, 3, 3, False, False) and t(128, p_operand="smem").p_smem
    for kw, words in [({"consumers": 3, "p_operand": "regs"}, "consumers=3"), ({"p_operand": "smem", "schedule": "serial"}, "serial"),
                      ({"kv_tile": 88}, "multiple of 16"), ({"consumers": 3, "o_staging": "own", "kv_tile": 144}, "shared memory")]:
        with pytest.raises(ValueError, match=words):
            t(96, **kw)


def test_kernel_yaml_d_choices():
    """Stage D offers every head dim of the geometry; stages A-C keep d in (64, 128)."""
    from workbench.kernels.registry import load_kernel

    spec = load_kernel(ROOT / "stages" / "fmha" / "kernel.yaml")
    assert tuple(spec.stage("d").params["d"].choices) == G.HEAD_DIMS
    for letter in "abc":
        assert tuple(spec.stage(letter).params["d"].choices) == (64, 128)


def _kernel(d, causal=False, **variants):
    from stages.fmha.stage_d_fmha import StageD

    p = Params(dict(m=100, n=100, d=d, dtype="bf16", batch=1, heads=2, kv_heads=1, causal=causal))
    return StageD().make_kernel(p, variants)


def test_kernel_takes_the_geometry_and_refuses_what_cannot_fit():
    from workbench.errors import UserError

    for d in G.HEAD_DIMS:
        for causal in (False, True):
            k, g = _kernel(d, causal), G.geometry(d, causal)
            assert (k.tile_n, k.kv_stages, k.num_consumer_wg, k.o_in_q) == (g.tile_n, g.kv_stages, g.consumers, g.o_in_q)
            # causal: more than one visited KV tile may need the mask whenever tile_m != tile_n
            assert k.two_masked == (causal and k.tile_m != k.tile_n)
    assert _kernel(96, True, q_buffers="2").q_stages == 4  # fits (219 KiB)
    assert _kernel(96, q_buffers="2").q_stages == 4  # non-causal too, with 2 WGs (below)
    # the tuning variant's width; kv_stages=auto takes the deepest ring that fits beside it
    assert (_kernel(96, True, kv_tile="176").tile_n, _kernel(96, True, kv_tile="176").kv_stages) == (176, 2)
    assert _kernel(96, True, kv_tile="144").kv_stages == 3
    # consumers=auto: where d = 96's 192-row tiles with P's tiles do not fit, 2 WGs with P in registers
    wide = _kernel(96, kv_tile="176")
    assert (wide.num_consumer_wg, wide.p_smem, wide.kv_stages) == (2, False, 2)
    assert _kernel(96, q_buffers="2").num_consumer_wg == 2
    # O staged in Q (o_staging=q) makes room for d = 96's 192 x 144 tile with P in shared memory
    assert _kernel(96, kv_tile="144", o_staging="q").kv_stages == 2
    with pytest.raises(UserError, match="kv_tile"):
        _kernel(96, kv_tile="88")  # not a choice of kernel.yaml
    for d, variants, words in [
        (256, {"q_buffers": "2"}, "shared memory"),
        (192, {"kv_stages": "3"}, "shared memory"),
        (96, {"kv_stages": "4"}, "shared memory"),
        (192, {"consumers": "3"}, "shared memory"),
        (96, {"consumers": "3", "p_operand": "regs"}, "consumers=3"),
        (96, {"kv_tile": "192", "kv_stages": "3"}, "shared memory"),
        (96, {"kv_tile": "144", "consumers": "3", "o_staging": "own"}, "shared memory"),  # 192 x 144, O apart: 237 KiB
    ]:
        with pytest.raises(UserError, match=words):
            _kernel(d, **variants)



def test_p_sync_auto_is_the_warp_only_in_d96_non_causal_tile():
    """auto resolves per kernel: the warp's own sync in d = 96 non-causal's 192-row tile (P through
    shared memory) on every launch (plain, varlen, paged, windowed: each swept and timed with warp),
    the WG's barrier in causal d = 96's and wherever P stays in registers; an explicit choice is kept."""
    assert (_kernel(96).p_smem, _kernel(96).p_sync) == (True, "warp")
    causal_long = _kernel(96, True, consumers="3", kv_tile="144", o_staging="q")  # the causal 192 x 144 kernel
    assert (causal_long.p_smem, causal_long.p_sync) == (True, "wg")
    assert _kernel(96, True).p_sync == "wg" and _kernel(128).p_sync == "wg" and _kernel(64).p_sync == "wg"
    assert _kernel(96, p_sync="wg").p_sync == "wg" and _kernel(128, p_sync="warp").p_sync == "warp"
    import cutlass

    from stages.fmha.fmha_forward import FmhaForward

    plain = dict(d=96, heads=2, kv_heads=1)
    for extra in ({"varlen": True}, {"page_size": 16}, {"window_left": 300}, {"window_right": 100}):
        kernel = FmhaForward(cutlass.BFloat16, **plain, **extra)
        assert (kernel.p_smem, kernel.p_sync) == (True, "warp"), extra
        causal_extra = {k: v for k, v in extra.items() if k != "window_right"}  # causal is its own right edge
        assert FmhaForward(cutlass.BFloat16, **plain, **causal_extra, causal=True).p_sync == "wg", extra


def test_kv_heads_that_do_not_divide_heads_are_refused_in_words():
    """A sweep's -p kv_heads=3 beside the default 4 heads was a bare `(4, 3)` assertion."""
    from stages.fmha.stage_d_fmha import StageD
    from workbench.errors import UserError

    p = Params(dict(m=100, n=100, d=96, dtype="bf16", batch=1, heads=4, kv_heads=3, causal=True))
    with pytest.raises(UserError, match=r"kv_heads=3 must divide heads=4"):
        StageD().make_kernel(p, {})
    assert StageD().make_kernel(p.replace(kv_heads=2), {}).qhead_per_kvhead == 2

# --------------------------------------------------------------------------------------
# fixtures and the reference at every d
# --------------------------------------------------------------------------------------
D_FIXTURES = ["random", "identity-softmax", "ones-v", "single", "onehot-p", "iota"]


def _specs(b, m, n, h, hk, d):
    ins = {
        "q": TensorSpec((b, m, h, d), "bf16"),
        "k": TensorSpec((b, n, hk, d), "bf16"),
        "v": TensorSpec((b, n, hk, d), "bf16"),
    }
    params = Params(dict(m=m, n=n, d=d, dtype="bf16", batch=b, heads=h, kv_heads=hk))
    return ins, params


@pytest.mark.parametrize("d", G.HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_fixtures_and_reference_work_for_every_d(d, causal):
    """Every stage D fixture (kernel.yaml's list) makes inputs for this d, and stage D's
    reference (fp32 and bf16) on them agrees with a dense softmax(QKᵀ/sqrt(d))V (GQA,
    top-left causal); ones-v gives O = 1."""
    from stages.fmha.stage_d_fmha import StageD
    from workbench.kernels.fixtures import get_fixture

    fixtures, _ = A.load()
    b, m, n, h, hk = 1, 90, 170, 2, 1
    ins, params = _specs(b, m, n, h, hk, d)
    params = params.replace(causal=causal)
    stage = StageD()
    for name in D_FIXTURES:
        fx = get_fixture(fixtures, name, ins)
        variants = dict(fx.variants)
        x = fx.make(ins, params, 0, "cpu")
        assert x["q"].shape == (b, m, h, d) and x["v"].shape == (b, n, hk, d)
        ref = stage.reference(x, params, variants, torch.float32)
        low = stage.reference(x, params, variants, torch.bfloat16)
        assert ref["o"].shape == (b, m, h, d) and ref["lse"].shape == (b, h, m)
        assert torch.isfinite(ref["o"]).all() and torch.isfinite(low["o"].float()).all()
        q = x["q"].float().permute(0, 2, 1, 3)
        k = x["k"].float().permute(0, 2, 1, 3).repeat_interleave(h // hk, 1)
        v = x["v"].float().permute(0, 2, 1, 3).repeat_interleave(h // hk, 1)
        s = q @ k.transpose(-1, -2) / math.sqrt(d)
        mask = torch.ones(m, n, dtype=torch.bool).tril() if causal else torch.ones(m, n, dtype=torch.bool)
        if variants.get("softmax") == "identity":
            o = s.masked_fill(~mask, 0.0) @ v
        else:
            o = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v
        torch.testing.assert_close(ref["o"].permute(0, 2, 1, 3), o, atol=2e-4, rtol=2e-4)
        if name == "ones-v":
            torch.testing.assert_close(ref["o"], torch.ones_like(ref["o"]))


@pytest.mark.parametrize("d", G.HEAD_DIMS)
def test_per_tile_fixtures_use_the_kernels_kv_tile(d):
    """single puts its one V element at row 9 of the LAST KV tile of the kernel's width for
    that d; onehot-p's query i reads row (37i + 19(i//128) + 11h + 5b) mod tile_n of its tile.
    With 128-key tiles for d = 256 both would land in the wrong tile (n = 250: tiles of 80)."""
    fixtures, _ = A.load()
    from workbench.kernels.fixtures import get_fixture

    tn = G.kv_tile(d)
    n, m, h = 250, 200, 2
    ins, params = _specs(1, m, n, h, 1, d)
    v = get_fixture(fixtures, "single", ins).make(ins, params, 0, "cpu")["v"]
    (rows,) = torch.nonzero(v[0, :, 0, 1], as_tuple=True)
    assert rows.tolist() == [((n - 1) // tn) * tn + 9]
    x = get_fixture(fixtures, "onehot-p", ins).make(ins, params, 0, "cpu")
    s = torch.einsum("bmhd,bnd->bhmn", x["q"].float(), x["k"].float()[:, :, 0])
    keys = s.argmax(-1)[0]  # (h, m)
    i = torch.arange(m).view(1, m)
    hh = torch.arange(h).view(h, 1)
    unclamped = keys < n - 1  # a pick past the last key is clamped onto it
    assert unclamped.float().mean() > 0.6
    assert (keys % tn == (37 * i + 19 * (i // 128) + 11 * hh) % tn)[unclamped].all()
    tiles = keys // tn
    assert (tiles[:, 1:] != tiles[:, :-1]).float().mean() > 0.5  # consecutive queries change tile


# --------------------------------------------------------------------------------------
# mutants
# --------------------------------------------------------------------------------------
def test_mutants_simulate_the_kernels_kv_tile():
    """The tile-by-tile mutants use 80-key tiles at d = 256: kv-tile0 reads keys 0..79 for
    every tile (its prediction equals attention over K/V with every 80-key tile replaced by
    tile 0), and kv-tail-unmasked applies at n = 250 (a 10-key tail) but not at n = 240."""
    from workbench.diagnose import NotApplicable

    preds, cx = A.predictions("d-256", "random")
    from stages.fmha.mutants import problem

    P = problem(cx)
    assert (P.kv_tile, P.T) == (80, 4)
    assert "kv-tail-unmasked" in preds and "kv-stall-3" in preds and "kv-stall-4" not in preds
    # kv-tile0 by hand: K and V tiles all equal to tile 0 (the tail tile's keys past n masked)
    o_pred = preds["kv-tile0"]["o"].float()
    q = P.qg()
    k, v = P.kvg(P.k), P.kvg(P.v)
    idx = torch.arange(P.N) % 80
    s = q @ k[:, idx].transpose(1, 2) * P.scale
    # (tests/attention_cases' reference aligns causal bottom-right: key j <= i + n - m)
    causal = torch.arange(P.N).view(1, -1) <= torch.arange(P.M).view(-1, 1) + (P.N - P.M)
    o = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v[:, idx]
    torch.testing.assert_close(P.o_back(o), o_pred, atol=1e-4, rtol=1e-4)
    # n a multiple of the tile: no tail to leave unmasked
    cfg = dict(A.CONFIGS["d-256"], n=240)
    A.CONFIGS["d-256-n240"] = cfg
    try:
        preds240, _ = A.predictions("d-256-n240", "random")
    finally:
        del A.CONFIGS["d-256-n240"]
    assert "kv-tail-unmasked" not in preds240
    assert NotApplicable  # (imported: the mutant raises it when it does not apply)


@pytest.mark.parametrize("cfg_name,mutant", [("d-192", "qk-d-first-128"), ("d-192", "o-d-first-128"),
                                             ("d-256", "o-d-first-128"), ("d-256", "qk-d-first-half")])
def test_bugs_of_code_that_assumes_d_up_to_128_are_named(cfg_name, mutant):
    """A kernel that still computes QKᵀ (or O) over the first 128 columns of d only is named
    by its mutant on the random fixture (its output plus bf16-like noise)."""
    d = A.diagnose_mutant(cfg_name, "random", mutant)
    assert d.status == "explained" and (d.best.name == mutant or mutant in d.best.same_as), d.headline


@pytest.mark.parametrize("cfg_name", ["d-192", "d-256"])
def test_correct_outputs_at_large_d_get_no_explanation(cfg_name):
    """No false alarm at d = 192 / 256: a correct kernel's outputs (bf16 P before P·V, fp32
    accumulation, one-ulp noise) are 'ok' for every stage D fixture."""
    A.assert_no_false_alarm(cfg_name, D_FIXTURES)


# --------------------------------------------------------------------------------------
# two sm_90a compiles (no GPU needed)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("d,causal,tsrs,torp", [
    (256, True, "((2,2,10),1,1):((1,2,4),0,0)", "((2,2,2),1,5):((1,2,4),0,8)"),
    # d = 96 non-causal: 192 x 144 tiles, P through shared memory: S is 64 x 144 a WG, tOrP
    # the A descriptors of the 3 WGs' P tiles (MMA, 1, 144 keys / 16, 3)
    (96, False, "((2,2,18),1,1):((1,2,4),0,0)", "(1,1,9,(1,3)):(0,0,128,(0,1152))"),
    (96, True, "((2,2,16),1,1):((1,2,4),0,0)", "((2,2,2),1,8):((1,2,4),0,8)"),
])
def test_new_head_dims_compile(d, causal, tsrs, torp):
    """d = 256 causal (80-key tiles, up to three masked visits, O staged in Q, dynamic
    persistent) and d = 96 (64-byte swizzled Q/K/V/O) trace and compile for sm_90a with the
    P hand-over proven; the accumulator fragments have the tile's width."""
    from stages.fmha.stage_d_fmha import StageD
    from workbench.compile.probe import capture

    p = Params(dict(m=1000, n=17, d=d, dtype="bf16", batch=2, heads=4, kv_heads=2, causal=causal))
    with capture() as records:
        compiled = StageD().compile(p, {}, "sm_90a")
    probes = {r["name"]: r["layout"] for r in records}
    assert compiled.fn is not None and "verified" in compiled.p_check
    assert probes["tSrS"] == tsrs and probes["tOrP"] == torp
    assert probes["tOrO_acc"].startswith(f"((2,2,{d // 8}),1,1)")
